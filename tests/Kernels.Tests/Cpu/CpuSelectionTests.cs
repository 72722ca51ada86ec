using Distributed.Kernels.Reference;

namespace Distributed.Kernels.Tests.Cpu;

[Trait("Category", "Unit")]
public sealed class CpuSelectionTests
{
    public static TheoryData<string> Backends => TestBackends.Names;

    [Theory]
    [MemberData(nameof(Backends))]
    public void TopK_RandomRows_MatchesReference(string backend)
    {
        var b = TestBackends.Get(backend);
        foreach (int cols in new[] { 1, 5, 16, 17, 128, 1000 })
        {
            foreach (int k in new[] { 1, 2, 8 }.Where(k => k <= cols))
            {
                const int Rows = 4;
                var x = TestData.Floats(Rows * cols, cols + k);
                // Coarse values so that ties occur.
                for (int i = 0; i < x.Length; i++)
                {
                    x[i] = MathF.Round(x[i] * 8);
                }
                var expIds = new int[Rows * k];
                var expValues = new float[Rows * k];
                ReferenceKernels.TopK(x, Rows, cols, k, expIds, expValues);
                var ids = new int[Rows * k];
                var values = new float[Rows * k];
                b.TopK(x, Rows, cols, k, ids, values);
                Assert.Equal(expIds, ids);
                Assert.Equal(expValues, values);
            }
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void TopK_TiesAndNaN_LowerIdFirstAndNaNNeverWins(string backend)
    {
        var b = TestBackends.Get(backend);
        float[] x = [float.NaN, 3f, 1f, 3f, float.NaN, float.NegativeInfinity, 3f, -0f, 0f];
        var ids = new int[6];
        var values = new float[6];
        b.TopK(x, 1, x.Length, 6, ids, values);
        Assert.Equal([1, 3, 6, 2, 7, 8], ids);
        // Fewer non-NaN values than k: NaN fills the tail, lowest id first.
        float[] y = [float.NaN, 1f, float.NaN];
        var ids2 = new int[3];
        var values2 = new float[3];
        b.TopK(y, 1, 3, 3, ids2, values2);
        Assert.Equal([1, 0, 2], ids2);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void TopK_LargeVocabularyWithLateWinner_FindsIt(string backend)
    {
        var b = TestBackends.Get(backend);
        var x = TestData.Floats(202_048, 3);
        x[202_047] = 5f;
        x[100_000] = 4f;
        x[17] = 4f;
        var ids = new int[3];
        var values = new float[3];
        b.TopK(x, 1, x.Length, 3, ids, values);
        Assert.Equal([202_047, 17, 100_000], ids);
        Assert.Equal([5f, 4f, 4f], values);
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Argmax_RandomAndSpecialRows_MatchesReference(string backend)
    {
        var b = TestBackends.Get(backend);
        foreach (int cols in new[] { 1, 3, 16, 31, 64, 1000 })
        {
            const int Rows = 5;
            var x = TestData.Floats(Rows * cols, cols);
            for (int i = 0; i < x.Length; i += 7)
            {
                x[i] = float.NaN;
            }
            var expected = new int[Rows];
            ReferenceKernels.Argmax(x, Rows, cols, expected);
            var actual = new int[Rows];
            b.Argmax(x, Rows, cols, actual);
            Assert.Equal(expected, actual);
        }
    }

    [Theory]
    [MemberData(nameof(Backends))]
    public void Argmax_Ties_LowestIdAndNaNNeverWins(string backend)
    {
        var b = TestBackends.Get(backend);
        var row = new float[40];
        Array.Fill(row, -1f);
        row[0] = float.NaN;
        row[21] = 2f;
        row[33] = 2f;
        row[39] = float.NaN;
        var ids = new int[1];
        b.Argmax(row, 1, row.Length, ids);
        Assert.Equal(21, ids[0]);
        float[] zeros = [float.NaN, -0f, 0f];
        b.Argmax(zeros, 1, 3, ids);
        Assert.Equal(1, ids[0]);
        float[] nans = [float.NaN, float.NaN];
        b.Argmax(nans, 1, 2, ids);
        Assert.Equal(0, ids[0]);
        float[] negInf = [float.NaN, float.NegativeInfinity, float.NegativeInfinity];
        b.Argmax(negInf, 1, 3, ids);
        Assert.Equal(1, ids[0]);
    }
}
