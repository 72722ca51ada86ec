using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Distributed.Kernels.Cpu;

/// <summary>Compile-time row count of a microkernel (the JIT specializes each struct and drops unused rows).</summary>
internal interface IRowCount
{
    static abstract int Rows { get; }
}

internal readonly struct Rows1 : IRowCount { public static int Rows => 1; }
internal readonly struct Rows2 : IRowCount { public static int Rows => 2; }
internal readonly struct Rows3 : IRowCount { public static int Rows => 3; }
internal readonly struct Rows4 : IRowCount { public static int Rows => 4; }
internal readonly struct Rows5 : IRowCount { public static int Rows => 5; }
internal readonly struct Rows6 : IRowCount { public static int Rows => 6; }
internal readonly struct Rows7 : IRowCount { public static int Rows => 7; }
internal readonly struct Rows8 : IRowCount { public static int Rows => 8; }

/// <summary>
/// Microkernels of <c>y = x · W</c> over <see cref="PackedWeight"/> panels. Every output element is
/// <c>acc = fma(x[r, k], W[k, c], acc)</c> for k = 0..K-1 in order, starting from +0, in one fp32 lane; the row
/// blocking (8, 4, 1 rows, 1 or 4 panels) changes only which registers hold the accumulators, never the arithmetic,
/// so a row's result is bitwise independent of the other rows of the call (batch invariance) and of the thread split.
/// </summary>
internal static unsafe class MatMulKernels
{
    /// <summary>
    /// Computes columns of panels <c>[p0, p1)</c> for <paramref name="rows"/> rows: <c>x</c> is <c>[rows, K]</c> with row
    /// stride <paramref name="ldx"/>, <c>y</c> is the full output (column 0 of panel 0 at <paramref name="y"/>) with row
    /// stride <paramref name="ldy"/>.
    /// </summary>
    /// <remarks>For <see cref="PanelLayout.Bf16Pairs"/> weights, x is the bf16 pair image of the input
    /// (<see cref="Bf16DotKernels.ToPairs"/>) and <paramref name="ldx"/> its row stride in uints.</remarks>
    public static void Compute(SimdLevel simd, float* x, nint ldx, int rows, PackedWeight w, int p0, int p1, float* y, nint ldy)
    {
        if (w.Layout == PanelLayout.Bf16Pairs)
        {
            Bf16DotKernels.Compute((uint*)x, ldx, rows, w, p0, p1, y, ldy);
            return;
        }
        switch (simd)
        {
            case SimdLevel.Vector512:
                Compute512(x, ldx, rows, w, p0, p1, y, ldy);
                break;
            case SimdLevel.Vector256:
                Compute256(x, ldx, rows, w, p0, p1, y, ldy);
                break;
            default:
                ComputeScalar(x, ldx, rows, w, p0, p1, y, ldy);
                break;
        }
    }

    /// <summary>
    /// Software prefetch distance of the four-panel T=1 kernel, in 64-byte lines per stream: 4 × 32 lines in flight
    /// cover ~100 ns of DRAM latency at ~40 GB/s.
    /// </summary>
    private const int PrefetchLines = 32;

    /// <summary>The same for the one-panel kernels, which have a single weight stream.</summary>
    private const int SinglePanelPrefetchLines = 128;

    /// <summary>Kernels with at most this many rows prefetch their weight stream (more rows are compute-bound).</summary>
    private const int Prefetching = 8;

    /// <summary>k-block length for multi-row-block calls: 256 lines of a panel = 16 KiB.</summary>
    private const int KBlock = 256;

    private static int PanelWidthOf(PackedWeight w, int p) => Math.Min(PackedWeight.PanelWidth, w.OutFeatures - (p * PackedWeight.PanelWidth));

    private static void Compute512(float* x, nint ldx, int rows, PackedWeight w, int p0, int p1, float* y, nint ldy)
    {
        int k = w.InFeatures;
        float* tile = stackalloc float[8 * PackedWeight.PanelWidth];
        if (rows == 1)
        {
            int p = p0;
            // Four panels at once give 8 independent FMA chains: a single panel is FMA-latency bound at T=1.
            for (; p + 4 <= p1 && PanelWidthOf(w, p + 3) == PackedWeight.PanelWidth; p += 4)
            {
                Kernel512x4(x, w.Panel(p), (nint)k * PackedWeight.LineUints, k, y + (p * PackedWeight.PanelWidth));
            }
            for (; p < p1; p++)
            {
                int width = PanelWidthOf(w, p);
                float* yp = y + (p * PackedWeight.PanelWidth);
                if (width == PackedWeight.PanelWidth)
                {
                    Kernel512<Rows1>(x, ldx, w.Panel(p), k, yp, ldy, false);
                }
                else
                {
                    Kernel512<Rows1>(x, ldx, w.Panel(p), k, tile, PackedWeight.PanelWidth, false);
                    CopyTile(tile, 1, yp, ldy, width);
                }
            }
            return;
        }
        int fullEnd = p1 > p0 && PanelWidthOf(w, p1 - 1) < PackedWeight.PanelWidth ? p1 - 1 : p1;
        // More than one 8-row block: block k so that a panel's 16 KiB k-slice is reused from L1 by every row block
        // and the rows' k-slice (≤ 128 KiB) stays in L2 across panels. Partial sums go through y as fp32 and come back
        // bit-exact, so the per-element FMA sequence is the same as unblocked.
        int kBlock = rows > 8 ? KBlock : k;
        for (int k0 = 0; k0 < k; k0 += kBlock)
        {
            int kn = Math.Min(kBlock, k - k0);
            for (int p = p0; p < fullEnd; p++)
            {
                uint* panel = w.Panel(p) + ((nint)k0 * PackedWeight.LineUints);
                float* yp = y + (p * PackedWeight.PanelWidth);
                // The next panel's k-slice (16 KiB, a fresh stream from DRAM when the weights exceed L3) is prefetched
                // in pieces while this one runs, so its first row block does not stall on every line.
                uint* nextSlice = p + 1 < fullEnd ? w.Panel(p + 1) + ((nint)k0 * PackedWeight.LineUints)
                    : k0 + kBlock < k ? w.Panel(p0) + ((nint)(k0 + kBlock) * PackedWeight.LineUints) : null;
                int nextLines = p + 1 < fullEnd ? kn : Math.Min(kBlock, k - k0 - kBlock);
                int blocks = (rows + 7) >> 3;
                int linesPerBlock = (nextLines + blocks - 1) / blocks;
                for (int r = 0, block = 0; r < rows; r += 8, block++)
                {
                    if (nextSlice != null && Sse.IsSupported)
                    {
                        int l0 = block * linesPerBlock;
                        int l1 = Math.Min(nextLines, l0 + linesPerBlock);
                        for (int l = l0; l < l1; l++)
                        {
                            Sse.Prefetch0(nextSlice + ((nint)l * PackedWeight.LineUints));
                        }
                    }
                    if (p == p0 && k0 + kBlock < k && Sse.IsSupported)
                    {
                        // This row block's x for the next k block, into L2: x of a tall batch (2.5 MiB at 128 × 5120)
                        // is evicted from L3 by the weight stream and would otherwise come back by demand misses.
                        int nextK = Math.Min(kBlock, k - k0 - kBlock);
                        for (int rr = r; rr < Math.Min(rows, r + 8); rr++)
                        {
                            byte* xr = (byte*)(x + (rr * ldx) + k0 + kBlock);
                            for (nint off = 0; off < (nint)nextK * sizeof(float); off += 64)
                            {
                                Sse.Prefetch1(xr + off);
                            }
                        }
                    }
                    Rows512(x + (r * ldx) + k0, ldx, Math.Min(8, rows - r), panel, kn, yp + (r * ldy), ldy, k0 > 0);
                }
            }
        }
        if (fullEnd < p1)
        {
            int width = PanelWidthOf(w, fullEnd);
            float* yp = y + (fullEnd * PackedWeight.PanelWidth);
            for (int r = 0; r < rows; r += 8)
            {
                int n = Math.Min(8, rows - r);
                Rows512(x + (r * ldx), ldx, n, w.Panel(fullEnd), k, tile, PackedWeight.PanelWidth, false);
                CopyTile(tile, n, yp + (r * ldy), ldy, width);
            }
        }
    }

    private static void Rows512(float* x, nint ldx, int rows, uint* panel, int k, float* y, nint ldy, bool accumulate)
    {
        switch (rows)
        {
            case 1: Kernel512<Rows1>(x, ldx, panel, k, y, ldy, accumulate); break;
            case 2: Kernel512<Rows2>(x, ldx, panel, k, y, ldy, accumulate); break;
            case 3: Kernel512<Rows3>(x, ldx, panel, k, y, ldy, accumulate); break;
            case 4: Kernel512<Rows4>(x, ldx, panel, k, y, ldy, accumulate); break;
            case 5: Kernel512<Rows5>(x, ldx, panel, k, y, ldy, accumulate); break;
            case 6: Kernel512<Rows6>(x, ldx, panel, k, y, ldy, accumulate); break;
            case 7: Kernel512<Rows7>(x, ldx, panel, k, y, ldy, accumulate); break;
            default: Kernel512<Rows8>(x, ldx, panel, k, y, ldy, accumulate); break;
        }
    }

    private static void Compute256(float* x, nint ldx, int rows, PackedWeight w, int p0, int p1, float* y, nint ldy)
    {
        int k = w.InFeatures;
        float* tile = stackalloc float[4 * PackedWeight.PanelWidth];
        for (int p = p0; p < p1; p++)
        {
            uint* panel = w.Panel(p);
            int width = PanelWidthOf(w, p);
            float* yp = y + (p * PackedWeight.PanelWidth);
            for (int r = 0; r < rows; r += 4)
            {
                int n = Math.Min(4, rows - r);
                if (width == PackedWeight.PanelWidth)
                {
                    Rows256(x + (r * ldx), ldx, n, panel, k, yp + (r * ldy), ldy);
                }
                else
                {
                    Rows256(x + (r * ldx), ldx, n, panel, k, tile, PackedWeight.PanelWidth);
                    CopyTile(tile, n, yp + (r * ldy), ldy, width);
                }
            }
        }
    }

    private static void Rows256(float* x, nint ldx, int rows, uint* panel, int k, float* y, nint ldy)
    {
        switch (rows)
        {
            case 1: Kernel256<Rows1>(x, ldx, panel, k, y, ldy); break;
            case 2: Kernel256<Rows2>(x, ldx, panel, k, y, ldy); break;
            case 3: Kernel256<Rows3>(x, ldx, panel, k, y, ldy); break;
            default: Kernel256<Rows4>(x, ldx, panel, k, y, ldy); break;
        }
    }

    private static void ComputeScalar(float* x, nint ldx, int rows, PackedWeight w, int p0, int p1, float* y, nint ldy)
    {
        int k = w.InFeatures;
        float* acc = stackalloc float[PackedWeight.PanelWidth];
        for (int p = p0; p < p1; p++)
        {
            uint* panel = w.Panel(p);
            int width = PanelWidthOf(w, p);
            for (int r = 0; r < rows; r++)
            {
                float* xr = x + (r * ldx);
                new Span<float>(acc, PackedWeight.PanelWidth).Clear();
                uint* line = panel;
                for (int kk = 0; kk < k; kk++, line += PackedWeight.LineUints)
                {
                    float xv = xr[kk];
                    for (int j = 0; j < PackedWeight.LineUints; j++)
                    {
                        uint bits = line[j];
                        acc[j] = MathF.FusedMultiplyAdd(xv, BitConverter.UInt32BitsToSingle(bits << 16), acc[j]);
                        acc[j + 16] = MathF.FusedMultiplyAdd(xv, BitConverter.UInt32BitsToSingle(bits & 0xFFFF0000u), acc[j + 16]);
                    }
                }
                float* yr = y + (r * ldy) + (p * PackedWeight.PanelWidth);
                for (int j = 0; j < width; j++)
                {
                    yr[j] = acc[j];
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(float* y, Vector512<float> lo, Vector512<float> hi)
    {
        lo.Store(y);
        hi.Store(y + 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store(float* y, Vector256<float> a, Vector256<float> b, Vector256<float> c, Vector256<float> d)
    {
        a.Store(y);
        b.Store(y + 8);
        c.Store(y + 16);
        d.Store(y + 24);
    }

    /// <summary>Copies a <c>rows × 32</c> tile into y, keeping only the first <paramref name="width"/> columns.</summary>
    private static void CopyTile(float* tile, int rows, float* y, nint ldy, int width)
    {
        for (int r = 0; r < rows; r++)
        {
            for (int j = 0; j < width; j++)
            {
                y[(r * ldy) + j] = tile[(r * PackedWeight.PanelWidth) + j];
            }
        }
    }

    /// <summary>
    /// Up to 8 rows × one panel: 16 zmm accumulators, one 64-byte weight line per k. With
    /// <paramref name="accumulate"/>, the accumulators start from y (a previous k block) instead of +0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel512<TR>(float* x, nint ldx, uint* w, int k, float* y, nint ldy, bool accumulate)
        where TR : struct, IRowCount
    {
        Vector512<uint> mask = Vector512.Create(0xFFFF0000u);
        Vector512<float> a0l = default, a0h = default;
        Vector512<float> a1l = default, a1h = default;
        Vector512<float> a2l = default, a2h = default;
        Vector512<float> a3l = default, a3h = default;
        Vector512<float> a4l = default, a4h = default;
        Vector512<float> a5l = default, a5h = default;
        Vector512<float> a6l = default, a6h = default;
        Vector512<float> a7l = default, a7h = default;
        if (accumulate)
        {
            a0l = Vector512.Load(y);
            a0h = Vector512.Load(y + 16);
            if (TR.Rows > 1)
            {
                a1l = Vector512.Load(y + (1 * ldy));
                a1h = Vector512.Load(y + (1 * ldy) + 16);
            }
            if (TR.Rows > 2)
            {
                a2l = Vector512.Load(y + (2 * ldy));
                a2h = Vector512.Load(y + (2 * ldy) + 16);
            }
            if (TR.Rows > 3)
            {
                a3l = Vector512.Load(y + (3 * ldy));
                a3h = Vector512.Load(y + (3 * ldy) + 16);
            }
            if (TR.Rows > 4)
            {
                a4l = Vector512.Load(y + (4 * ldy));
                a4h = Vector512.Load(y + (4 * ldy) + 16);
            }
            if (TR.Rows > 5)
            {
                a5l = Vector512.Load(y + (5 * ldy));
                a5h = Vector512.Load(y + (5 * ldy) + 16);
            }
            if (TR.Rows > 6)
            {
                a6l = Vector512.Load(y + (6 * ldy));
                a6h = Vector512.Load(y + (6 * ldy) + 16);
            }
            if (TR.Rows > 7)
            {
                a7l = Vector512.Load(y + (7 * ldy));
                a7h = Vector512.Load(y + (7 * ldy) + 16);
            }
        }
        float* x0 = x + (0 * ldx);
        float* x1 = x + (1 * ldx);
        float* x2 = x + (2 * ldx);
        float* x3 = x + (3 * ldx);
        float* x4 = x + (4 * ldx);
        float* x5 = x + (5 * ldx);
        float* x6 = x + (6 * ldx);
        float* x7 = x + (7 * ldx);
        for (nint kk = 0; kk < k; kk++)
        {
            if (Sse.IsSupported && TR.Rows <= Prefetching)
            {
                Sse.Prefetch0(w + ((kk + SinglePanelPrefetchLines) * PackedWeight.LineUints));
            }
            Vector512<uint> raw = Vector512.Load(w + (kk * PackedWeight.LineUints));
            Vector512<float> lo = (raw << 16).AsSingle();
            Vector512<float> hi = (raw & mask).AsSingle();
            Vector512<float> b = Vector512.Create(x0[kk]);
            a0l = Vector512.FusedMultiplyAdd(b, lo, a0l);
            a0h = Vector512.FusedMultiplyAdd(b, hi, a0h);
            if (TR.Rows > 1)
            {
                b = Vector512.Create(x1[kk]);
                a1l = Vector512.FusedMultiplyAdd(b, lo, a1l);
                a1h = Vector512.FusedMultiplyAdd(b, hi, a1h);
            }
            if (TR.Rows > 2)
            {
                b = Vector512.Create(x2[kk]);
                a2l = Vector512.FusedMultiplyAdd(b, lo, a2l);
                a2h = Vector512.FusedMultiplyAdd(b, hi, a2h);
            }
            if (TR.Rows > 3)
            {
                b = Vector512.Create(x3[kk]);
                a3l = Vector512.FusedMultiplyAdd(b, lo, a3l);
                a3h = Vector512.FusedMultiplyAdd(b, hi, a3h);
            }
            if (TR.Rows > 4)
            {
                b = Vector512.Create(x4[kk]);
                a4l = Vector512.FusedMultiplyAdd(b, lo, a4l);
                a4h = Vector512.FusedMultiplyAdd(b, hi, a4h);
            }
            if (TR.Rows > 5)
            {
                b = Vector512.Create(x5[kk]);
                a5l = Vector512.FusedMultiplyAdd(b, lo, a5l);
                a5h = Vector512.FusedMultiplyAdd(b, hi, a5h);
            }
            if (TR.Rows > 6)
            {
                b = Vector512.Create(x6[kk]);
                a6l = Vector512.FusedMultiplyAdd(b, lo, a6l);
                a6h = Vector512.FusedMultiplyAdd(b, hi, a6h);
            }
            if (TR.Rows > 7)
            {
                b = Vector512.Create(x7[kk]);
                a7l = Vector512.FusedMultiplyAdd(b, lo, a7l);
                a7h = Vector512.FusedMultiplyAdd(b, hi, a7h);
            }
        }
        Store(y, a0l, a0h);
        if (TR.Rows > 1)
        {
            Store(y + (1 * ldy), a1l, a1h);
        }
        if (TR.Rows > 2)
        {
            Store(y + (2 * ldy), a2l, a2h);
        }
        if (TR.Rows > 3)
        {
            Store(y + (3 * ldy), a3l, a3h);
        }
        if (TR.Rows > 4)
        {
            Store(y + (4 * ldy), a4l, a4h);
        }
        if (TR.Rows > 5)
        {
            Store(y + (5 * ldy), a5l, a5h);
        }
        if (TR.Rows > 6)
        {
            Store(y + (6 * ldy), a6l, a6h);
        }
        if (TR.Rows > 7)
        {
            Store(y + (7 * ldy), a7l, a7h);
        }
    }

    /// <summary>One row × four full panels (T=1 decode): 8 independent accumulator chains, four weight streams.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel512x4(float* x, uint* w, nint panelStride, int k, float* y)
    {
        Vector512<uint> mask = Vector512.Create(0xFFFF0000u);
        Vector512<float> a0l = default, a0h = default, a1l = default, a1h = default;
        Vector512<float> a2l = default, a2h = default, a3l = default, a3h = default;
        uint* w0 = w;
        uint* w1 = w + panelStride;
        uint* w2 = w + (2 * panelStride);
        uint* w3 = w + (3 * panelStride);
        for (nint kk = 0; kk < k; kk++)
        {
            nint off = kk * PackedWeight.LineUints;
            nint ahead = off + (PrefetchLines * PackedWeight.LineUints);
            if (Sse.IsSupported)
            {
                Sse.Prefetch0(w0 + ahead);
                Sse.Prefetch0(w1 + ahead);
                Sse.Prefetch0(w2 + ahead);
                Sse.Prefetch0(w3 + ahead);
            }
            Vector512<float> b = Vector512.Create(x[kk]);
            Vector512<uint> r0 = Vector512.Load(w0 + off);
            Vector512<uint> r1 = Vector512.Load(w1 + off);
            Vector512<uint> r2 = Vector512.Load(w2 + off);
            Vector512<uint> r3 = Vector512.Load(w3 + off);
            a0l = Vector512.FusedMultiplyAdd(b, (r0 << 16).AsSingle(), a0l);
            a0h = Vector512.FusedMultiplyAdd(b, (r0 & mask).AsSingle(), a0h);
            a1l = Vector512.FusedMultiplyAdd(b, (r1 << 16).AsSingle(), a1l);
            a1h = Vector512.FusedMultiplyAdd(b, (r1 & mask).AsSingle(), a1h);
            a2l = Vector512.FusedMultiplyAdd(b, (r2 << 16).AsSingle(), a2l);
            a2h = Vector512.FusedMultiplyAdd(b, (r2 & mask).AsSingle(), a2h);
            a3l = Vector512.FusedMultiplyAdd(b, (r3 << 16).AsSingle(), a3l);
            a3h = Vector512.FusedMultiplyAdd(b, (r3 & mask).AsSingle(), a3h);
        }
        a0l.Store(y);
        a0h.Store(y + 16);
        a1l.Store(y + 32);
        a1h.Store(y + 48);
        a2l.Store(y + 64);
        a2h.Store(y + 80);
        a3l.Store(y + 96);
        a3h.Store(y + 112);
    }

    /// <summary>Up to 4 rows × one panel with 256-bit vectors: lanes 0-7 and 8-15 of a line are two loads.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel256<TR>(float* x, nint ldx, uint* w, int k, float* y, nint ldy)
        where TR : struct, IRowCount
    {
        Vector256<uint> mask = Vector256.Create(0xFFFF0000u);
        Vector256<float> a0a = default, a0b = default, a0c = default, a0d = default;
        Vector256<float> a1a = default, a1b = default, a1c = default, a1d = default;
        Vector256<float> a2a = default, a2b = default, a2c = default, a2d = default;
        Vector256<float> a3a = default, a3b = default, a3c = default, a3d = default;
        float* x0 = x + (0 * ldx);
        float* x1 = x + (1 * ldx);
        float* x2 = x + (2 * ldx);
        float* x3 = x + (3 * ldx);
        for (nint kk = 0; kk < k; kk++)
        {
            Vector256<uint> rawA = Vector256.Load(w + (kk * PackedWeight.LineUints));
            Vector256<uint> rawB = Vector256.Load(w + (kk * PackedWeight.LineUints) + 8);
            Vector256<float> c0 = (rawA << 16).AsSingle();
            Vector256<float> c8 = (rawB << 16).AsSingle();
            Vector256<float> c16 = (rawA & mask).AsSingle();
            Vector256<float> c24 = (rawB & mask).AsSingle();
            Vector256<float> b = Vector256.Create(x0[kk]);
            a0a = Vector256.FusedMultiplyAdd(b, c0, a0a);
            a0b = Vector256.FusedMultiplyAdd(b, c8, a0b);
            a0c = Vector256.FusedMultiplyAdd(b, c16, a0c);
            a0d = Vector256.FusedMultiplyAdd(b, c24, a0d);
            if (TR.Rows > 1)
            {
                b = Vector256.Create(x1[kk]);
                a1a = Vector256.FusedMultiplyAdd(b, c0, a1a);
                a1b = Vector256.FusedMultiplyAdd(b, c8, a1b);
                a1c = Vector256.FusedMultiplyAdd(b, c16, a1c);
                a1d = Vector256.FusedMultiplyAdd(b, c24, a1d);
            }
            if (TR.Rows > 2)
            {
                b = Vector256.Create(x2[kk]);
                a2a = Vector256.FusedMultiplyAdd(b, c0, a2a);
                a2b = Vector256.FusedMultiplyAdd(b, c8, a2b);
                a2c = Vector256.FusedMultiplyAdd(b, c16, a2c);
                a2d = Vector256.FusedMultiplyAdd(b, c24, a2d);
            }
            if (TR.Rows > 3)
            {
                b = Vector256.Create(x3[kk]);
                a3a = Vector256.FusedMultiplyAdd(b, c0, a3a);
                a3b = Vector256.FusedMultiplyAdd(b, c8, a3b);
                a3c = Vector256.FusedMultiplyAdd(b, c16, a3c);
                a3d = Vector256.FusedMultiplyAdd(b, c24, a3d);
            }
        }
        Store(y, a0a, a0b, a0c, a0d);
        if (TR.Rows > 1)
        {
            Store(y + (1 * ldy), a1a, a1b, a1c, a1d);
        }
        if (TR.Rows > 2)
        {
            Store(y + (2 * ldy), a2a, a2b, a2c, a2d);
        }
        if (TR.Rows > 3)
        {
            Store(y + (3 * ldy), a3a, a3b, a3c, a3d);
        }
    }
}
