using Distributed.Kernels.Reference;

namespace Distributed.Kernels.Tests.Cpu;

[Trait("Category", "Unit")]
public sealed class CpuRopeTests
{
    public static TheoryData<string> Backends => TestBackends.Names;

    private static RopeTable TinyScoutTable() => RopeTable.Create(16, 500000.0, new Llama3RopeScaling(16.0, 1.0, 1.0, 64));

    [Theory]
    [MemberData(nameof(Backends))]
    public void Rope_MatchesReference(string backend)
    {
        var b = TestBackends.Get(backend);
        foreach (var table in new[] { TinyScoutTable(), RopeTable.Create(128, 500000.0, new Llama3RopeScaling(8.0, 1.0, 4.0, 8192)) })
        {
            const int Rows = 6, Heads = 3;
            int[] positions = [0, 1, 7, 63, 8191, 1_000_000];
            var x = TestData.Floats(Rows * Heads * table.HeadDim, table.HeadDim);
            var expected = x.ToArray();
            ReferenceKernels.Rope(expected, Rows, Heads, positions, table);
            b.Rope(x, Rows, Heads, positions, table);
            var original = TestData.Floats(Rows * Heads * table.HeadDim, table.HeadDim);
            TestData.AssertClose(expected, x, i =>
            {
                int pair = i & ~1;
                return 1e-6 * (Math.Abs(original[pair]) + Math.Abs(original[pair + 1])) + 1e-30;
            }, $"{backend} D={table.HeadDim}");
        }
    }

    [Fact]
    public void Rope_RotatesAdjacentPairsNotHalves()
    {
        // Head of 4: pair 0 = (x0, x1) with frequency invFreq[0] = 1, pair 1 = (x2, x3) with frequency 0.5.
        var b = TestBackends.Default;
        var table = new RopeTable([1f, 0.5f]);
        float[] x = [1f, 0f, 0f, 1f];
        b.Rope(x, 1, 1, [2], table);
        Assert.Equal(MathF.Cos(2f), x[0], 1e-6f);
        Assert.Equal(MathF.Sin(2f), x[1], 1e-6f);
        Assert.Equal(-MathF.Sin(1f), x[2], 1e-6f);
        Assert.Equal(MathF.Cos(1f), x[3], 1e-6f);
    }

    [Fact]
    public void Rope_AngleIsRoundedToFloat32BeforeCosSin()
    {
        // position · invFreq = 8191 · 1.0000001 is not representable in fp32: θ must be the fp32 product.
        var b = TestBackends.Default;
        float inv = BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(1f) + 1);
        var table = new RopeTable([inv]);
        float[] x = [1f, 0f];
        b.Rope(x, 1, 1, [8191], table);
        float theta = 8191f * inv;
        Assert.Equal((float)Math.Cos(theta), x[0]);
        Assert.Equal((float)Math.Sin(theta), x[1]);
    }

    [Fact]
    public void Rope_PositionZero_IsIdentity()
    {
        var b = TestBackends.Default;
        var x = TestData.Floats(2 * 16, 3);
        var copy = x.ToArray();
        b.Rope(x, 1, 2, [0], TinyScoutTable());
        TestData.AssertBitwiseEqual(copy, x, "position 0");
    }

    [Fact]
    public void Rope_ManyRowsMultiThreaded_EqualsRowByRow()
    {
        var b = TestBackends.Default;
        var table = RopeTable.Create(64, 10000.0, null);
        const int Rows = 300, Heads = 8;
        var x = TestData.Floats(Rows * Heads * 64, 1);
        var positions = Enumerable.Range(0, Rows).Select(i => i * 3).ToArray();
        var single = x.ToArray();
        b.Rope(x, Rows, Heads, positions, table);
        for (int r = 0; r < Rows; r++)
        {
            b.Rope(single.AsSpan(r * Heads * 64, Heads * 64), 1, Heads, [positions[r]], table);
        }
        TestData.AssertBitwiseEqual(single, x, "rows");
    }
}
