namespace Distributed.Kernels.Tests;

[Trait("Category", "Unit")]
public sealed class RopeTableTests
{
    [Fact]
    public void Create_TinyScoutLlama3Scaling_MatchesFixtureFloat32Values()
    {
        // tests/fixtures/tiny-scout/README.md, "Resulting inverse frequencies (float32)": head_dim 16, rope_theta 500000,
        // llama3 scaling factor 16, low = high freq factor 1, original_max_position_embeddings 64.
        float[] expected =
        [
            1.0f, 0.193922758102417f, 0.002350376918911934f, 0.00045579156721942127f,
            8.838834037305787e-05f, 1.7140511772595346e-05f, 3.3239348340430297e-06f, 6.445865778914595e-07f,
        ];
        var table = RopeTable.Create(16, 500000.0, new Llama3RopeScaling(16.0, 1.0, 1.0, 64));
        Assert.Equal(16, table.HeadDim);
        for (int i = 0; i < expected.Length; i++)
        {
            Assert.True(BitConverter.SingleToInt32Bits(expected[i]) == BitConverter.SingleToInt32Bits(table.InvFreq[i]),
                $"invFreq[{i}] = {table.InvFreq[i]:R}, fixture says {expected[i]:R}");
        }
    }

    [Fact]
    public void Create_NoScaling_IsInverseThetaPowers()
    {
        var table = RopeTable.Create(8, 10000.0, null);
        Assert.Equal(1f, table.InvFreq[0]);
        Assert.Equal((float)(1 / Math.Pow(10000, 0.25)), table.InvFreq[1], 1e-7f);
        Assert.Equal((float)(1 / Math.Pow(10000, 0.75)), table.InvFreq[3], 1e-9f);
    }

    [Fact]
    public void Create_EqualLowAndHighFactor_ProducesNoNaN()
    {
        var table = RopeTable.Create(128, 500000.0, new Llama3RopeScaling(8.0, 1.0, 1.0, 8192));
        Assert.All(table.InvFreq, f => Assert.True(float.IsFinite(f) && f > 0));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(7)]
    [InlineData(-2)]
    public void Create_BadHeadDim_Throws(int headDim)
    {
        Assert.Throws<ArgumentException>(() => RopeTable.Create(headDim, 10000.0, null));
    }
}
