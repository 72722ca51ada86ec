using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Distributed.Protocol.Grpc;

namespace Distributed.Protocol.Wire;

/// <summary>
/// One-pass variants of the codec (issue #15: each direction used to touch the payload about six times). Every result
/// is bitwise what the unfused steps give: <c>EncodeScaled(x, s)</c> = <c>Encode(x·s)</c>, <c>DecodeAdd</c> =
/// <c>dst += Decode(src)</c>, <c>TryDecodeFinite</c> = <c>DecodeRows</c> + <see cref="FirstInvalidRow"/> (FP8: and no
/// decoded value overflows to ±Inf).
/// Vector512 or Vector256 where the hardware has it, scalar otherwise; wire dtypes without a fused path take the
/// unfused steps.
/// </summary>
public static partial class WireCodec
{
    /// <summary>
    /// Writes <c>src[i] · scale</c> (one fp32 multiply, then the wire rounding) into <paramref name="dst"/>
    /// (exactly <c>src.Length × ElementSize</c> bytes): the router score applied while encoding, with no fp32 copy.
    /// For FP8_E4M3, <paramref name="src"/> is ONE row and <paramref name="dst"/> its <see cref="RowBytes"/>: the scaled
    /// row is quantized per token as <see cref="EncodeRows"/> does (its scale, then its codes).
    /// </summary>
    public static void EncodeScaled(ReadOnlySpan<float> src, float scale, WireDType dtype, Span<byte> dst)
    {
        int bytes = checked((int)RowBytes(src.Length, dtype));
        if (dst.Length != bytes)
        {
            throw new ArgumentException($"destination holds {dst.Length} bytes, {bytes} needed", nameof(dst));
        }
        if (dtype == WireDType.Fp8E4M3)
        {
            // The row's FP8 scale depends on its largest scaled value, so the scaled row is formed first (one row).
            float[] scaledRow = System.Buffers.ArrayPool<float>.Shared.Rent(src.Length);
            try
            {
                var x = scaledRow.AsSpan(0, src.Length);
                for (int j = 0; j < x.Length; j++)
                {
                    x[j] = src[j] * scale;
                }
                EncodeRows(x, src.Length, dtype, dst);
            }
            finally
            {
                System.Buffers.ArrayPool<float>.Shared.Return(scaledRow);
            }
            return;
        }
        if (!BitConverter.IsLittleEndian)
        {
            float[] scaled = new float[src.Length];
            for (int j = 0; j < src.Length; j++)
            {
                scaled[j] = src[j] * scale;
            }
            Encode(scaled, dtype, dst);
            return;
        }
        ref float s = ref MemoryMarshal.GetReference(src);
        int n = src.Length, i = 0;
        if (dtype == WireDType.Fp32)
        {
            ref float d = ref Unsafe.As<byte, float>(ref MemoryMarshal.GetReference(dst));
            if (Vector512.IsHardwareAccelerated)
            {
                var k = Vector512.Create(scale);
                for (; i <= n - 16; i += 16)
                {
                    (Vector512.LoadUnsafe(ref s, (nuint)i) * k).StoreUnsafe(ref d, (nuint)i);
                }
            }
            else if (Vector256.IsHardwareAccelerated)
            {
                var k = Vector256.Create(scale);
                for (; i <= n - 8; i += 8)
                {
                    (Vector256.LoadUnsafe(ref s, (nuint)i) * k).StoreUnsafe(ref d, (nuint)i);
                }
            }
            for (; i < n; i++)
            {
                Unsafe.Add(ref d, i) = Unsafe.Add(ref s, i) * scale;
            }
            return;
        }
        if (dtype != WireDType.Bf16)
        {
            float[] scaled = new float[n];
            for (int j = 0; j < n; j++)
            {
                scaled[j] = src[j] * scale;
            }
            Encode(scaled, dtype, dst);
            return;
        }
        ref ushort h = ref Unsafe.As<byte, ushort>(ref MemoryMarshal.GetReference(dst));
        if (Vector512.IsHardwareAccelerated)
        {
            var k = Vector512.Create(scale);
            var bias = Vector512.Create(0x7FFFu);
            var one = Vector512.Create(1u);
            var quiet = Vector512.Create(0x40u);
            for (; i <= n - 32; i += 32)
            {
                var r0 = RoundToBf16(Vector512.LoadUnsafe(ref s, (nuint)i) * k, bias, one, quiet);
                var r1 = RoundToBf16(Vector512.LoadUnsafe(ref s, (nuint)(i + 16)) * k, bias, one, quiet);
                Vector512.Narrow(r0, r1).StoreUnsafe(ref h, (nuint)i);
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var k = Vector256.Create(scale);
            var bias = Vector256.Create(0x7FFFu);
            var one = Vector256.Create(1u);
            var quiet = Vector256.Create(0x40u);
            for (; i <= n - 16; i += 16)
            {
                var r0 = RoundToBf16(Vector256.LoadUnsafe(ref s, (nuint)i) * k, bias, one, quiet);
                var r1 = RoundToBf16(Vector256.LoadUnsafe(ref s, (nuint)(i + 8)) * k, bias, one, quiet);
                Vector256.Narrow(r0, r1).StoreUnsafe(ref h, (nuint)i);
            }
        }
        for (; i < n; i++)
        {
            Unsafe.Add(ref h, i) = FloatToBf16(Unsafe.Add(ref s, i) * scale);
        }
    }

    /// <summary>Adds the decoded <paramref name="src"/> to <paramref name="dst"/> (<c>dst[i] += Decode(src)[i]</c>, one
    /// fp32 add per element; exactly <c>dst.Length × ElementSize</c> bytes).</summary>
    public static void DecodeAdd(ReadOnlySpan<byte> src, WireDType dtype, Span<float> dst)
    {
        int bytes = checked(dst.Length * ElementSize(dtype));
        if (src.Length != bytes)
        {
            throw new ArgumentException($"source holds {src.Length} bytes, {bytes} needed for {dst.Length} {dtype} elements", nameof(src));
        }
        if (!BitConverter.IsLittleEndian || (dtype != WireDType.Fp32 && dtype != WireDType.Bf16))
        {
            float[] decoded = new float[dst.Length];
            Decode(src, dtype, decoded);
            for (int j = 0; j < dst.Length; j++)
            {
                dst[j] += decoded[j];
            }
            return;
        }
        ref float d = ref MemoryMarshal.GetReference(dst);
        int n = dst.Length, i = 0;
        if (dtype == WireDType.Fp32)
        {
            ref float s = ref Unsafe.As<byte, float>(ref MemoryMarshal.GetReference(src));
            if (Vector512.IsHardwareAccelerated)
            {
                for (; i <= n - 16; i += 16)
                {
                    (Vector512.LoadUnsafe(ref d, (nuint)i) + Vector512.LoadUnsafe(ref s, (nuint)i)).StoreUnsafe(ref d, (nuint)i);
                }
            }
            else if (Vector256.IsHardwareAccelerated)
            {
                for (; i <= n - 8; i += 8)
                {
                    (Vector256.LoadUnsafe(ref d, (nuint)i) + Vector256.LoadUnsafe(ref s, (nuint)i)).StoreUnsafe(ref d, (nuint)i);
                }
            }
            for (; i < n; i++)
            {
                Unsafe.Add(ref d, i) += Unsafe.Add(ref s, i);
            }
            return;
        }
        ref ushort h = ref Unsafe.As<byte, ushort>(ref MemoryMarshal.GetReference(src));
        if (Vector512.IsHardwareAccelerated)
        {
            for (; i <= n - 32; i += 32)
            {
                var (lo, hi) = Vector512.Widen(Vector512.LoadUnsafe(ref h, (nuint)i));
                (Vector512.LoadUnsafe(ref d, (nuint)i) + (lo << 16).AsSingle()).StoreUnsafe(ref d, (nuint)i);
                (Vector512.LoadUnsafe(ref d, (nuint)(i + 16)) + (hi << 16).AsSingle()).StoreUnsafe(ref d, (nuint)(i + 16));
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            for (; i <= n - 16; i += 16)
            {
                var (lo, hi) = Vector256.Widen(Vector256.LoadUnsafe(ref h, (nuint)i));
                (Vector256.LoadUnsafe(ref d, (nuint)i) + (lo << 16).AsSingle()).StoreUnsafe(ref d, (nuint)i);
                (Vector256.LoadUnsafe(ref d, (nuint)(i + 8)) + (hi << 16).AsSingle()).StoreUnsafe(ref d, (nuint)(i + 8));
            }
        }
        for (; i < n; i++)
        {
            Unsafe.Add(ref d, i) += BitConverter.UInt32BitsToSingle((uint)Unsafe.Add(ref h, i) << 16);
        }
    }

    // TryDecodeFinite in one pass: every DECODED value is checked as it is stored, so the check holds for exactly what
    // is computed on, even when src is memory a peer can still write (the same-host ring).
    private static bool DecodeFinite(ReadOnlySpan<byte> src, WireDType dtype, int hidden, Span<float> dst, out int badRow, out string why)
    {
        if (dtype == WireDType.Fp8E4M3)
        {
            return DecodeFiniteFp8(src, hidden, dst, out badRow, out why);
        }
        why = "holds NaN or Inf";
        int bytes = checked(dst.Length * ElementSize(dtype));
        if (src.Length != bytes)
        {
            throw new ArgumentException($"source holds {src.Length} bytes, {bytes} needed for {dst.Length} {dtype} elements", nameof(src));
        }
        if (!BitConverter.IsLittleEndian || (dtype != WireDType.Fp32 && dtype != WireDType.Bf16))
        {
            Decode(src, dtype, dst);
            int bad = FirstNonFinite(dst);
            badRow = bad < 0 || hidden <= 0 ? -1 : bad / hidden;
            return badRow < 0;
        }
        ref float d = ref MemoryMarshal.GetReference(dst);
        int n = dst.Length, i = 0;
        const uint Exponent = 0x7F80_0000u;
        if (dtype == WireDType.Fp32)
        {
            ref uint s = ref Unsafe.As<byte, uint>(ref MemoryMarshal.GetReference(src));
            ref uint du = ref Unsafe.As<float, uint>(ref d);
            if (Vector512.IsHardwareAccelerated)
            {
                var mask = Vector512.Create(Exponent);
                for (; i <= n - 16; i += 16)
                {
                    var v = Vector512.LoadUnsafe(ref s, (nuint)i);
                    v.StoreUnsafe(ref du, (nuint)i);
                    if (Vector512.EqualsAny(v & mask, mask))
                    {
                        break;
                    }
                }
            }
            else if (Vector256.IsHardwareAccelerated)
            {
                var mask = Vector256.Create(Exponent);
                for (; i <= n - 8; i += 8)
                {
                    var v = Vector256.LoadUnsafe(ref s, (nuint)i);
                    v.StoreUnsafe(ref du, (nuint)i);
                    if (Vector256.EqualsAny(v & mask, mask))
                    {
                        break;
                    }
                }
            }
            for (; i < n; i++)
            {
                uint v = Unsafe.Add(ref s, i);
                Unsafe.Add(ref du, i) = v;
                if ((v & Exponent) == Exponent)
                {
                    badRow = hidden <= 0 ? 0 : i / hidden;
                    return false;
                }
            }
            badRow = -1;
            return true;
        }
        ref ushort h = ref Unsafe.As<byte, ushort>(ref MemoryMarshal.GetReference(src));
        if (Vector512.IsHardwareAccelerated)
        {
            var mask = Vector512.Create(Exponent);
            for (; i <= n - 32; i += 32)
            {
                var (lo, hi) = Vector512.Widen(Vector512.LoadUnsafe(ref h, (nuint)i));
                lo <<= 16;
                hi <<= 16;
                lo.AsSingle().StoreUnsafe(ref d, (nuint)i);
                hi.AsSingle().StoreUnsafe(ref d, (nuint)(i + 16));
                if (Vector512.EqualsAny(lo & mask, mask) || Vector512.EqualsAny(hi & mask, mask))
                {
                    break;
                }
            }
        }
        else if (Vector256.IsHardwareAccelerated)
        {
            var mask = Vector256.Create(Exponent);
            for (; i <= n - 16; i += 16)
            {
                var (lo, hi) = Vector256.Widen(Vector256.LoadUnsafe(ref h, (nuint)i));
                lo <<= 16;
                hi <<= 16;
                lo.AsSingle().StoreUnsafe(ref d, (nuint)i);
                hi.AsSingle().StoreUnsafe(ref d, (nuint)(i + 8));
                if (Vector256.EqualsAny(lo & mask, mask) || Vector256.EqualsAny(hi & mask, mask))
                {
                    break;
                }
            }
        }
        for (; i < n; i++)
        {
            uint v = (uint)Unsafe.Add(ref h, i) << 16;
            Unsafe.Add(ref d, i) = BitConverter.UInt32BitsToSingle(v);
            if ((v & Exponent) == Exponent)
            {
                badRow = hidden <= 0 ? 0 : i / hidden;
                return false;
            }
        }
        badRow = -1;
        return true;
    }

    private static int FirstNonFinite(ReadOnlySpan<float> values)
    {
        for (int i = 0; i < values.Length; i++)
        {
            if (!float.IsFinite(values[i]))
            {
                return i;
            }
        }
        return -1;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> RoundToBf16(Vector256<float> f, Vector256<uint> bias, Vector256<uint> one, Vector256<uint> quiet)
    {
        var b = f.AsUInt32();
        var rounded = (b + bias + ((b >> 16) & one)) >> 16;
        var nan = (b >> 16) | quiet;
        return Vector256.ConditionalSelect(Vector256.Equals(f, f).AsUInt32(), rounded, nan);
    }

    // FP8 rows: each row's scale is read ONCE (the ring may change under us), checked, and every decoded value
    // code · scale is checked as it is stored: a NaN code or an overflow to ±Inf makes the row bad.
    private static bool DecodeFiniteFp8(ReadOnlySpan<byte> src, int hidden, Span<float> dst, out int badRow, out string why)
    {
        int rows = CheckRows(dst.Length, hidden);
        int rowBytes = hidden + Fp8ScaleBytes;
        if (src.Length != (long)rows * rowBytes)
        {
            throw new ArgumentException($"source holds {src.Length} bytes, {(long)rows * rowBytes} needed for {rows} FP8 rows", nameof(src));
        }
        var values = Distributed.Kernels.Fp8E4M3Codec.Values;
        for (int r = 0; r < rows; r++)
        {
            var row = src.Slice(r * rowBytes, rowBytes);
            float scale = System.Buffers.Binary.BinaryPrimitives.ReadSingleLittleEndian(row);
            if (!(scale > 0f) || !float.IsFinite(scale))
            {
                badRow = r;
                why = $"has scale {scale.ToString(System.Globalization.CultureInfo.InvariantCulture)}, not finite and positive";
                return false;
            }
            var d = dst.Slice(r * hidden, hidden);
            for (int i = 0; i < hidden; i++)
            {
                byte code = row[Fp8ScaleBytes + i];
                float v = values[code] * scale;
                d[i] = v;
                if (!float.IsFinite(v))
                {
                    badRow = r;
                    why = float.IsNaN(values[code]) ? $"holds the NaN code 0x{code:X2} at element {i}" : $"element {i} overflows (code 0x{code:X2} times scale {scale.ToString(System.Globalization.CultureInfo.InvariantCulture)})";
                    return false;
                }
            }
        }
        badRow = -1;
        why = "";
        return true;
    }
}
