namespace Distributed.Kernels.Tests;

/// <summary>What a store of each <see cref="KvCacheDType"/> does to a row when it writes it (the reference the stores must match).</summary>
public static class KvRounding
{
    /// <summary>K or V rows (<c>[rows, width]</c>) as a store of <paramref name="dtype"/> keeps them, decoded to floats.</summary>
    public static float[] Apply(KvCacheDType dtype, float[] rows, int width)
    {
        var r = (float[])rows.Clone();
        switch (dtype)
        {
            case KvCacheDType.Bf16:
                for (int i = 0; i < r.Length; i++)
                {
                    r[i] = DTypeInfo.Bf16ToFloat(DTypeInfo.FloatToBf16(r[i]));
                }
                break;
            case KvCacheDType.Fp8E4M3:
                var codes = new byte[width];
                for (int row = 0; row < r.Length / width; row++)
                {
                    var span = r.AsSpan(row * width, width);
                    float s = Fp8E4M3.QuantizeRow(span, codes);
                    for (int i = 0; i < width; i++)
                    {
                        span[i] = Fp8E4M3.ToFloat(codes[i]) * s;
                    }
                }
                break;
        }
        return r;
    }
}

/// <summary>
/// A paged KV scenario any <see cref="IKvBlockStore"/> must pass: rows written to scattered slots of shuffled blocks,
/// attention through a block table that starts mid-block, compared with the backend's contiguous attention on the same
/// keys. Also used by the CUDA tests against the device store.
/// </summary>
public static class KvBlockStoreScenario
{
    /// <summary>
    /// Writes <paramref name="keys"/> rows (after <paramref name="firstSlot"/> unused slots) through a shuffled block
    /// table and returns (paged output, contiguous output on <paramref name="contiguous"/>).
    /// </summary>
    public static (float[] Paged, float[] Contiguous) Run(IKvBlockStore store, IKernelBackend contiguous, int rows, int keys, int firstSlot,
        AttentionParams p, int seed)
    {
        int w = store.RowWidth, b = store.BlockSize;
        int blocksNeeded = (firstSlot + keys + b - 1) / b;
        var rng = new Random(seed);
        // A table of distinct blocks in shuffled order: neighbours in position are not neighbours in the store.
        var table = Enumerable.Range(0, store.Blocks).OrderBy(_ => rng.Next()).Take(blocksNeeded).ToArray();
        var k = TestData.Floats(keys * w, seed + 1);
        var v = TestData.Floats(keys * w, seed + 2);
        // Written in two calls, the second one out of order, as a cache appending a prompt then a step would.
        var slots = Enumerable.Range(0, keys).Select(j => table[(firstSlot + j) / b] * b + (firstSlot + j) % b).ToArray();
        int split = keys / 2;
        store.Write(slots.AsSpan(0, split), k.AsSpan(0, split * w), v.AsSpan(0, split * w));
        var rest = Enumerable.Range(split, keys - split).Reverse().ToArray();
        store.Write(rest.Select(j => slots[j]).ToArray(), rest.SelectMany(j => k.AsSpan(j * w, w).ToArray()).ToArray(),
            rest.SelectMany(j => v.AsSpan(j * w, w).ToArray()).ToArray());

        int keyStart = 100;
        // Queries at the last positions (a prefill chunk ending at the newest key), plus one that sees nothing.
        var positions = Enumerable.Range(0, rows).Select(r => r == 0 ? keyStart - 1 : keyStart + keys - rows + r).ToArray();
        var q = TestData.Floats(rows * p.Heads * p.HeadDim, seed + 3);
        var paged = new float[q.Length];
        store.Attention(q, rows, positions, table, firstSlot, keys, keyStart, p, paged);
        var expected = new float[q.Length];
        contiguous.Attention(q, rows, positions, KvRounding.Apply(store.DType, k, w), KvRounding.Apply(store.DType, v, w), keys, keyStart, p, expected);
        return (paged, expected);
    }
}

/// <summary>Several sequences in one <see cref="IKvBlockStore.AttentionBatch"/> call against each one's contiguous attention.</summary>
public static class KvBlockStoreBatchScenario
{
    /// <summary>Three sequences (a decode over many keys, a chunked prefill, a short one) in one store; returns (batched, per sequence contiguous).</summary>
    public static (float[] Batched, float[] Contiguous) Run(IKvBlockStore store, IKernelBackend contiguous, AttentionParams p, int seed)
    {
        int w = store.RowWidth, b = store.BlockSize;
        var rng = new Random(seed);
        var free = new Queue<int>(Enumerable.Range(0, store.Blocks).OrderBy(_ => rng.Next()));
        var shapes = new[] { (Rows: 1, Keys: 300, FirstSlot: 3, KeyStart: 40), (Rows: 9, Keys: 9, FirstSlot: 0, KeyStart: 0), (Rows: 2, Keys: 20, FirstSlot: 7, KeyStart: 5) };
        var sequences = new List<KvSequenceView>();
        var q = new List<float>();
        var positions = new List<int>();
        var expected = new List<float>();
        foreach (var (rows, keys, firstSlot, keyStart) in shapes)
        {
            var table = Enumerable.Range(0, (firstSlot + keys + b - 1) / b).Select(_ => free.Dequeue()).ToArray();
            var k = TestData.Floats(keys * w, rng.Next());
            var v = TestData.Floats(keys * w, rng.Next());
            store.Write(Enumerable.Range(0, keys).Select(j => table[(firstSlot + j) / b] * b + (firstSlot + j) % b).ToArray(), k, v);
            var pos = Enumerable.Range(keyStart + keys - rows, rows).ToArray();
            var qs = TestData.Floats(rows * p.Heads * p.HeadDim, rng.Next());
            var e = new float[qs.Length];
            contiguous.Attention(qs, rows, pos, KvRounding.Apply(store.DType, k, w), KvRounding.Apply(store.DType, v, w), keys, keyStart, p, e);
            sequences.Add(new KvSequenceView(rows, table, firstSlot, keys, keyStart));
            q.AddRange(qs);
            positions.AddRange(pos);
            expected.AddRange(e);
        }
        var batched = new float[q.Count];
        store.AttentionBatch(q.ToArray(), positions.ToArray(), sequences.ToArray(), p, batched);
        return (batched, expected.ToArray());
    }
}

/// <summary>
/// Copy-on-write of one block: rows written to a block, the block copied, the copy written further; attention over the
/// original must still see the original rows, over the copy the copied rows then the new one. The expected results are
/// the contiguous attention on the rows as the store's element type keeps them (<see cref="KvRounding"/>), so a bf16 or
/// FP8 store must copy its codes and row scales exactly.
/// </summary>
public static class KvBlockStoreCopyScenario
{
    /// <summary>Returns (attention over the original, its contiguous result, attention over the copy, its contiguous result).</summary>
    public static (float[] Original, float[] OriginalExpected, float[] Copy, float[] CopyExpected) Run(IKvBlockStore store, IKernelBackend contiguous, AttentionParams p, int seed)
    {
        int w = store.RowWidth, b = store.BlockSize;
        int source = 1, destination = store.Blocks - 1, used = b - 1;
        var k = TestData.Floats(b * w, seed);
        var v = TestData.Floats(b * w, seed + 1);
        store.Write([.. Enumerable.Range(0, used).Select(r => source * b + r)], k.AsSpan(0, used * w), v.AsSpan(0, used * w));
        store.CopyBlock(source, destination);
        // The copy gets its last row; the original keeps an unrelated last row.
        var other = TestData.Floats(2 * w, seed + 2);
        store.Write([destination * b + used], k.AsSpan(used * w, w), v.AsSpan(used * w, w));
        store.Write([source * b + used], other.AsSpan(0, w), other.AsSpan(w, w));
        var q = TestData.Floats(p.Heads * p.HeadDim, seed + 3);
        var original = new float[q.Length];
        store.Attention(q, 1, [used - 1], [source], 0, used, 0, p, original);
        var kr = KvRounding.Apply(store.DType, k, w);
        var vr = KvRounding.Apply(store.DType, v, w);
        var originalExpected = new float[q.Length];
        contiguous.Attention(q, 1, [used - 1], kr.AsSpan(0, used * w), vr.AsSpan(0, used * w), used, 0, p, originalExpected);
        var copy = new float[q.Length];
        store.Attention(q, 1, [b - 1], [destination], 0, b, 0, p, copy);
        var copyExpected = new float[q.Length];
        contiguous.Attention(q, 1, [b - 1], kr, vr, b, 0, p, copyExpected);
        return (original, originalExpected, copy, copyExpected);
    }
}

[Trait("Category", "Unit")]
public sealed class KvBlockStoreTests
{
    [Fact]
    public void HostStore_CopyBlock_CopiesOnWrite_AndRefusesBadBlocks()
    {
        using var cpu = new Distributed.Kernels.Cpu.CpuKernelBackend(1);
        var p = new AttentionParams(4, 2, 8, 0.3f, 0);
        using var store = KvBlockStores.Create(cpu, 6, 4, p.KvHeads * p.HeadDim);
        var (original, originalExpected, copy, copyExpected) = KvBlockStoreCopyScenario.Run(store, cpu, p, seed: 3);
        Assert.Equal(originalExpected, original);
        Assert.Equal(copyExpected, copy);
        Assert.Throws<ArgumentException>(() => store.CopyBlock(1, 1));
        Assert.Throws<ArgumentException>(() => store.CopyBlock(0, 6));
        Assert.Throws<ArgumentException>(() => store.CopyBlock(-1, 2));
    }

    [Fact]
    public void HostStore_Batch_IsEachSequencesContiguousResult()
    {
        var backend = TestBackends.Default;
        var p = new AttentionParams(8, 2, 16, 0.25f, 8);
        using var store = KvBlockStores.Create(backend, 64, 16, p.KvHeads * p.HeadDim);
        var (batched, contiguous) = KvBlockStoreBatchScenario.Run(store, backend, p, seed: 5);
        TestData.AssertBitwiseEqual(contiguous, batched, "three sequences in one call");
        var bad = new KvSequenceView[] { new(2, new[] { 0 }, 0, 1, 0) };
        Assert.Contains("2 rows", Assert.Throws<ArgumentException>(() => store.AttentionBatch(new float[128], new int[1], bad, p, new float[128])).Message);
    }

    [Theory]
    [InlineData(16, 40, 5, 0)]
    [InlineData(16, 1, 0, 0)]
    [InlineData(4, 97, 3, 8)]
    [InlineData(1, 23, 0, 4)]
    public void HostStore_PagedAttention_IsTheContiguousResult(int blockSize, int keys, int firstSlot, int chunk)
    {
        var backend = TestBackends.Default;
        var p = new AttentionParams(8, 2, 16, 0.25f, chunk);
        using var store = KvBlockStores.Create(backend, 64, blockSize, p.KvHeads * p.HeadDim);
        Assert.IsType<HostKvBlockStore>(store);
        Assert.Equal("host", store.Location);
        var (paged, contiguous) = KvBlockStoreScenario.Run(store, backend, Math.Min(keys, 6), keys, firstSlot, p, seed: blockSize * 31 + keys);
        TestData.AssertBitwiseEqual(contiguous, paged, $"block {blockSize}, keys {keys}, first slot {firstSlot}, chunk {chunk}");
    }

    /// <summary>
    /// A bf16 or FP8 store rounds each row once when written (FP8: one scale per row) and its attention is exactly the
    /// contiguous attention on the rounded rows, alone and batched; rounding really happens (the result differs from
    /// fp32's), and the error stays at the element type's precision.
    /// </summary>
    [Theory]
    [InlineData(KvCacheDType.Bf16, 2e-2)]
    [InlineData(KvCacheDType.Fp8E4M3, 2e-1)]
    public void HostStore_Bf16AndFp8_AttentionIsTheContiguousResultOnTheRoundedRows(KvCacheDType dtype, double closeToFp32)
    {
        var backend = TestBackends.Default;
        var p = new AttentionParams(8, 2, 16, 0.25f, 8);
        foreach (var (blockSize, keys, firstSlot) in new[] { (16, 40, 5), (4, 97, 3), (1, 23, 0) })
        {
            using var store = KvBlockStores.Create(backend, 64, blockSize, p.KvHeads * p.HeadDim, dtype: dtype);
            using var exact = KvBlockStores.Create(backend, 64, blockSize, p.KvHeads * p.HeadDim);
            Assert.Equal(dtype, store.DType);
            var (paged, contiguous) = KvBlockStoreScenario.Run(store, backend, 6, keys, firstSlot, p, seed: keys);
            TestData.AssertBitwiseEqual(contiguous, paged, $"{dtype} block {blockSize}, keys {keys}");
            var (fp32, _) = KvBlockStoreScenario.Run(exact, backend, 6, keys, firstSlot, p, seed: keys);
            Assert.NotEqual(fp32, paged);
            TestData.AssertClose(fp32, paged, _ => closeToFp32, $"{dtype} against fp32 keys");
        }
        using var batchStore = KvBlockStores.Create(backend, 64, 16, 32, dtype: dtype);
        var (batched, expected) = KvBlockStoreBatchScenario.Run(batchStore, backend, p, seed: 9);
        TestData.AssertBitwiseEqual(expected, batched, $"{dtype}, three sequences in one call");
    }

    [Theory]
    [InlineData(KvCacheDType.Bf16)]
    [InlineData(KvCacheDType.Fp8E4M3)]
    public void HostStore_Bf16AndFp8_CopyBlock_CopiesCodesAndScales(KvCacheDType dtype)
    {
        var backend = TestBackends.Default;
        var p = new AttentionParams(4, 2, 8, 0.3f, 0);
        using var store = KvBlockStores.Create(backend, 6, 4, p.KvHeads * p.HeadDim, dtype: dtype);
        var (original, originalExpected, copy, copyExpected) = KvBlockStoreCopyScenario.Run(store, backend, p, seed: 5);
        TestData.AssertBitwiseEqual(originalExpected, original, $"{dtype}: the original of a copied block");
        TestData.AssertBitwiseEqual(copyExpected, copy, $"{dtype}: a copied block written further");
    }

    [Fact]
    public void KvDTypes_Sizes_Defaults_AndParsing()
    {
        Assert.Equal(4096, KvCacheDTypes.RowBytes(KvCacheDType.Fp32, 1024));
        Assert.Equal(2048, KvCacheDTypes.RowBytes(KvCacheDType.Bf16, 1024));
        Assert.Equal(1028, KvCacheDTypes.RowBytes(KvCacheDType.Fp8E4M3, 1024));
        Assert.Equal(KvCacheDType.Fp32, KvCacheDTypes.DefaultFor(TestBackends.Default));
        Assert.Equal(KvCacheDType.Bf16, KvCacheDTypes.Parse(" BF16 "));
        Assert.Equal(KvCacheDType.Fp8E4M3, KvCacheDTypes.Parse("fp8"));
        Assert.Throws<FormatException>(() => KvCacheDTypes.Parse("fp16"));
        Assert.Throws<ArgumentOutOfRangeException>(() => new HostKvBlockStore(TestBackends.Default, 2, 4, 4, (KvCacheDType)9));
    }

    [Fact]
    public void BadSlotsTablesAndShapes_AreArgumentErrors_NamingTheProblem()
    {
        var backend = TestBackends.Default;
        var p = new AttentionParams(2, 1, 4, 0.5f, 0);
        using var store = new HostKvBlockStore(backend, 2, 4, 4);
        var row = new float[4];
        Assert.Contains("outside the store", Assert.Throws<ArgumentException>(() => store.Write([8], row, row)).Message);
        Assert.Contains("outside the store", Assert.Throws<ArgumentException>(() => store.Write([-1], row, row)).Message);
        Assert.Contains("RowWidth", Assert.Throws<ArgumentException>(() => store.Write([0, 1], row, row)).Message);
        store.Write([0, 1, 2], new float[12], new float[12]);
        var q = new float[8];
        var o = new float[8];
        Assert.Contains("table entries", Assert.Throws<ArgumentException>(() => store.Attention(q, 1, [10], [0], 2, 3, 0, p, o)).Message);
        Assert.Contains("outside the store's 2 blocks", Assert.Throws<ArgumentException>(() => store.Attention(q, 1, [10], [5], 0, 3, 0, p, o)).Message);
        Assert.Contains("never written", Assert.Throws<ArgumentException>(() => store.Attention(q, 1, [10], [1], 0, 3, 0, p, o)).Message);
        Assert.Contains("RowWidth", Assert.Throws<ArgumentException>(() => store.Attention(q, 1, [10], [0], 0, 3, 0, new AttentionParams(2, 2, 4, 0.5f, 0), o)).Message);
        Assert.Contains("negative", Assert.Throws<ArgumentException>(() => store.Attention(q, 1, [-1], [0], 0, 3, 0, p, o)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => new HostKvBlockStore(backend, 0, 4, 4));
    }
}
