using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Distributed.Protocol.Grpc;

namespace Distributed.Protocol.Wire;

/// <summary>
/// Converts fp32 token rows to and from their wire form. bf16 = the upper 16 bits of the fp32 value after rounding to
/// nearest even (NaN stays NaN, quieted); fp32 = the IEEE bits unchanged (so fp32 mode is lossless). Little-endian.
/// </summary>
public static partial class WireCodec
{
    /// <summary>Bytes per element of <paramref name="dtype"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">Not BF16 or FP32.</exception>
    public static int ElementSize(WireDType dtype) => dtype switch
    {
        WireDType.Bf16 => 2,
        WireDType.Fp32 => 4,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "wire dtype must be BF16 or FP32"),
    };

    /// <summary>True for the dtypes a payload may use.</summary>
    public static bool IsDefined(WireDType dtype) => dtype is WireDType.Bf16 or WireDType.Fp32;

    /// <summary>Bytes of <paramref name="rows"/> × <paramref name="hidden"/> elements, or -1 on overflow past <see cref="int.MaxValue"/>.</summary>
    public static long PayloadBytes(long rows, long hidden, WireDType dtype)
    {
        try
        {
            long bytes = checked(rows * hidden * ElementSize(dtype));
            return bytes > int.MaxValue ? -1 : bytes;
        }
        catch (OverflowException)
        {
            return -1;
        }
    }

    /// <summary>Writes <paramref name="src"/> into <paramref name="dst"/> (exactly <c>src.Length × ElementSize</c> bytes).</summary>
    public static void Encode(ReadOnlySpan<float> src, WireDType dtype, Span<byte> dst)
    {
        int bytes = checked(src.Length * ElementSize(dtype));
        if (dst.Length != bytes)
        {
            throw new ArgumentException($"destination holds {dst.Length} bytes, {bytes} needed", nameof(dst));
        }
        if (dtype == WireDType.Fp32)
        {
            if (BitConverter.IsLittleEndian)
            {
                MemoryMarshal.AsBytes(src).CopyTo(dst);
            }
            else
            {
                for (int i = 0; i < src.Length; i++)
                {
                    BinaryPrimitives.WriteSingleLittleEndian(dst.Slice(i * 4, 4), src[i]);
                }
            }
            return;
        }
        FloatToBf16(src, MemoryMarshal.Cast<byte, ushort>(dst));
    }

    /// <summary>
    /// Decodes <paramref name="src"/> into <paramref name="dst"/> and checks, in the same pass, that every decoded value
    /// is finite. Returns false (with the first offending row in <paramref name="badRow"/>) when a row holds NaN or ±Inf;
    /// <paramref name="dst"/> is then partially written. The check is on the decoded values, so it holds for what is
    /// computed on even when <paramref name="src"/> is memory a peer can still write (the same-host ring).
    /// </summary>
    public static bool TryDecodeFinite(ReadOnlySpan<byte> src, WireDType dtype, int hidden, Span<float> dst, out int badRow)
        => DecodeFinite(src, dtype, hidden, dst, out badRow);

    /// <summary>Decodes <paramref name="src"/> into <paramref name="dst"/> (exactly <c>dst.Length × ElementSize</c> bytes).</summary>
    public static void Decode(ReadOnlySpan<byte> src, WireDType dtype, Span<float> dst)
    {
        int bytes = checked(dst.Length * ElementSize(dtype));
        if (src.Length != bytes)
        {
            throw new ArgumentException($"source holds {src.Length} bytes, {bytes} needed for {dst.Length} {dtype} elements", nameof(src));
        }
        if (dtype == WireDType.Fp32)
        {
            if (BitConverter.IsLittleEndian)
            {
                src.CopyTo(MemoryMarshal.AsBytes(dst));
            }
            else
            {
                for (int i = 0; i < dst.Length; i++)
                {
                    dst[i] = BinaryPrimitives.ReadSingleLittleEndian(src.Slice(i * 4, 4));
                }
            }
            return;
        }
        Bf16ToFloat(MemoryMarshal.Cast<byte, ushort>(src), dst);
    }

    /// <summary>Index of the first row of <paramref name="payload"/> holding NaN or ±Inf, or -1.</summary>
    public static int FirstNonFiniteRow(ReadOnlySpan<byte> payload, WireDType dtype, int hidden)
    {
        if (hidden <= 0)
        {
            return -1;
        }
        if (dtype == WireDType.Fp32)
        {
            var bits = MemoryMarshal.Cast<byte, uint>(payload);
            int i = FirstMasked(bits, 0x7F80_0000u);
            return i < 0 ? -1 : i / hidden;
        }
        var half = MemoryMarshal.Cast<byte, ushort>(payload);
        int j = FirstMasked(half, (ushort)0x7F80);
        return j < 0 ? -1 : j / hidden;
    }

    private static int FirstMasked<T>(ReadOnlySpan<T> bits, T exponentMask)
        where T : unmanaged, System.Numerics.IBinaryInteger<T>
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated && bits.Length >= Vector512<T>.Count)
        {
            var mask = Vector512.Create(exponentMask);
            for (; i <= bits.Length - Vector512<T>.Count; i += Vector512<T>.Count)
            {
                var v = Vector512.Create(bits.Slice(i, Vector512<T>.Count)) & mask;
                if (Vector512.EqualsAny(v, mask))
                {
                    break;
                }
            }
        }
        for (; i < bits.Length; i++)
        {
            if ((bits[i] & exponentMask) == exponentMask)
            {
                return i;
            }
        }
        return -1;
    }

    /// <summary>fp32 → bf16 with round-to-nearest-even; NaN is kept (quieted).</summary>
    public static void FloatToBf16(ReadOnlySpan<float> src, Span<ushort> dst)
    {
        if (dst.Length != src.Length)
        {
            throw new ArgumentException("source and destination lengths differ", nameof(dst));
        }
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var bias = Vector512.Create(0x7FFFu);
            var one = Vector512.Create(1u);
            var quiet = Vector512.Create(0x40u);
            ref float s = ref MemoryMarshal.GetReference(src);
            ref ushort d = ref MemoryMarshal.GetReference(dst);
            for (; i <= src.Length - 32; i += 32)
            {
                var f0 = Vector512.LoadUnsafe(ref s, (nuint)i);
                var f1 = Vector512.LoadUnsafe(ref s, (nuint)(i + 16));
                var r0 = RoundToBf16(f0, bias, one, quiet);
                var r1 = RoundToBf16(f1, bias, one, quiet);
                Vector512.Narrow(r0, r1).StoreUnsafe(ref d, (nuint)i);
            }
        }
        for (; i < src.Length; i++)
        {
            dst[i] = FloatToBf16(src[i]);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> RoundToBf16(Vector512<float> f, Vector512<uint> bias, Vector512<uint> one, Vector512<uint> quiet)
    {
        var b = f.AsUInt32();
        var rounded = (b + bias + ((b >> 16) & one)) >> 16;
        var nan = (b >> 16) | quiet;
        return Vector512.ConditionalSelect(Vector512.Equals(f, f).AsUInt32(), rounded, nan);
    }

    /// <summary>One fp32 → bf16 (round to nearest even; NaN quieted).</summary>
    public static ushort FloatToBf16(float value)
    {
        uint b = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value))
        {
            return (ushort)((b >> 16) | 0x40);
        }
        return (ushort)((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16);
    }

    /// <summary>bf16 → fp32 (exact).</summary>
    public static void Bf16ToFloat(ReadOnlySpan<ushort> src, Span<float> dst)
    {
        if (dst.Length != src.Length)
        {
            throw new ArgumentException("source and destination lengths differ", nameof(dst));
        }
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            ref ushort s = ref MemoryMarshal.GetReference(src);
            ref float d = ref MemoryMarshal.GetReference(dst);
            for (; i <= src.Length - 32; i += 32)
            {
                var (lo, hi) = Vector512.Widen(Vector512.LoadUnsafe(ref s, (nuint)i));
                (lo << 16).AsSingle().StoreUnsafe(ref d, (nuint)i);
                (hi << 16).AsSingle().StoreUnsafe(ref d, (nuint)(i + 16));
            }
        }
        for (; i < src.Length; i++)
        {
            dst[i] = BitConverter.UInt32BitsToSingle((uint)src[i] << 16);
        }
    }
}
