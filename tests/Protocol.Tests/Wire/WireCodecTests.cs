using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;

namespace Distributed.Protocol.Tests.Wire;

public class WireCodecTests
{
    private static ushort ScalarRne(float f)
    {
        uint b = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f))
        {
            return (ushort)((b >> 16) | 0x40);
        }
        uint lower = b & 0xFFFF;
        uint upper = b >> 16;
        if (lower > 0x8000 || (lower == 0x8000 && (upper & 1) == 1))
        {
            upper++;
        }
        return (ushort)upper;
    }

    [Theory]
    [Trait("Category", "Unit")]
    [InlineData(1.0f, 0x3F80)]
    [InlineData(-2.0f, 0xC000)]
    [InlineData(0.0f, 0x0000)]
    [InlineData(float.PositiveInfinity, 0x7F80)]
    [InlineData(3.4028235e38f, 0x7F80)] // float.MaxValue rounds up to +Inf in bf16
    public void FloatToBf16_KnownValues(float value, int expected)
    {
        Assert.Equal((ushort)expected, WireCodec.FloatToBf16(value));
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void FloatToBf16_TiesRoundToEven()
    {
        Assert.Equal(0x3F80, WireCodec.FloatToBf16(BitConverter.UInt32BitsToSingle(0x3F80_8000))); // tie, even stays
        Assert.Equal(0x3F82, WireCodec.FloatToBf16(BitConverter.UInt32BitsToSingle(0x3F81_8000))); // tie, odd rounds up
        Assert.Equal(0x3F81, WireCodec.FloatToBf16(BitConverter.UInt32BitsToSingle(0x3F80_8001)));
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void FloatToBf16_NaNStaysNaN()
    {
        ushort b = WireCodec.FloatToBf16(BitConverter.UInt32BitsToSingle(0x7F80_0001));
        Assert.True(float.IsNaN(BitConverter.UInt32BitsToSingle((uint)b << 16)));
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void VectorPaths_MatchScalar_ForEveryLength()
    {
        var rng = new Random(1234);
        for (int n = 0; n <= 200; n++)
        {
            var src = new float[n];
            for (int i = 0; i < n; i++)
            {
                src[i] = BitConverter.UInt32BitsToSingle((uint)rng.NextInt64(0, 1L << 32));
            }
            var bf = new ushort[n];
            WireCodec.FloatToBf16(src, bf);
            for (int i = 0; i < n; i++)
            {
                Assert.Equal(ScalarRne(src[i]), bf[i]);
            }
            var back = new float[n];
            WireCodec.Bf16ToFloat(bf, back);
            for (int i = 0; i < n; i++)
            {
                Assert.Equal((uint)bf[i] << 16, BitConverter.SingleToUInt32Bits(back[i]));
            }
        }
    }

    [Theory]
    [Trait("Category", "Unit")]
    [InlineData(WireDType.Bf16)]
    [InlineData(WireDType.Fp32)]
    public void EncodeDecode_RoundTrips(WireDType dtype)
    {
        var src = Enumerable.Range(0, 131).Select(i => (float)Math.Sin(i) * 3).ToArray();
        var bytes = new byte[src.Length * WireCodec.ElementSize(dtype)];
        WireCodec.Encode(src, dtype, bytes);
        var back = new float[src.Length];
        Assert.True(WireCodec.TryDecodeFinite(bytes, dtype, 131, back, out int bad));
        Assert.Equal(-1, bad);
        for (int i = 0; i < src.Length; i++)
        {
            if (dtype == WireDType.Fp32)
            {
                Assert.Equal(BitConverter.SingleToUInt32Bits(src[i]), BitConverter.SingleToUInt32Bits(back[i]));
            }
            else
            {
                Assert.Equal(src[i], back[i], 0.02f);
            }
        }
    }

    [Theory]
    [Trait("Category", "Unit")]
    [InlineData(WireDType.Bf16, float.NaN)]
    [InlineData(WireDType.Bf16, float.NegativeInfinity)]
    [InlineData(WireDType.Fp32, float.NaN)]
    [InlineData(WireDType.Fp32, float.PositiveInfinity)]
    public void FirstNonFiniteRow_FindsTheRow(WireDType dtype, float poison)
    {
        const int hidden = 40;
        foreach (int row in new[] { 0, 3, 6 })
        {
            var src = new float[7 * hidden];
            src[row * hidden + 37] = poison;
            var bytes = new byte[src.Length * WireCodec.ElementSize(dtype)];
            WireCodec.Encode(src, dtype, bytes);
            Assert.Equal(row, WireCodec.FirstNonFiniteRow(bytes, dtype, hidden));
        }
    }

    [Fact]
    [Trait("Category", "Unit")]
    public void PayloadBytes_OverflowIsMinusOne()
    {
        Assert.Equal(-1, WireCodec.PayloadBytes(uint.MaxValue, uint.MaxValue, WireDType.Fp32));
        Assert.Equal(64 * 5120 * 2, WireCodec.PayloadBytes(64, 5120, WireDType.Bf16));
    }
}
