using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using Distributed.Kernels;
using Distributed.Protocol.Grpc;

namespace Distributed.Protocol.Wire;

/// <summary>
/// Converts fp32 token rows to and from their wire form. bf16 = the upper 16 bits of the fp32 value after rounding to
/// nearest even (NaN stays NaN, quieted); fp32 = the IEEE bits unchanged (so fp32 mode is lossless); fp8_e4m3 (requests
/// only) = per row its fp32 scale then one E4M3 code per element, the row quantized per token as DeepEP and vLLM do
/// (<c>s = max(max|x| / 448, 1/(448·512))</c>, <c>q = e4m3_rne(clamp(x / s, −448, 448))</c>; decoded as <c>q · s</c>).
/// Little-endian.
/// </summary>
public static partial class WireCodec
{
    /// <summary>Bytes per scale at the start of an FP8 row.</summary>
    public const int Fp8ScaleBytes = Fp8E4M3Codec.RowScaleBytes;

    /// <summary>Bytes per element of <paramref name="dtype"/> (FP8 rows also carry a 4-byte scale: <see cref="RowBytes"/>).</summary>
    /// <exception cref="ArgumentOutOfRangeException">Not BF16, FP32 or FP8_E4M3.</exception>
    public static int ElementSize(WireDType dtype) => dtype switch
    {
        WireDType.Bf16 => 2,
        WireDType.Fp32 => 4,
        WireDType.Fp8E4M3 => 1,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "wire dtype must be BF16, FP32 or FP8_E4M3"),
    };

    /// <summary>True for the dtypes a request payload may use (BF16, FP32, FP8_E4M3).</summary>
    public static bool IsDefined(WireDType dtype) => dtype is WireDType.Bf16 or WireDType.Fp32 or WireDType.Fp8E4M3;

    /// <summary>True for the dtypes a reply (combine) may use: BF16 and FP32.</summary>
    public static bool IsReplyDType(WireDType dtype) => dtype is WireDType.Bf16 or WireDType.Fp32;

    /// <summary>The dtype of the reply to <paramref name="request"/>: its <c>reply_dtype</c>, or its <c>dtype</c> when unspecified.</summary>
    public static WireDType ReplyDType(ExpertRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        return request.ReplyDtype == WireDType.Unspecified ? request.Dtype : request.ReplyDtype;
    }

    /// <summary>Bytes of one row of <paramref name="hidden"/> elements (FP8: plus its scale).</summary>
    /// <exception cref="OverflowException">The size overflows.</exception>
    public static long RowBytes(long hidden, WireDType dtype) =>
        dtype == WireDType.Fp8E4M3 ? checked(hidden + Fp8ScaleBytes) : checked(hidden * ElementSize(dtype));

    /// <summary>Bytes of <paramref name="rows"/> rows of <paramref name="hidden"/> elements, or -1 on overflow past <see cref="int.MaxValue"/>.</summary>
    public static long PayloadBytes(long rows, long hidden, WireDType dtype)
    {
        try
        {
            long bytes = checked(rows * RowBytes(hidden, dtype));
            return bytes > int.MaxValue ? -1 : bytes;
        }
        catch (OverflowException)
        {
            return -1;
        }
    }

    /// <summary>
    /// Writes rows of <paramref name="hidden"/> floats (<paramref name="src"/>: <c>[rows, hidden]</c>) into
    /// <paramref name="dst"/> (exactly <see cref="PayloadBytes"/>), in any dtype.
    /// </summary>
    public static void EncodeRows(ReadOnlySpan<float> src, int hidden, WireDType dtype, Span<byte> dst)
    {
        if (dtype != WireDType.Fp8E4M3)
        {
            Encode(src, dtype, dst);
            return;
        }
        int rows = CheckRows(src.Length, hidden);
        int rowBytes = hidden + Fp8ScaleBytes;
        if (dst.Length != (long)rows * rowBytes)
        {
            throw new ArgumentException($"destination holds {dst.Length} bytes, {(long)rows * rowBytes} needed", nameof(dst));
        }
        for (int r = 0; r < rows; r++)
        {
            var row = dst.Slice(r * rowBytes, rowBytes);
            float scale = Fp8E4M3Codec.QuantizeRow(src.Slice(r * hidden, hidden), row[Fp8ScaleBytes..]);
            BinaryPrimitives.WriteSingleLittleEndian(row, scale);
        }
    }

    /// <summary>Decodes rows of <paramref name="hidden"/> elements from <paramref name="src"/> into <paramref name="dst"/> (<c>[rows, hidden]</c>).</summary>
    public static void DecodeRows(ReadOnlySpan<byte> src, int hidden, WireDType dtype, Span<float> dst)
    {
        if (dtype != WireDType.Fp8E4M3)
        {
            Decode(src, dtype, dst);
            return;
        }
        int rows = CheckRows(dst.Length, hidden);
        int rowBytes = hidden + Fp8ScaleBytes;
        if (src.Length != (long)rows * rowBytes)
        {
            throw new ArgumentException($"source holds {src.Length} bytes, {(long)rows * rowBytes} needed for {rows} FP8 rows", nameof(src));
        }
        var values = Fp8E4M3Codec.Values;
        for (int r = 0; r < rows; r++)
        {
            var row = src.Slice(r * rowBytes, rowBytes);
            float scale = BinaryPrimitives.ReadSingleLittleEndian(row);
            var codes = row[Fp8ScaleBytes..];
            var d = dst.Slice(r * hidden, hidden);
            for (int i = 0; i < codes.Length; i++)
            {
                d[i] = values[codes[i]] * scale;
            }
        }
    }

    /// <summary>
    /// The first row of <paramref name="payload"/> that cannot be used, or -1: a NaN or ±Inf element (BF16, FP32), or
    /// for FP8 a scale that is not finite and positive or a NaN code (<c>0x7F</c>/<c>0xFF</c>); <paramref name="why"/>
    /// says which.
    /// </summary>
    public static int FirstInvalidRow(ReadOnlySpan<byte> payload, WireDType dtype, int hidden, out string why)
    {
        if (dtype != WireDType.Fp8E4M3)
        {
            why = "holds NaN or Inf";
            return FirstNonFiniteRow(payload, dtype, hidden);
        }
        int rowBytes = hidden + Fp8ScaleBytes;
        for (int r = 0; hidden > 0 && (long)(r + 1) * rowBytes <= payload.Length; r++)
        {
            var row = payload.Slice(r * rowBytes, rowBytes);
            float scale = BinaryPrimitives.ReadSingleLittleEndian(row);
            if (!(scale > 0f) || !float.IsFinite(scale))
            {
                why = $"has scale {scale.ToString(System.Globalization.CultureInfo.InvariantCulture)}, not finite and positive";
                return r;
            }
            int nan = row[Fp8ScaleBytes..].IndexOfAny((byte)0x7F, (byte)0xFF);
            if (nan >= 0)
            {
                why = $"holds the NaN code 0x{row[Fp8ScaleBytes + nan]:X2} at element {nan}";
                return r;
            }
        }
        why = "";
        return -1;
    }

    private static int CheckRows(int elements, int hidden)
    {
        if (hidden <= 0 || elements % hidden != 0)
        {
            throw new ArgumentException($"{elements} elements are not whole rows of {hidden}", nameof(hidden));
        }
        return elements / hidden;
    }

    /// <summary>Writes <paramref name="src"/> into <paramref name="dst"/> (exactly <c>src.Length × ElementSize</c> bytes); BF16 or FP32 (FP8 rows: <see cref="EncodeRows"/>).</summary>
    public static void Encode(ReadOnlySpan<float> src, WireDType dtype, Span<byte> dst)
    {
        RequireElementwise(dtype);
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
        => DecodeFinite(src, dtype, hidden, dst, out badRow, out _);

    /// <summary>
    /// <see cref="TryDecodeFinite(ReadOnlySpan{byte}, WireDType, int, Span{float}, out int)"/>, with
    /// <paramref name="why"/> saying what is wrong with the bad row (as <see cref="FirstInvalidRow"/> words it). FP8 rows
    /// are decoded with their scale read once; a scale that is not finite and positive, a NaN code, or a product
    /// <c>code · scale</c> that overflows to ±Inf makes the row bad.
    /// </summary>
    public static bool TryDecodeFinite(ReadOnlySpan<byte> src, WireDType dtype, int hidden, Span<float> dst, out int badRow, out string why)
        => DecodeFinite(src, dtype, hidden, dst, out badRow, out why);

    /// <summary>Decodes <paramref name="src"/> into <paramref name="dst"/> (exactly <c>dst.Length × ElementSize</c> bytes); BF16 or FP32 (FP8 rows: <see cref="DecodeRows"/>).</summary>
    public static void Decode(ReadOnlySpan<byte> src, WireDType dtype, Span<float> dst)
    {
        RequireElementwise(dtype);
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

    private static void RequireElementwise(WireDType dtype)
    {
        if (dtype == WireDType.Fp8E4M3)
        {
            throw new ArgumentException("FP8_E4M3 rows carry a scale each: use EncodeRows / DecodeRows with the row width", nameof(dtype));
        }
    }

    /// <summary>Index of the first row of <paramref name="payload"/> holding NaN or ±Inf, or -1 (BF16, FP32).</summary>
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
