using Distributed.Kernels.Reference;

namespace Distributed.Kernels.Tests.Cpu;

[Trait("Category", "Unit")]
public sealed class CpuAttentionTests
{
    public static TheoryData<string> Backends => TestBackends.Names;

    private static void AssertMatchesReference(IKernelBackend b, int rows, int[] positions, int keys, int keyStart,
        AttentionParams p, int seed, string what)
    {
        var q = TestData.Floats(rows * p.Heads * p.HeadDim, seed);
        var k = TestData.Floats(keys * p.KvHeads * p.HeadDim, seed + 1);
        var v = TestData.Floats(keys * p.KvHeads * p.HeadDim, seed + 2);
        var expected = new float[q.Length];
        ReferenceKernels.Attention(q, rows, positions, k, v, keys, keyStart, p, expected);
        var actual = new float[q.Length];
        b.Attention(q, rows, positions, k, v, keys, keyStart, p, actual);
        TestData.AssertClose(expected, actual, _ => 2e-5, what);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Attention_CausalAndChunkedPrefill_MatchesReference(string backend)
    {
        var b = TestBackends.Get(backend);
        int seed = 1;
        foreach (int headDim in new[] { 16, 24, 64, 7, 128, 136 })
        {
            foreach (int chunk in new[] { 0, 5, 16 })
            {
                var p = new AttentionParams(4, 2, headDim, 1f / MathF.Sqrt(headDim), chunk);
                int rows = 37;
                var positions = Enumerable.Range(0, rows).ToArray();
                AssertMatchesReference(b, rows, positions, rows, 0, p, seed += 3, $"{backend} D={headDim} chunk={chunk}");
            }
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Attention_DecodeWithKeyOffsetAndGqa_MatchesReference(string backend)
    {
        var b = TestBackends.Get(backend);
        // Keys start at position 100 (an older part of the cache was dropped); chunk 64 puts 128 on a boundary.
        var p = new AttentionParams(8, 2, 32, 0.2f, 64);
        int[] positions = [100, 120, 127, 128, 130, 163];
        AssertMatchesReference(b, positions.Length, positions, 64, 100, p, 11, $"{backend} offset decode");
        var mqa = new AttentionParams(6, 1, 16, 0.25f, 0);
        AssertMatchesReference(b, 3, [5, 9, 40], 41, 0, mqa, 12, $"{backend} MQA");
    }

    [Fact]
    public void Attention_ChunkedMask_IsFixedBlocksNotSlidingWindow()
    {
        // V = one-hot of the key position: the output is the attention distribution itself.
        var b = TestBackends.Default;
        const int Keys = 12, Chunk = 4;
        var p = new AttentionParams(1, 1, Keys, 1f, Chunk);
        var k = new float[Keys * Keys]; // all-zero keys: uniform weights over the visible set
        var v = new float[Keys * Keys];
        for (int j = 0; j < Keys; j++)
        {
            v[(j * Keys) + j] = 1f;
        }
        var q = TestData.Floats(Keys, 1);
        foreach (int pos in new[] { 0, 3, 4, 5, 7, 8, 11 })
        {
            var o = new float[Keys];
            b.Attention(q, 1, [pos], k, v, Keys, 0, p, o);
            int chunkStart = pos / Chunk * Chunk;
            for (int j = 0; j < Keys; j++)
            {
                float expected = j >= chunkStart && j <= pos ? 1f / (pos - chunkStart + 1) : 0f;
                Assert.True(Math.Abs(o[j] - expected) < 1e-6, $"pos {pos} key {j}: {o[j]} vs {expected}");
            }
        }
    }

    [Fact]
    public void Attention_GqaMapping_QueryHeadReadsKvHeadHDividedByGroup()
    {
        // 4 query heads, 2 kv heads: heads 0,1 read kv head 0 and heads 2,3 read kv head 1 (h / 2, not h % 2).
        var b = TestBackends.Default;
        var p = new AttentionParams(4, 2, 2, 1f, 0);
        float[] k = [0, 0, 0, 0];
        float[] v = [1, 1, 2, 2]; // kv head 0 value = (1, 1), kv head 1 value = (2, 2)
        var o = new float[8];
        b.Attention(TestData.Floats(8, 3), 1, [0], k, v, 1, 0, p, o);
        Assert.Equal([1f, 1f, 1f, 1f, 2f, 2f, 2f, 2f], o);
    }

    [Fact]
    public void Attention_NoVisibleKey_YieldsZeros()
    {
        var b = TestBackends.Default;
        var p = new AttentionParams(2, 1, 4, 0.5f, 8);
        var o = Enumerable.Repeat(7f, 16).ToArray();
        // Query at 3 with keys starting at position 10: nothing visible. Query at 20: chunk [16, 24) holds no key (10..13).
        b.Attention(TestData.Floats(16, 1), 2, [3, 20], TestData.Floats(16, 2), TestData.Floats(16, 3), 4, 10, p, o);
        Assert.All(o, v => Assert.Equal(0f, v));
    }

    [Fact]
    public void Attention_LargeLogits_StayFinite()
    {
        var b = TestBackends.Default;
        var p = new AttentionParams(1, 1, 16, 1f, 0);
        var q = Enumerable.Repeat(30f, 16).ToArray();
        var k = TestData.Floats(5 * 16, 4, 3f); // scores up to ±1440
        var v = TestData.Floats(5 * 16, 5);
        var o = new float[16];
        b.Attention(q, 1, [4], k, v, 5, 0, p, o);
        Assert.All(o, x => Assert.True(float.IsFinite(x)));
        var expected = new float[16];
        ReferenceKernels.Attention(q, 1, [4], k, v, 5, 0, p, expected);
        TestData.AssertClose(expected, o, _ => 1e-5, "large logits");
    }

    [Fact]
    public void Attention_LongContext16500Chunk8192_MatchesReferenceAroundChunkBoundaries()
    {
        var b = TestBackends.Default;
        const int Keys = 16_500;
        var p = new AttentionParams(4, 2, 16, 0.25f, 8192);
        int[] positions = [0, 8190, 8191, 8192, 8193, 16383, 16384, 16499];
        AssertMatchesReference(b, positions.Length, positions, Keys, 0, p, 21, "16.5k context");
    }
}
