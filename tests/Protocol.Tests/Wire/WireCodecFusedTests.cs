using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;

namespace Distributed.Protocol.Tests.Wire;

/// <summary>The one-pass codec variants (issue #15) give bitwise what the separate steps give, at every length 0..256
/// (every vector tail), with special values; the fused finite check finds the first bad row.</summary>
public sealed class WireCodecFusedTests
{
    public static TheoryData<WireDType> Dtypes => [WireDType.Bf16, WireDType.Fp32];

    private static float[] Values(int n, int seed)
    {
        var rng = new Random(seed);
        var v = new float[n];
        for (int i = 0; i < n; i++)
        {
            v[i] = (rng.Next(8)) switch
            {
                0 => 0f,
                1 => -0f,
                2 => float.Epsilon * rng.Next(1, 100),
                3 => (float)(rng.NextDouble() * 1e30),
                _ => (float)(rng.NextDouble() * 4 - 2),
            };
        }
        return v;
    }

    [Theory]
    [Trait("Category", "Unit")]
    [MemberData(nameof(Dtypes))]
    public void EncodeScaled_EqualsScaleThenEncode_EveryLength(WireDType dtype)
    {
        int size = WireCodec.ElementSize(dtype);
        foreach (float scale in new[] { 0.731f, 1f, 3.5e8f, -0.25f })
        {
            for (int n = 0; n <= 256; n++)
            {
                var x = Values(n, n);
                var scaled = x.Select(v => v * scale).ToArray();
                var expected = new byte[n * size];
                WireCodec.Encode(scaled, dtype, expected);
                var fused = new byte[n * size];
                WireCodec.EncodeScaled(x, scale, dtype, fused);
                Assert.True(expected.AsSpan().SequenceEqual(fused), $"n={n} scale={scale}");
            }
        }
        Assert.Throws<ArgumentException>(() => WireCodec.EncodeScaled(new float[4], 1f, dtype, new byte[3]));
    }

    [Theory]
    [Trait("Category", "Unit")]
    [MemberData(nameof(Dtypes))]
    public void DecodeAdd_EqualsDecodeThenAdd_EveryLength(WireDType dtype)
    {
        int size = WireCodec.ElementSize(dtype);
        for (int n = 0; n <= 256; n++)
        {
            var bytes = new byte[n * size];
            WireCodec.Encode(Values(n, n + 1000), dtype, bytes);
            var acc = Values(n, n + 2000);
            var decoded = new float[n];
            WireCodec.Decode(bytes, dtype, decoded);
            var expected = acc.Zip(decoded, (a, d) => a + d).ToArray();
            WireCodec.DecodeAdd(bytes, dtype, acc);
            Assert.Equal(expected.Select(BitConverter.SingleToUInt32Bits), acc.Select(BitConverter.SingleToUInt32Bits));
        }
    }

    [Theory]
    [Trait("Category", "Unit")]
    [MemberData(nameof(Dtypes))]
    public void TryDecodeFinite_FindsTheFirstBadRow_AtEveryPosition(WireDType dtype)
    {
        const int hidden = 37;
        int size = WireCodec.ElementSize(dtype);
        var clean = Values(5 * hidden, 7);
        var bytes = new byte[clean.Length * size];
        WireCodec.Encode(clean, dtype, bytes);
        var decoded = new float[clean.Length];
        Assert.True(WireCodec.TryDecodeFinite(bytes, dtype, hidden, decoded, out int none));
        Assert.Equal(-1, none);
        var expected = new float[clean.Length];
        WireCodec.Decode(bytes, dtype, expected);
        Assert.Equal(expected, decoded);
        foreach (float bad in new[] { float.NaN, float.PositiveInfinity, float.NegativeInfinity })
        {
            for (int i = 0; i < clean.Length; i += 3)
            {
                var v = (float[])clean.Clone();
                v[i] = bad;
                v[Math.Min(v.Length - 1, i + 40)] = float.NaN;
                WireCodec.Encode(v, dtype, bytes);
                Assert.False(WireCodec.TryDecodeFinite(bytes, dtype, hidden, decoded, out int row));
                Assert.Equal(i / hidden, row);
                Assert.Equal(WireCodec.FirstNonFiniteRow(bytes, dtype, hidden), row);
            }
        }
    }

    // FP8 requests (issue #12) through the fused paths: EncodeScaled of one row is EncodeRows of the scaled row (its own
    // per-row scale), and TryDecodeFinite decodes exactly what DecodeRows does.
    [Fact]
    [Trait("Category", "Unit")]
    public void Fp8_EncodeScaled_IsEncodeRowsOfTheScaledRow_AndDecodesAsDecodeRows()
    {
        foreach (float scale in new[] { 0.731f, 1f, 3.5e3f, -0.25f })
        {
            foreach (int n in new[] { 1, 7, 64, 257 })
            {
                var x = Values(n, n).Select(v => Math.Clamp(v, -1e6f, 1e6f)).ToArray();
                var scaled = x.Select(v => v * scale).ToArray();
                int bytes = (int)WireCodec.RowBytes(n, WireDType.Fp8E4M3);
                var expected = new byte[bytes];
                WireCodec.EncodeRows(scaled, n, WireDType.Fp8E4M3, expected);
                var fused = new byte[bytes];
                WireCodec.EncodeScaled(x, scale, WireDType.Fp8E4M3, fused);
                Assert.True(expected.AsSpan().SequenceEqual(fused), $"n={n} scale={scale}");
                var a = new float[n];
                var b = new float[n];
                WireCodec.DecodeRows(fused, n, WireDType.Fp8E4M3, a);
                Assert.True(WireCodec.TryDecodeFinite(fused, WireDType.Fp8E4M3, n, b, out int bad, out string why), why);
                Assert.Equal(-1, bad);
                Assert.Equal(a.Select(BitConverter.SingleToUInt32Bits), b.Select(BitConverter.SingleToUInt32Bits));
            }
        }
        Assert.Throws<ArgumentException>(() => WireCodec.EncodeScaled(new float[4], 1f, WireDType.Fp8E4M3, new byte[4]));
    }

    // What FirstInvalidRow refuses, the fused decode refuses with the same words; and a finite positive scale whose
    // product with a code overflows to Inf (which a check of the bytes alone lets through) is refused too.
    [Theory]
    [Trait("Category", "Unit")]
    [InlineData(0f, 0x38, "has scale 0, not finite and positive")]
    [InlineData(float.NaN, 0x38, "has scale NaN, not finite and positive")]
    [InlineData(1f, 0x7F, "holds the NaN code 0x7F at element 5")]
    [InlineData(3e38f, 0x7E, "overflows (code 0x")]
    public void Fp8_TryDecodeFinite_RefusesTheBadRow(float scale, int code, string expected)
    {
        const int hidden = 16;
        int rowBytes = (int)WireCodec.RowBytes(hidden, WireDType.Fp8E4M3);
        var payload = new byte[3 * rowBytes];
        WireCodec.EncodeRows(Values(3 * hidden, 5).Select(v => Math.Clamp(v, -100f, 100f)).ToArray(), hidden, WireDType.Fp8E4M3, payload);
        var row = payload.AsSpan(2 * rowBytes, rowBytes);
        System.Buffers.Binary.BinaryPrimitives.WriteSingleLittleEndian(row, scale);
        row[WireCodec.Fp8ScaleBytes + 5] = (byte)code;
        Assert.False(WireCodec.TryDecodeFinite(payload, WireDType.Fp8E4M3, hidden, new float[3 * hidden], out int bad, out string why));
        Assert.Equal(2, bad);
        Assert.Contains(expected, why, StringComparison.Ordinal);
        if (!expected.Contains("overflows", StringComparison.Ordinal))
        {
            Assert.Equal(2, WireCodec.FirstInvalidRow(payload, WireDType.Fp8E4M3, hidden, out string bytesWhy));
            Assert.Equal(bytesWhy, why);
        }
    }
}
