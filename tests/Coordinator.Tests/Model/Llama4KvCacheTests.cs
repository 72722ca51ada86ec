using Distributed.Coordinator.Model.Llama4;
using Distributed.Checkpoint;

namespace Distributed.Coordinator.Tests.Model;

[Trait("Category", "Unit")]
public sealed class Llama4KvCacheTests
{
    private static Llama4TextConfig Config(int chunk) => new()
    {
        HiddenSize = 8, NumLayers = 2, NumHeads = 2, NumKvHeads = 1, HeadDim = 4, IntermediateSize = 8, IntermediateSizeMlp = 8,
        NumExperts = 2, TopK = 1, MoeLayers = [1], NoRopeLayers = [1, 0], AttentionChunkSize = chunk, UseQkNorm = false,
        AttnTemperatureTuning = true, FloorScale = 4, AttnScale = 0.1, RopeTheta = 10000, RopeScaling = null, RmsNormEps = 1e-5,
        VocabSize = 16, MaxPositionEmbeddings = 1024, TieWordEmbeddings = false,
    };

    private static float[] Rows(int first, int n) => Enumerable.Range(first, n).SelectMany(p => Enumerable.Repeat((float)p, 4)).ToArray();

    [Fact]
    public void ChunkedLayer_KeepsOnlyTheCurrentChunk_NoPeLayerKeepsAll()
    {
        var cache = new Llama4KvCache(Config(chunk: 4));
        // positions 0..5 in one step: the chunked layer must still hold 0..5 (queries 0..3 see chunk 0).
        var (k0, _, keys0, start0) = cache.Append(0, Rows(0, 6), Rows(0, 6), 6);
        Assert.Equal((6, 0), (keys0, start0));
        _ = cache.Append(1, Rows(0, 6), Rows(0, 6), 6);
        cache.Advance(6);

        // position 6 is in chunk 1 (4..7): chunk 0 is dropped on the RoPE layer, kept on the NoPE layer.
        var (k, v, keys, start) = cache.Append(0, Rows(6, 1), Rows(6, 1), 1);
        Assert.Equal((3, 4), (keys, start));
        Assert.Equal(Rows(4, 3), k.ToArray());
        Assert.Equal(Rows(4, 3), v.ToArray());
        var (_, _, keysFull, startFull) = cache.Append(1, Rows(6, 1), Rows(6, 1), 1);
        Assert.Equal((7, 0), (keysFull, startFull));
        cache.Advance(1);

        Assert.Equal(7, cache.NextPosition);
        Assert.Equal((3 + 7) * 4 * 2 * sizeof(float), cache.Bytes);
        Assert.Equal(7 * 4 * 2 * sizeof(float) * 2, cache.BytesIfFull);
        Assert.Equal(6 * 4, k0.Length);
    }

    [Fact]
    public void Append_SkippingPositions_Throws()
    {
        var cache = new Llama4KvCache(Config(chunk: 4));
        _ = cache.Append(0, Rows(0, 2), Rows(0, 2), 2);
        Assert.Throws<InvalidOperationException>(() => cache.Append(0, Rows(0, 1), Rows(0, 1), 1));
    }
}
