using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Distributed.Kernels.Cpu;

/// <summary>
/// The k lines of one panel slice as the Vector512 kernels read them: line k as a bf16 "widened" line (dword j holds
/// column j in its low half and column 16 + j in its high half), whatever the stored format. The kernels are generic
/// over the struct, so the JIT compiles one specialization per format with no indirection.
/// </summary>
internal interface ILines512
{
    /// <summary>Line <paramref name="k"/> of the slice.</summary>
    Vector512<uint> Line(nint k);

    /// <summary>Prefetches line <paramref name="k"/> into L1.</summary>
    void Prefetch(nint k);
}

/// <summary>The k lines of one panel slice as the Vector256 kernels read them: columns 0–15 and 16–31 of line k as two
/// 8-column fp32 vectors each.</summary>
internal unsafe interface ILines256
{
    /// <summary>Rows of the Vector256 microkernel for this format (its decode constants need registers too).</summary>
    static abstract int MaxRows { get; }

    /// <summary>Columns 0–7 and 8–15 of line <paramref name="k"/>.</summary>
    void Lo(nint k, out Vector256<float> c0, out Vector256<float> c8);

    /// <summary>Columns 16–23 and 24–31 of line <paramref name="k"/>.</summary>
    void Hi(nint k, out Vector256<float> c16, out Vector256<float> c24);

    /// <summary>Prefetches line <paramref name="k"/> into L1.</summary>
    void Prefetch(nint k);
}

/// <summary>bf16 lines of a <see cref="PanelLayout.Widened"/> panel (64 bytes per k).</summary>
internal readonly unsafe struct Bf16Lines(uint* lines) : ILines512, ILines256, IPanelLines<Bf16Lines>
{
    public static int MaxRows => 6;

    public static int LineBytes => PackedWeight.LineUints * sizeof(uint);

    public static Bf16Lines At(PackedWeight w, int panel, int k0) => new(w.Panel(panel) + ((nint)k0 * PackedWeight.LineUints));

    public static byte* Address(PackedWeight w, int panel, int k) => (byte*)(w.Panel(panel) + ((nint)k * PackedWeight.LineUints));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Vector512<uint> Line(nint k) => Vector512.Load(lines + (k * PackedWeight.LineUints));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Lo(nint k, out Vector256<float> c0, out Vector256<float> c8)
    {
        uint* l = lines + (k * PackedWeight.LineUints);
        c0 = (Vector256.Load(l) << 16).AsSingle();
        c8 = (Vector256.Load(l + 8) << 16).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Hi(nint k, out Vector256<float> c16, out Vector256<float> c24)
    {
        uint* l = lines + (k * PackedWeight.LineUints);
        Vector256<uint> mask = Vector256.Create(0xFFFF0000u);
        c16 = (Vector256.Load(l) & mask).AsSingle();
        c24 = (Vector256.Load(l + 8) & mask).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Prefetch(nint k)
    {
        if (Sse.IsSupported)
        {
            Sse.Prefetch0(lines + (k * PackedWeight.LineUints));
        }
    }
}

/// <summary>
/// E4M3 lines of a <see cref="PanelLayout.Fp8Wide"/> panel (32 bytes per k) decoded in registers to the widened bf16
/// line of the same values (exact: every E4M3 value is a bf16 value). Fast path, 4 operations per 32 codes:
/// sign-extend bytes to words, <c>((w &lt;&lt; 4) &amp; 0x87F0) + 0x3C00</c> (exponent re-biased from 7 to 127, mantissa and sign
/// in place). That is exact for every code whose exponent bits are not 0; lines holding a zero or subnormal code
/// (flagged at packing) also replace those lanes through a 32-entry word table (<c>vpermw</c>) of <c>m · 2^-9</c>.
/// </summary>
internal readonly unsafe struct Fp8Lines512(byte* lines, byte* flags) : ILines512, IPanelLines<Fp8Lines512>
{
    public static int LineBytes => PackedWeight.Fp8LineBytes;

    public static Fp8Lines512 At(PackedWeight w, int panel, int k0) =>
        new(w.Fp8Lines(panel) + ((nint)k0 * PackedWeight.Fp8LineBytes), w.Fp8Flags(panel) + k0);

    public static byte* Address(PackedWeight w, int panel, int k) => w.Fp8Lines(panel) + ((nint)k * PackedWeight.Fp8LineBytes);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Vector512<uint> Line(nint k) => Fp8Decode.Wide(lines + (k * PackedWeight.Fp8LineBytes), flags[k] != 0);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Prefetch(nint k)
    {
        if (Sse.IsSupported)
        {
            Sse.Prefetch0(lines + (k * PackedWeight.Fp8LineBytes));
        }
    }
}

/// <summary>E4M3 lines of a <see cref="PanelLayout.Fp8Narrow"/> panel decoded in registers, half a line at a time.</summary>
internal readonly unsafe struct Fp8Lines256(byte* lines, byte* flags) : ILines256, IPanelLines<Fp8Lines256>
{
    // 4 rows × 16 columns: 8 accumulators, 2 weight vectors, a broadcast and the decode's constants fit 16 ymm.
    public static int MaxRows => 4;

    public static int LineBytes => PackedWeight.Fp8LineBytes;

    public static Fp8Lines256 At(PackedWeight w, int panel, int k0) =>
        new(w.Fp8Lines(panel) + ((nint)k0 * PackedWeight.Fp8LineBytes), w.Fp8Flags(panel) + k0);

    public static byte* Address(PackedWeight w, int panel, int k) => w.Fp8Lines(panel) + ((nint)k * PackedWeight.Fp8LineBytes);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Lo(nint k, out Vector256<float> c0, out Vector256<float> c8)
    {
        Vector256<uint> d = Fp8Decode.Narrow(lines + (k * PackedWeight.Fp8LineBytes), flags[k] != 0);
        c0 = (d << 16).AsSingle();
        c8 = (d & Vector256.Create(0xFFFF0000u)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Hi(nint k, out Vector256<float> c16, out Vector256<float> c24)
    {
        Vector256<uint> d = Fp8Decode.Narrow(lines + (k * PackedWeight.Fp8LineBytes) + 16, flags[k] != 0);
        c16 = (d << 16).AsSingle();
        c24 = (d & Vector256.Create(0xFFFF0000u)).AsSingle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Prefetch(nint k)
    {
        if (Sse.IsSupported)
        {
            Sse.Prefetch0(lines + (k * PackedWeight.Fp8LineBytes));
        }
    }
}

/// <summary>E4M3 → bf16 bits in registers (see <see cref="Fp8Lines512"/>).</summary>
internal static unsafe class Fp8Decode
{
    /// <summary>Whether the Vector512 decode can run (it needs AVX512BW's byte→word and word permutes).</summary>
    public static bool WideSupported => Avx512BW.IsSupported;

    // bf16 bits of m · 2^-9 (the E4M3 subnormals, m = 0..7), checked against Fp8E4M3.ToBf16Bits by the tests. They are
    // constants, not static readonly fields: the AggressiveOptimization kernels are compiled before this class is
    // initialized, so a field read would carry a class-initialization check whose possible helper call makes the JIT
    // keep every vector live across it on the stack (all ymm/zmm registers are caller-saved), spilling the kernels'
    // accumulators on every k.

    /// <summary>The subnormal words in words 0..7 (vpermw indexes with the low 5 bits of the sign-extended code, which
    /// are 00mmm for exactly the lanes that use the table).</summary>
    internal static Vector512<ushort> SubnormalWords
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Vector512.Create(Vector256.Create((ushort)0x0000, 0x3B00, 0x3B80, 0x3BC0, 0x3C00, 0x3C20, 0x3C40, 0x3C60, 0, 0, 0, 0, 0, 0, 0, 0),
            Vector256<ushort>.Zero);
    }

    /// <summary>The same 8 words as 16 bytes (little-endian), repeated in both 128-bit lanes for vpshufb.</summary>
    internal static Vector256<byte> SubnormalBytes
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Vector256.Create((ushort)0x0000, 0x3B00, 0x3B80, 0x3BC0, 0x3C00, 0x3C20, 0x3C40, 0x3C60,
            0x0000, 0x3B00, 0x3B80, 0x3BC0, 0x3C00, 0x3C20, 0x3C40, 0x3C60).AsByte();
    }

    /// <summary>32 codes (Vector512 order) → the widened bf16 line; <paramref name="exceptional"/> = the line's flag.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<uint> Wide(byte* line, bool exceptional)
    {
        Vector512<ushort> u = Avx512BW.ConvertToVector512Int16(Vector256.Load((sbyte*)line)).AsUInt16();
        Vector512<ushort> t = ((u << 4) & Vector512.Create((ushort)0x87F0)) + Vector512.Create((ushort)0x3C00);
        if (exceptional)
        {
            Vector512<ushort> sub = Avx512BW.PermuteVar32x16(SubnormalWords, u) | (u & Vector512.Create((ushort)0x8000));
            t = Vector512.ConditionalSelect(Vector512.Equals(u & Vector512.Create((ushort)0x78), Vector512<ushort>.Zero), sub, t);
        }
        return t.AsUInt32();
    }

    /// <summary>
    /// 16 codes (one half of a Vector256-order line) → 8 dwords holding columns j (low half) and 8 + j (high half).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<uint> Narrow(byte* half, bool exceptional)
    {
        Vector256<ushort> u = Avx2.ConvertToVector256Int16((sbyte*)half).AsUInt16();
        Vector256<ushort> t = ((u << 4) & Vector256.Create((ushort)0x87F0)) + Vector256.Create((ushort)0x3C00);
        if (exceptional)
        {
            // vpshufb byte indices 2m (low byte) and 2m + 1 (high byte) of each word lane.
            Vector256<ushort> m = u & Vector256.Create((ushort)7);
            Vector256<byte> index = ((m << 1) | (m << 9)).AsByte() + Vector256.Create((ushort)0x0100).AsByte();
            Vector256<ushort> sub = Avx2.Shuffle(SubnormalBytes, index).AsUInt16() | (u & Vector256.Create((ushort)0x8000));
            t = Vector256.ConditionalSelect(Vector256.Equals(u & Vector256.Create((ushort)0x78), Vector256<ushort>.Zero), sub, t);
        }
        return t.AsUInt32();
    }
}
