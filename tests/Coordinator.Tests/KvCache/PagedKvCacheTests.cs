using Distributed.Checkpoint;
using Distributed.Coordinator.KvCache;
using Distributed.Kernels;
using Distributed.Kernels.Cpu;

namespace Distributed.Coordinator.Tests.KvCache;

/// <summary>Block bookkeeping of the paged cache: chunked-layer release, copy-on-write, prefix keys, LRU eviction.</summary>
[Trait("Category", "Unit")]
public sealed class PagedKvCacheTests : IDisposable
{
    private readonly CpuKernelBackend _backend = new(1);

    public void Dispose() => _backend.Dispose();

    // tiny-maverick: 6 layers, layer 3 NoPE (keeps everything), the others chunked by 16; 2 kv heads × 16.
    private static Llama4TextConfig Config() => Llama4ConfigParser.Parse(File.ReadAllText(Path.Combine(TestPaths.Fixture("tiny-maverick"), "config.json")), "config.json");

    private KvBlockPool Pool(int blocks, int blockSize = 4, bool prefixCaching = true)
    {
        var c = Config();
        return new KvBlockPool(c, blockSize, blocks * KvBlockPool.BytesPerBlock(c, blockSize), _backend, prefixCaching: prefixCaching);
    }

    /// <summary>Appends <paramref name="tokens"/> on every layer with rows whose values encode (position, layer).</summary>
    private static void Feed(PagedKvCache cache, KvBlockPool pool, params int[] tokens)
    {
        Assert.True(cache.TryPrepare(tokens.Length));
        for (int il = 0; il < pool.Config.NumLayers; il++)
        {
            var k = new float[tokens.Length * pool.RowWidth];
            for (int r = 0; r < tokens.Length; r++)
            {
                k.AsSpan(r * pool.RowWidth, pool.RowWidth).Fill(1000 * il + cache.NextPosition + r);
            }
            cache.Append(il, k, k, tokens.Length);
        }
        cache.Advance(tokens);
    }

    /// <summary>The K value stored for position <paramref name="position"/> of <paramref name="layer"/> (read through attention with one key).</summary>
    private static float Read(PagedKvCache cache, KvBlockPool pool, int layer, int position)
    {
        var (blocks, first) = cache.TableSnapshot(layer);
        int slot = position - first * pool.BlockSize;
        var q = new float[4 * 16];
        var output = new float[4 * 16];
        pool.Store.Attention(q, 1, [position], blocks, slot, 1, position, new AttentionParams(4, 2, 16, 0.25f, 0), output);
        return output[0]; // one key: the output is its value row
    }

    [Fact]
    public void ChunkedLayers_ReleaseBlocksBeforeTheChunk_NoPeLayerKeepsEverything()
    {
        using var pool = Pool(64);
        using var cache = new PagedKvCache(pool);
        Feed(cache, pool, [.. Enumerable.Range(1, 18)]);
        Feed(cache, pool, 19);
        // Next query at 19 is in chunk [16, 32): chunked layers hold blocks from 16 / 4 = 4 on; the NoPE layer all 5.
        Assert.Equal(4, cache.TableSnapshot(0).FirstBlock);
        Feed(cache, pool, 20);
        Assert.Equal((4, 1), (cache.TableSnapshot(0).FirstBlock, cache.TableSnapshot(0).Blocks.Length));
        Assert.Equal((0, 5), (cache.TableSnapshot(3).FirstBlock, cache.TableSnapshot(3).Blocks.Length));
        Assert.Equal(17f, Read(cache, pool, 0, 17));
        Assert.Equal(3002f, Read(cache, pool, 3, 2));
    }

    [Fact]
    public void Fork_SharesBlocks_CopiesThePartialBlockOnWrite_AndKeepsBothContents()
    {
        using var pool = Pool(64);
        using var parent = new PagedKvCache(pool);
        Feed(parent, pool, 1, 2, 3, 4, 5, 6);
        int used = pool.UsedBlocks;
        using var child = parent.Fork();
        Assert.Equal(used, pool.UsedBlocks);
        var (shared, _) = parent.TableSnapshot(3);
        Assert.All(shared, id => Assert.Equal(2, pool.RefCount(id)));
        Feed(child, pool, 7);
        var (childTable, _) = child.TableSnapshot(3);
        Assert.Equal(shared[0], childTable[0]);   // full block: still shared
        Assert.NotEqual(shared[1], childTable[1]); // partial block: copied before the write
        Assert.Equal(1, pool.RefCount(shared[1]));
        Feed(parent, pool, 70);
        Assert.Equal(3006f, Read(child, pool, 3, 6));
        Assert.Equal(3006f, Read(parent, pool, 3, 6));
        Assert.Equal(3005f, Read(child, pool, 3, 5));
    }

    [Fact]
    public void FullBlocks_AreKeptAfterRelease_FoundByTheSamePrefixOnly_AndEvictedLeastRecentlyUsedFirst()
    {
        using var pool = Pool(24);
        int[] a = [.. Enumerable.Range(1, 9)], b = [.. Enumerable.Range(100, 9)];
        using (var cache = new PagedKvCache(pool))
        {
            Feed(cache, pool, a);
        }
        Assert.Equal(0, pool.UsedBlocks);
        int cachedA = pool.CachedBlocks;
        Assert.True(cachedA > 0);
        using (var other = new PagedKvCache(pool))
        {
            Assert.Equal(0, other.AttachPrefix(b, 8)); // different tokens: nothing
        }
        using (var hit = new PagedKvCache(pool))
        {
            // 9 tokens, at most 8 reused: 2 full blocks of 4. Chunked layers need only the chunk [0, 16) up to 8.
            Assert.Equal(8, hit.AttachPrefix(a, 8));
            Assert.Equal(8, hit.NextPosition);
            Assert.Equal(1007f, Read(hit, pool, 1, 7));
            Feed(hit, pool, 9);
        }
        using (var changed = new PagedKvCache(pool))
        {
            int[] c = [.. a];
            c[5] = 77; // second block differs: only the first is shared
            Assert.Equal(4, changed.AttachPrefix(c, 8));
        }
        // Fill the pool with another sequence: the kept blocks are evicted, oldest first, and a then misses.
        using (var big = new PagedKvCache(pool))
        {
            Feed(big, pool, [.. Enumerable.Range(200, 16)]);
            Assert.True(pool.Evictions > 0);
        }
        using var again = new PagedKvCache(pool);
        Assert.True(again.AttachPrefix(a, 8) < 8);
    }

    [Fact]
    public void PrefixCachingOff_KeepsNothing()
    {
        using var pool = Pool(24, prefixCaching: false);
        using (var cache = new PagedKvCache(pool))
        {
            Feed(cache, pool, 1, 2, 3, 4, 5, 6, 7, 8, 9);
        }
        Assert.Equal(0, pool.CachedBlocks);
        using var again = new PagedKvCache(pool);
        Assert.Equal(0, again.AttachPrefix([1, 2, 3, 4, 5, 6, 7, 8, 9], 8));
    }

    [Fact]
    public void TryPrepare_IsAllOrNothing_WhenThePoolIsShort()
    {
        using var pool = Pool(8);
        using var cache = new PagedKvCache(pool);
        Assert.False(cache.TryPrepare(8)); // 6 layers × 2 blocks > 8
        Assert.Equal(0, pool.UsedBlocks);
        Assert.True(cache.TryPrepare(4));
        Assert.Equal(6, pool.UsedBlocks);
        Assert.Throws<KvCacheExhaustedException>(() => cache.Append(0, new float[8 * pool.RowWidth], new float[8 * pool.RowWidth], 8));
    }

    [Fact]
    public void ContentSpans_ChangeTheKeysOfTheBlocksTheyOverlap()
    {
        var image1 = new KvContentSpan(5, 3, new byte[] { 1, 2, 3 });
        var image2 = new KvContentSpan(5, 3, new byte[] { 9, 9, 9 });
        int[] tokens = [1, 2, 3, 4, 5, 6, 7, 8];
        var h0 = KvPrefixHash.Next(KvPrefixHash.Empty, 0, tokens.AsSpan(0, 4), [image1]);
        Assert.Equal(KvPrefixHash.Next(KvPrefixHash.Empty, 0, tokens.AsSpan(0, 4)), h0); // the span starts after block 0
        Assert.NotEqual(KvPrefixHash.Next(h0, 4, tokens.AsSpan(4, 4), [image1]), KvPrefixHash.Next(h0, 4, tokens.AsSpan(4, 4), [image2]));
        Assert.NotEqual(KvPrefixHash.Next(h0, 4, tokens.AsSpan(4, 4), [image1]), KvPrefixHash.Next(h0, 4, tokens.AsSpan(4, 4)));
    }

    /// <summary>Reserve (the device path's write-it-yourself Append) gives the slots Append writes and the same view.</summary>
    [Fact]
    public void Reserve_GivesTheSlotsAppendWrites_AndTheSameView()
    {
        using var pool = Pool(64);
        using var appended = new PagedKvCache(pool);
        using var reserved = new PagedKvCache(pool);
        Feed(appended, pool, [.. Enumerable.Range(1, 18)]);
        Feed(reserved, pool, [.. Enumerable.Range(1, 18)]);
        Assert.Same(pool.Store, reserved.Store);
        var slots = new int[3];
        Assert.Throws<ArgumentException>(() => reserved.Reserve(0, 2, slots));
        var k = new float[3 * pool.RowWidth];
        for (int il = 0; il < pool.Config.NumLayers; il++)
        {
            var view = reserved.Reserve(il, 3, slots);
            var expected = appended.Append(il, k, k, 3);
            Assert.Equal(expected.FirstSlot, view.FirstSlot);
            Assert.Equal(expected.Keys, view.Keys);
            Assert.Equal(expected.KeyPositionStart, view.KeyPositionStart);
            var (blocks, first) = reserved.TableSnapshot(il);
            Assert.Equal(blocks, view.BlockTable.ToArray());
            for (int r = 0; r < 3; r++)
            {
                int slot = 18 + r - first * pool.BlockSize;
                Assert.Equal(blocks[slot / pool.BlockSize] * pool.BlockSize + slot % pool.BlockSize, slots[r]);
            }
        }
    }
}
