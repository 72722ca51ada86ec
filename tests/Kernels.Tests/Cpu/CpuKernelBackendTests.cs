using System.Runtime.Intrinsics;
using Distributed.Kernels.Cpu;

namespace Distributed.Kernels.Tests.Cpu;

[Trait("Category", "Unit")]
public sealed class CpuKernelBackendTests
{
    [Fact]
    public void Constructor_DefaultThreads_UsesProcessorCountAndWidestSimd()
    {
        using var b = new CpuKernelBackend();
        Assert.Equal(Environment.ProcessorCount, b.Capabilities.Threads);
        Assert.True(b.Capabilities.BatchInvariant);
        Assert.Equal(0, b.Capabilities.DeviceMemoryBytes);
        string expectedSimd = Vector512.IsHardwareAccelerated ? "Vector512" : Vector256.IsHardwareAccelerated ? "Vector256" : "scalar";
        Assert.Equal(expectedSimd, b.Capabilities.Simd);
        string shortName = Vector512.IsHardwareAccelerated ? "avx512" : Vector256.IsHardwareAccelerated ? "avx2" : "scalar";
        Assert.Equal($"cpu-{shortName}x{Environment.ProcessorCount}", b.Name);
    }

    [Fact]
    public void Constructor_NegativeThreads_Throws()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new CpuKernelBackend(-1));
    }

    [Fact]
    public void Dispose_ThenCall_ThrowsObjectDisposed()
    {
        var b = new CpuKernelBackend(2);
        b.Dispose();
        b.Dispose();
        Assert.Throws<ObjectDisposedException>(() => b.Add(new float[1], new float[1]));
        Assert.Throws<ObjectDisposedException>(() => b.CreateWeight(new ushort[1], 1, 1, WeightLayout.OutIn));
    }

    [Fact]
    public void Weight_OutlivesItsBackend()
    {
        IWeightMatrix w;
        using (var b1 = new CpuKernelBackend(1))
        {
            w = b1.CreateWeight(TestData.Bf16(4 * 4, 1), 4, 4, WeightLayout.OutIn);
        }
        using (w)
        {
            var y = new float[4];
            TestBackends.Default.MatMul(TestData.Floats(4, 2), 1, w, y);
            Assert.Contains(y, v => v != 0);
        }
    }

    [Fact]
    public void CreateWeight_BadArguments_ThrowWithTheParameterName()
    {
        var b = TestBackends.Default;
        Assert.Equal("bf16", Assert.Throws<ArgumentException>(() => b.CreateWeight(new ushort[5], 2, 3, WeightLayout.OutIn)).ParamName);
        Assert.Equal("inFeatures", Assert.Throws<ArgumentException>(() => b.CreateWeight([], 0, 3, WeightLayout.OutIn)).ParamName);
        Assert.Equal("outFeatures", Assert.Throws<ArgumentException>(() => b.CreateWeight([], 3, 0, WeightLayout.OutIn)).ParamName);
        Assert.Equal("layout", Assert.Throws<ArgumentException>(() => b.CreateWeight(new ushort[4], 2, 2, (WeightLayout)7)).ParamName);
    }

    [Fact]
    public void MatMul_BadShapesOrWeights_Throw()
    {
        var b = TestBackends.Default;
        using var w = b.CreateWeight(new ushort[6], 2, 3, WeightLayout.OutIn);
        var ex = Assert.Throws<ArgumentException>(() => b.MatMul(new float[3], 1, w, new float[3]));
        Assert.Equal("x", ex.ParamName);
        Assert.Contains("[rows, 2]", ex.Message, StringComparison.Ordinal);
        Assert.Equal("y", Assert.Throws<ArgumentException>(() => b.MatMul(new float[2], 1, w, new float[2])).ParamName);
        Assert.Equal("rows", Assert.Throws<ArgumentException>(() => b.MatMul([], -1, w, [])).ParamName);
        Assert.Equal("w", Assert.Throws<ArgumentException>(() => b.MatMul(new float[2], 1, new ForeignWeight(), new float[3])).ParamName);
        var disposed = b.CreateWeight(new ushort[6], 2, 3, WeightLayout.OutIn);
        disposed.Dispose();
        Assert.Throws<ArgumentException>(() => b.MatMul(new float[2], 1, disposed, new float[3]));
    }

    [Fact]
    public void SwiGluFfn_MismatchedWeights_Throw()
    {
        var b = TestBackends.Default;
        using var gu = b.CreateWeight(new ushort[4 * 6], 4, 6, WeightLayout.InOut);
        using var dn = b.CreateWeight(new ushort[3 * 4], 3, 4, WeightLayout.InOut);
        using var badDown = b.CreateWeight(new ushort[2 * 4], 2, 4, WeightLayout.InOut);
        b.SwiGluFfn(new float[4], 1, gu, dn, new float[4]);
        Assert.Throws<ArgumentException>(() => b.SwiGluFfn(new float[4], 1, gu, badDown, new float[4]));
        Assert.Throws<ArgumentException>(() => b.SwiGluFfn(new float[5], 1, gu, dn, new float[4]));
        Assert.Throws<ArgumentException>(() => b.SwiGluFfnGrouped(new float[8], [1, 2], [gu, gu], [dn, dn], new float[8]));
        Assert.Throws<ArgumentException>(() => b.SwiGluFfnGrouped(new float[8], [2], [gu, gu], [dn], new float[8]));
        Assert.Throws<ArgumentException>(() => b.SwiGluFfnGrouped(new float[8], [3, -1], [gu, gu], [dn, dn], new float[8]));
    }

    [Fact]
    public void Attention_BadShapes_Throw()
    {
        var b = TestBackends.Default;
        var p = new AttentionParams(4, 2, 8, 0.3f, 0);
        var q = new float[32];
        var kv = new float[2 * 16];
        var o = new float[32];
        b.Attention(q, 1, [1], kv, kv, 2, 0, p, o);
        Assert.Equal("q", Assert.Throws<ArgumentException>(() => b.Attention(new float[31], 1, [1], kv, kv, 2, 0, p, o)).ParamName);
        Assert.Equal("k", Assert.Throws<ArgumentException>(() => b.Attention(q, 1, [1], new float[3], kv, 2, 0, p, o)).ParamName);
        Assert.Equal("queryPositions", Assert.Throws<ArgumentException>(() => b.Attention(q, 1, [-1], kv, kv, 2, 0, p, o)).ParamName);
        Assert.Equal("queryPositions", Assert.Throws<ArgumentException>(() => b.Attention(q, 1, [1, 2], kv, kv, 2, 0, p, o)).ParamName);
        Assert.Throws<ArgumentException>(() => b.Attention(q, 1, [1], kv, kv, 2, 0, new AttentionParams(3, 2, 8, 1f, 0), o));
    }

    [Fact]
    public void RowOps_BadShapes_Throw()
    {
        var b = TestBackends.Default;
        Assert.Throws<ArgumentException>(() => b.RmsNorm(new float[6], 2, 3, new float[2], 1e-5f, new float[6]));
        Assert.Throws<ArgumentException>(() => b.RmsNorm(new float[6], 2, 3, [], float.NaN, new float[6]));
        Assert.Throws<ArgumentException>(() => b.SoftmaxStable(new float[5], 2, 3));
        Assert.Throws<ArgumentException>(() => b.TopK(new float[6], 2, 3, 4, new int[8], new float[8]));
        Assert.Throws<ArgumentException>(() => b.TopK(new float[6], 2, 3, 2, new int[3], new float[4]));
        Assert.Throws<ArgumentException>(() => b.Argmax(new float[6], 2, 3, new int[1]));
        Assert.Throws<ArgumentException>(() => b.SiluMul(new float[3], new float[2], new float[3]));
        Assert.Throws<ArgumentException>(() => b.Add(new float[3], new float[4]));
        var table = new RopeTable([1f]);
        Assert.Throws<ArgumentException>(() => b.Rope(new float[4], 1, 1, [0], table));
        Assert.Throws<ArgumentException>(() => b.Rope(new float[2], 1, 1, [-3], table));
    }

    [Fact]
    public void ConcurrentCallers_GetCorrectResults()
    {
        var b = TestBackends.Default;
        const int K = 256, N = 512;
        using var w = b.CreateWeight(TestData.Bf16(K * N, 1), K, N, WeightLayout.OutIn);
        var x = TestData.Floats(4 * K, 2);
        var expected = new float[4 * N];
        b.MatMul(x, 4, w, expected);
        Parallel.For(0, 8, _ =>
        {
            var y = new float[4 * N];
            for (int i = 0; i < 20; i++)
            {
                b.MatMul(x, 4, w, y);
                TestData.AssertBitwiseEqual(expected, y, "concurrent");
            }
        });
    }

    private sealed class ForeignWeight : IWeightMatrix
    {
        public int InFeatures => 2;
        public int OutFeatures => 3;
        public long ResidentBytes => 0;
        public void Dispose()
        {
        }
    }
}
