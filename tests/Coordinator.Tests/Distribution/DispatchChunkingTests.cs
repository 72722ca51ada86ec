using Distributed.Coordinator.Distribution;

namespace Distributed.Coordinator.Tests.Distribution;

public sealed class DispatchChunkingTests
{
    private static RowSlice S(int expert, int first, int rows) => new(expert, first, rows);

    [Fact]
    public void Chunk_UnderTheLimit_OneRequest()
    {
        var chunks = GrpcExpertDispatcher.Chunk([S(1, 0, 3), S(4, 3, 2)], 8);
        Assert.Single(chunks);
        Assert.Equal([S(1, 0, 3), S(4, 3, 2)], chunks[0]);
    }

    [Fact]
    public void Chunk_OverTheLimit_CutsSlicesAndKeepsEveryRowOnce()
    {
        var slices = new List<RowSlice> { S(0, 0, 5), S(2, 5, 1), S(7, 6, 9) };
        var chunks = GrpcExpertDispatcher.Chunk(slices, 4);
        Assert.All(chunks, c => Assert.InRange(c.Sum(s => s.Rows), 1, 4));
        Assert.All(chunks, c => Assert.Equal(c.Count, c.Select(s => s.Expert).Distinct().Count()));
        Assert.All(chunks, c => Assert.Equal(c.Select(s => s.Expert).Order(), c.Select(s => s.Expert)));
        var rows = chunks.SelectMany(c => c).SelectMany(s => Enumerable.Range(s.FirstRow, s.Rows).Select(r => (s.Expert, r))).ToList();
        Assert.Equal(slices.SelectMany(s => Enumerable.Range(s.FirstRow, s.Rows).Select(r => (s.Expert, r))), rows);
        Assert.Equal(4, chunks.Count);
    }

    [Fact]
    public void Chunk_TwoSlicesOfOneExpert_GoToDifferentRequests()
    {
        var chunks = GrpcExpertDispatcher.Chunk([S(3, 0, 2), S(3, 10, 2)], 100);
        Assert.Equal(2, chunks.Count);
        Assert.Equal([S(3, 0, 2)], chunks[0]);
        Assert.Equal([S(3, 10, 2)], chunks[1]);
    }

    [Fact]
    public void Chunk_LimitOfOne_OneRowPerRequest()
    {
        var chunks = GrpcExpertDispatcher.Chunk([S(0, 0, 3)], 1);
        Assert.Equal([[S(0, 0, 1)], [S(0, 1, 1)], [S(0, 2, 1)]], chunks);
        Assert.Throws<ArgumentOutOfRangeException>(() => GrpcExpertDispatcher.Chunk([S(0, 0, 3)], 0));
    }
}
