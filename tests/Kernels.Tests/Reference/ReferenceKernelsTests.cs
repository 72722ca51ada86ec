using Distributed.Kernels.Reference;

namespace Distributed.Kernels.Tests.Reference;

/// <summary>The reference itself, against hand-computed values (it is the yardstick of every parity test).</summary>
[Trait("Category", "Unit")]
public sealed class ReferenceKernelsTests
{
    private static ushort B(float v) => DTypeInfo.FloatToBf16(v);

    [Fact]
    public void MatMul_HandComputed()
    {
        // W (InOut, [K=2, N=3]) = [[1, 2, 3], [4, 5, 6]]; x = [1, -1] → y = [-3, -3, -3].
        ushort[] inOut = [B(1), B(2), B(3), B(4), B(5), B(6)];
        ushort[] outIn = [B(1), B(4), B(2), B(5), B(3), B(6)];
        var y = new float[3];
        ReferenceKernels.MatMul([1f, -1f], 1, inOut, 2, 3, WeightLayout.InOut, y);
        Assert.Equal([-3f, -3f, -3f], y);
        ReferenceKernels.MatMul([2f, 0.5f], 1, outIn, 2, 3, WeightLayout.OutIn, y);
        Assert.Equal([4f, 6.5f, 9f], y);
    }

    [Fact]
    public void SwiGluFfn_HandComputed()
    {
        // H = 1, I = 1: gate = 2x, up = 3x, down = 0.5 → y = 0.5 · silu(2x) · 3x.
        var y = new float[1];
        ReferenceKernels.SwiGluFfn([1f], 1, [B(2), B(3)], WeightLayout.InOut, [B(0.5f)], WeightLayout.InOut, 1, 1, y);
        Assert.Equal((float)(0.5 * (2 / (1 + Math.Exp(-2))) * 3), y[0]);
    }

    [Fact]
    public void Attention_SingleKeyReturnsItsValue_AndMaskHidesFutureKeys()
    {
        var p = new AttentionParams(1, 1, 2, 1f, 0);
        var o = new float[2];
        ReferenceKernels.Attention([1f, 1f], 1, [0], [5f, 5f, 9f, 9f], [1f, 2f, 30f, 40f], 2, 0, p, o);
        Assert.Equal([1f, 2f], o);
        Assert.True(ReferenceKernels.IsVisible(5, 4, 4));
        Assert.False(ReferenceKernels.IsVisible(4, 3, 4));
        Assert.False(ReferenceKernels.IsVisible(4, 5, 0));
    }

    [Fact]
    public void TopKAndArgmax_HandComputed()
    {
        var ids = new int[2];
        var values = new float[2];
        ReferenceKernels.TopK([1f, float.NaN, 7f, 7f], 1, 4, 2, ids, values);
        Assert.Equal([2, 3], ids);
        var am = new int[1];
        ReferenceKernels.Argmax([float.NaN, -2f, 5f, 5f], 1, 4, am);
        Assert.Equal(2, am[0]);
    }
}
