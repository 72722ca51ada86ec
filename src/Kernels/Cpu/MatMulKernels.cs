using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
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

/// <summary>Which half of a 32-column panel a Vector256 microkernel computes (a compile-time choice).</summary>
internal interface IHalf
{
    static abstract bool High { get; }
}

internal readonly struct LowHalf : IHalf { public static bool High => false; }
internal readonly struct HighHalf : IHalf { public static bool High => true; }

/// <summary>Creates the line source of one panel slice (see <see cref="ILines512"/>, <see cref="ILines256"/>).</summary>
internal unsafe interface IPanelLines<TSelf>
    where TSelf : struct, IPanelLines<TSelf>
{
    /// <summary>Bytes per stored k line.</summary>
    static abstract int LineBytes { get; }

    /// <summary>The lines of panel <paramref name="panel"/> from k = <paramref name="k0"/> on.</summary>
    static abstract TSelf At(PackedWeight w, int panel, int k0);

    /// <summary>Address of line <paramref name="k"/> of panel <paramref name="panel"/> (for prefetching a slice).</summary>
    static abstract byte* Address(PackedWeight w, int panel, int k);
}

/// <summary>
/// Microkernels of <c>y = x · W</c> over <see cref="PackedWeight"/> panels. Every output element is
/// <c>acc = fma(x[r, k], W[k, c], acc)</c> for k = 0..K-1 in order, starting from +0, in one fp32 lane; the row
/// blocking (8, 6, 4, 1 rows; whole panels, half panels, 1 or 4 panels), the k blocking (partial sums stored to y as
/// fp32 and reloaded bit-exactly) and the weight format's decode change only which registers hold the accumulators and
/// where W comes from, never the arithmetic, so a row's result is bitwise independent of the other rows of the call
/// (batch invariance), of the thread split and of the SIMD width. FP8 weights decode to exactly their E4M3 values and
/// are then scaled per output column (and, for W8A8, per row) by <see cref="ScaleOutputs"/>.
/// </summary>
internal static unsafe class MatMulKernels
{
    /// <summary>
    /// Computes columns of panels <c>[p0, p1)</c> for <paramref name="rows"/> rows: <c>x</c> is <c>[rows, K]</c> with row
    /// stride <paramref name="ldx"/>, <c>y</c> is the full output (column 0 of panel 0 at <paramref name="y"/>) with row
    /// stride <paramref name="ldy"/>.
    /// </summary>
    /// <remarks>For <see cref="PanelLayout.Bf16Pairs"/> weights, x is the bf16 pair image of the input
    /// (<see cref="Bf16DotKernels.ToPairs"/>) and <paramref name="ldx"/> its row stride in uints. For FP8 weights the
    /// columns are multiplied by the weight's scales afterwards, and by <paramref name="rowScales"/>[r] when given (W8A8:
    /// x then holds the E4M3 values of the per-token quantized input).</remarks>
    public static void Compute(SimdLevel simd, float* x, nint ldx, int rows, PackedWeight w, int p0, int p1, float* y, nint ldy,
        float* rowScales = null)
    {
        switch (w.Layout)
        {
            case PanelLayout.Bf16Pairs:
                Bf16DotKernels.Compute((uint*)x, ldx, rows, w, p0, p1, y, ldy);
                return;
            case PanelLayout.Widened when simd == SimdLevel.Vector512:
                Compute512<Bf16Lines>(x, ldx, rows, w, p0, p1, y, ldy);
                return;
            case PanelLayout.Widened when simd == SimdLevel.Vector256:
                Compute256<Bf16Lines>(x, ldx, rows, w, p0, p1, y, ldy);
                return;
            case PanelLayout.Widened:
                ComputeScalar(x, ldx, rows, w, p0, p1, y, ldy);
                return;
            case PanelLayout.Fp8Wide when simd == SimdLevel.Vector512 && Fp8Decode.WideSupported:
                Compute512<Fp8Lines512>(x, ldx, rows, w, p0, p1, y, ldy);
                break;
            case PanelLayout.Fp8Narrow when simd != SimdLevel.Scalar && Avx2.IsSupported:
                Compute256<Fp8Lines256>(x, ldx, rows, w, p0, p1, y, ldy);
                break;
            default:
                // An FP8 weight packed for another SIMD width, or no vector unit: exact table decode.
                ComputeScalarFp8(x, ldx, rows, w, p0, p1, y, ldy);
                break;
        }
        ScaleOutputs(w, rows, p0, p1, y, ldy, rowScales);
    }

    /// <summary>
    /// FP8 epilogue over panels <c>[p0, p1)</c>: <c>y[r, c] = y[r, c] · scales[c]</c>, then <c>· rowScales[r]</c> when
    /// given; two float32 roundings in that order on every path.
    /// </summary>
    private static void ScaleOutputs(PackedWeight w, int rows, int p0, int p1, float* y, nint ldy, float* rowScales)
    {
        int c0 = p0 * PackedWeight.PanelWidth;
        int c1 = Math.Min(w.OutFeatures, p1 * PackedWeight.PanelWidth);
        float* scales = w.Scales;
        for (int r = 0; r < rows; r++)
        {
            float* yr = y + (r * ldy);
            int c = c0;
            if (Vector256.IsHardwareAccelerated)
            {
                if (rowScales == null)
                {
                    for (; c + 8 <= c1; c += 8)
                    {
                        (Vector256.Load(yr + c) * Vector256.Load(scales + c)).Store(yr + c);
                    }
                }
                else
                {
                    var sx = Vector256.Create(rowScales[r]);
                    for (; c + 8 <= c1; c += 8)
                    {
                        (Vector256.Load(yr + c) * Vector256.Load(scales + c) * sx).Store(yr + c);
                    }
                }
            }
            for (; c < c1; c++)
            {
                float v = yr[c] * scales[c];
                yr[c] = rowScales == null ? v : v * rowScales[r];
            }
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

    /// <summary>k-block length for multi-row-block calls: 256 lines of a panel = 16 KiB of bf16 (8 KiB of FP8).</summary>
    private const int KBlock = 256;

    private static int PanelWidthOf(PackedWeight w, int p) => Math.Min(PackedWeight.PanelWidth, w.OutFeatures - (p * PackedWeight.PanelWidth));

    private static void Compute512<TL>(float* x, nint ldx, int rows, PackedWeight w, int p0, int p1, float* y, nint ldy)
        where TL : struct, ILines512, IPanelLines<TL>
    {
        int k = w.InFeatures;
        float* tile = stackalloc float[8 * PackedWeight.PanelWidth];
        if (rows == 1)
        {
            int p = p0;
            // Four panels at once give 8 independent FMA chains: a single panel is FMA-latency bound at T=1.
            for (; p + 4 <= p1 && PanelWidthOf(w, p + 3) == PackedWeight.PanelWidth; p += 4)
            {
                Kernel512x4(x, TL.At(w, p, 0), TL.At(w, p + 1, 0), TL.At(w, p + 2, 0), TL.At(w, p + 3, 0), k, y + (p * PackedWeight.PanelWidth));
            }
            for (; p < p1; p++)
            {
                int width = PanelWidthOf(w, p);
                float* yp = y + (p * PackedWeight.PanelWidth);
                if (width == PackedWeight.PanelWidth)
                {
                    Kernel512<Rows1, TL>(x, ldx, TL.At(w, p, 0), k, yp, ldy, false);
                }
                else
                {
                    Kernel512<Rows1, TL>(x, ldx, TL.At(w, p, 0), k, tile, PackedWeight.PanelWidth, false);
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
        // A compressed format read by several row blocks is decoded once per k-slice into widened bf16 lines (16 KiB,
        // L1), which every row block then reads like a bf16 panel: the decode is paid once, not once per 8 rows.
        bool decodeSlice = typeof(TL) != typeof(Bf16Lines) && rows > 8;
        uint* decoded = stackalloc uint[decodeSlice ? KBlock * PackedWeight.LineUints : 1];
        int lineBytes = TL.LineBytes;
        for (int k0 = 0; k0 < k; k0 += kBlock)
        {
            int kn = Math.Min(kBlock, k - k0);
            for (int p = p0; p < fullEnd; p++)
            {
                TL lines = TL.At(w, p, k0);
                float* yp = y + (p * PackedWeight.PanelWidth);
                // The next panel's k-slice (a fresh stream from DRAM when the weights exceed L3) is prefetched in
                // pieces while this one runs, so its first row block does not stall on every line.
                byte* nextSlice = p + 1 < fullEnd ? TL.Address(w, p + 1, k0)
                    : k0 + kBlock < k ? TL.Address(w, p0, k0 + kBlock) : null;
                int nextLines = p + 1 < fullEnd ? kn : Math.Min(kBlock, k - k0 - kBlock);
                int blocks = (rows + 7) >> 3;
                int linesPerBlock = (nextLines + blocks - 1) / blocks;
                if (decodeSlice)
                {
                    for (int l = 0; l < kn; l++)
                    {
                        lines.Line(l).Store(decoded + ((nint)l * PackedWeight.LineUints));
                    }
                }
                for (int r = 0, block = 0; r < rows; r += 8, block++)
                {
                    if (nextSlice != null && Sse.IsSupported)
                    {
                        int l0 = block * linesPerBlock;
                        int l1 = Math.Min(nextLines, l0 + linesPerBlock);
                        for (int l = l0; l < l1; l++)
                        {
                            Sse.Prefetch0(nextSlice + ((nint)l * lineBytes));
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
                    int n = Math.Min(8, rows - r);
                    if (decodeSlice)
                    {
                        Rows512(x + (r * ldx) + k0, ldx, n, new Bf16Lines(decoded), kn, yp + (r * ldy), ldy, k0 > 0);
                    }
                    else
                    {
                        Rows512(x + (r * ldx) + k0, ldx, n, lines, kn, yp + (r * ldy), ldy, k0 > 0);
                    }
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
                Rows512(x + (r * ldx), ldx, n, TL.At(w, fullEnd, 0), k, tile, PackedWeight.PanelWidth, false);
                CopyTile(tile, n, yp + (r * ldy), ldy, width);
            }
        }
    }

    private static void Rows512<TL>(float* x, nint ldx, int rows, TL lines, int k, float* y, nint ldy, bool accumulate)
        where TL : struct, ILines512
    {
        switch (rows)
        {
            case 1: Kernel512<Rows1, TL>(x, ldx, lines, k, y, ldy, accumulate); break;
            case 2: Kernel512<Rows2, TL>(x, ldx, lines, k, y, ldy, accumulate); break;
            case 3: Kernel512<Rows3, TL>(x, ldx, lines, k, y, ldy, accumulate); break;
            case 4: Kernel512<Rows4, TL>(x, ldx, lines, k, y, ldy, accumulate); break;
            case 5: Kernel512<Rows5, TL>(x, ldx, lines, k, y, ldy, accumulate); break;
            case 6: Kernel512<Rows6, TL>(x, ldx, lines, k, y, ldy, accumulate); break;
            case 7: Kernel512<Rows7, TL>(x, ldx, lines, k, y, ldy, accumulate); break;
            default: Kernel512<Rows8, TL>(x, ldx, lines, k, y, ldy, accumulate); break;
        }
    }

    /// <summary>
    /// The Vector256 path: half panels (16 columns) × up to <see cref="ILines256.MaxRows"/> rows per microkernel, so the
    /// accumulators, the two weight vectors and the broadcast fit the 16 ymm registers (6 × 16 for bf16: 12
    /// accumulators; a whole 32-column panel would leave room for only 2 rows). With several row blocks k is blocked
    /// as on the Vector512 path: a panel's k-slice is read from L1 by every row block and both halves.
    /// </summary>
    private static void Compute256<TL>(float* x, nint ldx, int rows, PackedWeight w, int p0, int p1, float* y, nint ldy)
        where TL : struct, ILines256, IPanelLines<TL>
    {
        int k = w.InFeatures;
        int maxRows = TL.MaxRows;
        float* tile = stackalloc float[6 * 16];
        if (rows == 1)
        {
            float* row = stackalloc float[PackedWeight.PanelWidth];
            for (int p = p0; p < p1; p++)
            {
                int width = PanelWidthOf(w, p);
                float* yp = y + (p * PackedWeight.PanelWidth);
                Kernel256x1(x, TL.At(w, p, 0), k, width == PackedWeight.PanelWidth ? yp : row);
                if (width < PackedWeight.PanelWidth)
                {
                    CopyTile(row, 1, yp, ldy, width);
                }
            }
            return;
        }
        int fullEnd = p1 > p0 && PanelWidthOf(w, p1 - 1) < PackedWeight.PanelWidth ? p1 - 1 : p1;
        if (rows > maxRows)
        {
            SlicedPanels<TL>(x, ldx, rows, w, p0, fullEnd, y, ldy);
        }
        else
        {
            // One row block: the kernel reads the stored lines directly (this is the weight-streaming regime, and a
            // decode into a buffer would not be reused).
            for (int p = p0; p < fullEnd; p++)
            {
                HalfPanels(x, ldx, rows, maxRows, TL.At(w, p, 0), k, y + (p * PackedWeight.PanelWidth), ldy, false);
            }
        }
        if (fullEnd < p1)
        {
            // The last, partial panel: whole k (no partial sums to keep), narrow halves through a tile.
            int width = PanelWidthOf(w, fullEnd);
            float* yp = y + (fullEnd * PackedWeight.PanelWidth);
            TL lines = TL.At(w, fullEnd, 0);
            for (int r = 0; r < rows; r += maxRows)
            {
                int n = Math.Min(maxRows, rows - r);
                Rows256<LowHalf, TL>(x + (r * ldx), ldx, n, lines, k, tile, 16, false);
                CopyTile(tile, n, yp + (r * ldy), ldy, Math.Min(16, width), 16);
                if (width > 16)
                {
                    Rows256<HighHalf, TL>(x + (r * ldx), ldx, n, lines, k, tile, 16, false);
                    CopyTile(tile, n, yp + (r * ldy) + 16, ldy, width - 16, 16);
                }
            }
        }
    }

    /// <summary>
    /// The Vector256 path for more rows than one microkernel takes (full panels <c>[p0, p1)</c>): k is blocked by
    /// <see cref="SliceLines"/> lines; each panel's k slice, whatever its stored format, is decoded once into an fp32
    /// buffer (two 16-column halves, <c>[half][line][16]</c>, 32 KiB: L1/L2-resident) that every row block then reads
    /// with plain loads, so the inner loop is 2 loads, 6 broadcasts and 12 FMAs per k (no widening ALU work competing with
    /// the FMA ports). Partial sums go through y as fp32 between k blocks and come back bit-exact, so every element
    /// still gets one FMA per k, in k order, from +0.
    /// </summary>
    private static void SlicedPanels<TL>(float* x, nint ldx, int rows, PackedWeight w, int p0, int p1, float* y, nint ldy)
        where TL : struct, ILines256, IPanelLines<TL>
    {
        int k = w.InFeatures;
        const int HalfFloats = SliceLines * 16;
        // 64-byte aligned, so each 16-float line of a half is exactly one cache line.
        float* raw = stackalloc float[(2 * HalfFloats) + 16];
        float* slice = (float*)(((nint)raw + 63) & ~(nint)63);
        float* packed = PackedRows.Get((nint)rows * SliceLines);
        for (int k0 = 0; k0 < k; k0 += SliceLines)
        {
            int kn = Math.Min(SliceLines, k - k0);
            bool accumulate = k0 > 0;
            PackRows(x + k0, ldx, rows, kn, packed);
            for (int p = p0; p < p1; p++)
            {
                TL lines = TL.At(w, p, k0);
                float* yp = y + (p * PackedWeight.PanelWidth);
                if (p + 1 < p1 && Sse.IsSupported)
                {
                    // The next panel's stored k-slice, into L2 while this panel's row blocks run.
                    byte* next = TL.Address(w, p + 1, k0);
                    for (nint off = 0; off < (nint)kn * TL.LineBytes; off += 64)
                    {
                        Sse.Prefetch1(next + off);
                    }
                }
                for (int l = 0; l < kn; l++)
                {
                    lines.Lo(l, out Vector256<float> c0, out Vector256<float> c8);
                    lines.Hi(l, out Vector256<float> c16, out Vector256<float> c24);
                    float* lo = slice + (l * 16);
                    float* hi = lo + HalfFloats;
                    c0.Store(lo);
                    c8.Store(lo + 8);
                    c16.Store(hi);
                    c24.Store(hi + 8);
                }
                RowBlocksF32(packed, rows, slice, kn, yp, ldy, accumulate);
                RowBlocksF32(packed, rows, slice + HalfFloats, kn, yp + 16, ldy, accumulate);
            }
        }
    }

    /// <summary>
    /// k lines per slice of <see cref="SlicedPanels"/>: 256 lines × 32 fp32 columns = 32 KiB decoded (each half, the
    /// working set of one row-block sweep, 16 KiB).
    /// </summary>
    private const int SliceLines = 256;

    /// <summary>
    /// The row blocks of <see cref="SlicedPanels"/>: ⌈rows / 6⌉ blocks of as equal a size as possible (8 rows: 4 + 4,
    /// not 6 + 2), since a block of 1-2 rows has too few accumulator chains to cover the FMA latency. The split only
    /// decides which registers hold a row's accumulators, never its arithmetic.
    /// </summary>
    private static (int Blocks, int Size, int Larger) RowSplit(int rows)
    {
        int blocks = (rows + 5) / 6;
        return (blocks, rows / blocks, rows % blocks);
    }

    /// <summary>
    /// Copies the k slice <c>[0, kn)</c> of every row into <paramref name="packed"/> block by block (see
    /// <see cref="RowSplit"/>): a block of n rows starting at row r0 is <c>[kn][n]</c> at <c>packed + r0 · kn</c>, so the
    /// microkernel's broadcasts for one k are adjacent floats of one stream instead of n rows a whole row stride apart
    /// (which map to the same L1 sets: 20 KiB apart at K = 5120).
    /// </summary>
    private static void PackRows(float* x, nint ldx, int rows, int kn, float* packed)
    {
        var (blocks, size, larger) = RowSplit(rows);
        for (int b = 0, r0 = 0; b < blocks; b++)
        {
            int n = b < larger ? size + 1 : size;
            float* dst = packed + ((nint)r0 * kn);
            for (int r = 0; r < n; r++)
            {
                float* src = x + ((r0 + r) * ldx);
                float* d = dst + r;
                for (int kk = 0; kk < kn; kk++)
                {
                    d[kk * n] = src[kk];
                }
            }
            r0 += n;
        }
    }

    /// <summary>Every row block of one 16-column half slice, x from <see cref="PackRows"/>.</summary>
    private static void RowBlocksF32(float* packed, int rows, float* slice, int k, float* y, nint ldy, bool accumulate)
    {
        var (blocks, size, larger) = RowSplit(rows);
        for (int b = 0, r = 0; b < blocks; b++)
        {
            int n = b < larger ? size + 1 : size;
            float* xb = packed + ((nint)r * k);
            float* yb = y + (r * ldy);
            if (b + 1 < blocks && Sse.IsSupported)
            {
                // The next block's partial sums (n rows a row stride apart, from L2/L3: no hardware prefetcher follows
                // them) and the start of its packed x, so its first FMAs do not wait on them.
                int next = b + 1 < larger ? size + 1 : size;
                float* yn = yb + (n * ldy);
                for (int rr = 0; rr < next; rr++)
                {
                    Sse.Prefetch0(yn + (rr * ldy));
                    Sse.Prefetch0(yn + (rr * ldy) + 15);
                }
                byte* xn = (byte*)(xb + ((nint)n * k));
                for (int off = 0; off < 512; off += 64)
                {
                    Sse.Prefetch0(xn + off);
                }
            }
            switch (n)
            {
                case 1: KernelF32<Rows1>(xb, slice, k, yb, ldy, accumulate); break;
                case 2: KernelF32<Rows2>(xb, slice, k, yb, ldy, accumulate); break;
                case 3: KernelF32<Rows3>(xb, slice, k, yb, ldy, accumulate); break;
                case 4: KernelF32<Rows4>(xb, slice, k, yb, ldy, accumulate); break;
                case 5: KernelF32<Rows5>(xb, slice, k, yb, ldy, accumulate); break;
                default: KernelF32<Rows6>(xb, slice, k, yb, ldy, accumulate); break;
            }
            r += n;
        }
    }

    /// <summary>Both halves of one panel slice for every row block of <paramref name="blockRows"/> rows.</summary>
    private static void HalfPanels<TL>(float* x, nint ldx, int rows, int blockRows, TL lines, int k, float* y, nint ldy, bool accumulate)
        where TL : struct, ILines256
    {
        for (int r = 0; r < rows; r += blockRows)
        {
            Rows256<LowHalf, TL>(x + (r * ldx), ldx, Math.Min(blockRows, rows - r), lines, k, y + (r * ldy), ldy, accumulate);
        }
        for (int r = 0; r < rows; r += blockRows)
        {
            Rows256<HighHalf, TL>(x + (r * ldx), ldx, Math.Min(blockRows, rows - r), lines, k, y + (r * ldy) + 16, ldy, accumulate);
        }
    }

    private static void Rows256<TH, TL>(float* x, nint ldx, int rows, TL lines, int k, float* y, nint ldy, bool accumulate)
        where TH : struct, IHalf
        where TL : struct, ILines256
    {
        switch (rows)
        {
            case 1: Kernel256<Rows1, TL, TH>(x, ldx, lines, k, y, ldy, accumulate); break;
            case 2: Kernel256<Rows2, TL, TH>(x, ldx, lines, k, y, ldy, accumulate); break;
            case 3: Kernel256<Rows3, TL, TH>(x, ldx, lines, k, y, ldy, accumulate); break;
            case 4: Kernel256<Rows4, TL, TH>(x, ldx, lines, k, y, ldy, accumulate); break;
            case 5: Kernel256<Rows5, TL, TH>(x, ldx, lines, k, y, ldy, accumulate); break;
            default: Kernel256<Rows6, TL, TH>(x, ldx, lines, k, y, ldy, accumulate); break;
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

    /// <summary>FP8 weights in either byte order, decoded through the E4M3 value table: the same FMA chain per element.</summary>
    private static void ComputeScalarFp8(float* x, nint ldx, int rows, PackedWeight w, int p0, int p1, float* y, nint ldy)
    {
        int k = w.InFeatures;
        float* acc = stackalloc float[PackedWeight.PanelWidth];
        int* position = stackalloc int[PackedWeight.PanelWidth];
        for (int j = 0; j < PackedWeight.PanelWidth; j++)
        {
            position[j] = PackedWeight.Fp8Position(w.Layout, j);
        }
        ReadOnlySpan<float> values = Fp8E4M3.ValueTable;
        for (int p = p0; p < p1; p++)
        {
            byte* panel = w.Fp8Lines(p);
            int width = PanelWidthOf(w, p);
            for (int r = 0; r < rows; r++)
            {
                float* xr = x + (r * ldx);
                new Span<float>(acc, PackedWeight.PanelWidth).Clear();
                byte* line = panel;
                for (int kk = 0; kk < k; kk++, line += PackedWeight.Fp8LineBytes)
                {
                    float xv = xr[kk];
                    for (int j = 0; j < PackedWeight.PanelWidth; j++)
                    {
                        acc[j] = MathF.FusedMultiplyAdd(xv, values[line[position[j]]], acc[j]);
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

    /// <summary>Copies a <c>rows × tileStride</c> tile into y, keeping only the first <paramref name="width"/> columns.</summary>
    private static void CopyTile(float* tile, int rows, float* y, nint ldy, int width, int tileStride = PackedWeight.PanelWidth)
    {
        for (int r = 0; r < rows; r++)
        {
            for (int j = 0; j < width; j++)
            {
                y[(r * ldy) + j] = tile[(r * tileStride) + j];
            }
        }
    }

    /// <summary>
    /// Up to 8 rows × one panel: 16 zmm accumulators, one 64-byte weight line per k. With
    /// <paramref name="accumulate"/>, the accumulators start from y (a previous k block) instead of +0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel512<TR, TL>(float* x, nint ldx, TL w, int k, float* y, nint ldy, bool accumulate)
        where TR : struct, IRowCount
        where TL : struct, ILines512
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
            if (TR.Rows <= Prefetching)
            {
                w.Prefetch(kk + SinglePanelPrefetchLines);
            }
            Vector512<uint> raw = w.Line(kk);
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
    private static void Kernel512x4<TL>(float* x, TL w0, TL w1, TL w2, TL w3, int k, float* y)
        where TL : struct, ILines512
    {
        Vector512<uint> mask = Vector512.Create(0xFFFF0000u);
        Vector512<float> a0l = default, a0h = default, a1l = default, a1h = default;
        Vector512<float> a2l = default, a2h = default, a3l = default, a3h = default;
        for (nint kk = 0; kk < k; kk++)
        {
            nint ahead = kk + PrefetchLines;
            w0.Prefetch(ahead);
            w1.Prefetch(ahead);
            w2.Prefetch(ahead);
            w3.Prefetch(ahead);
            Vector512<float> b = Vector512.Create(x[kk]);
            Vector512<uint> r0 = w0.Line(kk);
            Vector512<uint> r1 = w1.Line(kk);
            Vector512<uint> r2 = w2.Line(kk);
            Vector512<uint> r3 = w3.Line(kk);
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

    /// <summary>
    /// Up to 6 rows × half a panel (16 columns) with 256-bit vectors: 12 ymm accumulators, two weight vectors and one
    /// broadcast. With <paramref name="accumulate"/>, the accumulators start from y (a previous k block) instead of +0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel256<TR, TL, TH>(float* x, nint ldx, TL w, int k, float* y, nint ldy, bool accumulate)
        where TR : struct, IRowCount
        where TL : struct, ILines256
        where TH : struct, IHalf
    {
        Vector256<float> a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default;
        Vector256<float> a3 = default, b3 = default, a4 = default, b4 = default, a5 = default, b5 = default;
        if (accumulate)
        {
            a0 = Vector256.Load(y);
            b0 = Vector256.Load(y + 8);
            if (TR.Rows > 1)
            {
                a1 = Vector256.Load(y + ldy);
                b1 = Vector256.Load(y + ldy + 8);
            }
            if (TR.Rows > 2)
            {
                a2 = Vector256.Load(y + (2 * ldy));
                b2 = Vector256.Load(y + (2 * ldy) + 8);
            }
            if (TR.Rows > 3)
            {
                a3 = Vector256.Load(y + (3 * ldy));
                b3 = Vector256.Load(y + (3 * ldy) + 8);
            }
            if (TR.Rows > 4)
            {
                a4 = Vector256.Load(y + (4 * ldy));
                b4 = Vector256.Load(y + (4 * ldy) + 8);
            }
            if (TR.Rows > 5)
            {
                a5 = Vector256.Load(y + (5 * ldy));
                b5 = Vector256.Load(y + (5 * ldy) + 8);
            }
        }
        float* x0 = x;
        float* x1 = x + ldx;
        float* x2 = x + (2 * ldx);
        float* x3 = x + (3 * ldx);
        float* x4 = x + (4 * ldx);
        float* x5 = x + (5 * ldx);
        for (nint kk = 0; kk < k; kk++)
        {
            if (TR.Rows <= 2)
            {
                // Few rows: memory-bound, the stream needs prefetching; more rows find the slice in L1.
                w.Prefetch(kk + SinglePanelPrefetchLines);
            }
            Vector256<float> c0, c1;
            if (TH.High)
            {
                w.Hi(kk, out c0, out c1);
            }
            else
            {
                w.Lo(kk, out c0, out c1);
            }
            Vector256<float> bb = Vector256.Create(x0[kk]);
            a0 = Vector256.FusedMultiplyAdd(bb, c0, a0);
            b0 = Vector256.FusedMultiplyAdd(bb, c1, b0);
            if (TR.Rows > 1)
            {
                bb = Vector256.Create(x1[kk]);
                a1 = Vector256.FusedMultiplyAdd(bb, c0, a1);
                b1 = Vector256.FusedMultiplyAdd(bb, c1, b1);
            }
            if (TR.Rows > 2)
            {
                bb = Vector256.Create(x2[kk]);
                a2 = Vector256.FusedMultiplyAdd(bb, c0, a2);
                b2 = Vector256.FusedMultiplyAdd(bb, c1, b2);
            }
            if (TR.Rows > 3)
            {
                bb = Vector256.Create(x3[kk]);
                a3 = Vector256.FusedMultiplyAdd(bb, c0, a3);
                b3 = Vector256.FusedMultiplyAdd(bb, c1, b3);
            }
            if (TR.Rows > 4)
            {
                bb = Vector256.Create(x4[kk]);
                a4 = Vector256.FusedMultiplyAdd(bb, c0, a4);
                b4 = Vector256.FusedMultiplyAdd(bb, c1, b4);
            }
            if (TR.Rows > 5)
            {
                bb = Vector256.Create(x5[kk]);
                a5 = Vector256.FusedMultiplyAdd(bb, c0, a5);
                b5 = Vector256.FusedMultiplyAdd(bb, c1, b5);
            }
        }
        a0.Store(y);
        b0.Store(y + 8);
        if (TR.Rows > 1)
        {
            a1.Store(y + ldy);
            b1.Store(y + ldy + 8);
        }
        if (TR.Rows > 2)
        {
            a2.Store(y + (2 * ldy));
            b2.Store(y + (2 * ldy) + 8);
        }
        if (TR.Rows > 3)
        {
            a3.Store(y + (3 * ldy));
            b3.Store(y + (3 * ldy) + 8);
        }
        if (TR.Rows > 4)
        {
            a4.Store(y + (4 * ldy));
            b4.Store(y + (4 * ldy) + 8);
        }
        if (TR.Rows > 5)
        {
            a5.Store(y + (5 * ldy));
            b5.Store(y + (5 * ldy) + 8);
        }
    }

    /// <summary>One row × a whole panel (T=1) with 256-bit vectors: four independent accumulator chains.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel256x1<TL>(float* x, TL w, int k, float* y)
        where TL : struct, ILines256
    {
        Vector256<float> a0 = default, a1 = default, a2 = default, a3 = default;
        for (nint kk = 0; kk < k; kk++)
        {
            w.Prefetch(kk + SinglePanelPrefetchLines);
            Vector256<float> bb = Vector256.Create(x[kk]);
            w.Lo(kk, out Vector256<float> c0, out Vector256<float> c8);
            w.Hi(kk, out Vector256<float> c16, out Vector256<float> c24);
            a0 = Vector256.FusedMultiplyAdd(bb, c0, a0);
            a1 = Vector256.FusedMultiplyAdd(bb, c8, a1);
            a2 = Vector256.FusedMultiplyAdd(bb, c16, a2);
            a3 = Vector256.FusedMultiplyAdd(bb, c24, a3);
        }
        Store(y, a0, a1, a2, a3);
    }

    /// <summary>
    /// Up to 6 rows × 16 columns of a decoded fp32 slice (<c>w</c> = <c>[k][16]</c>) with x packed as <c>[k][rows]</c>:
    /// 12 ymm accumulators, two weight vectors and one broadcast, k unrolled by two. With <paramref name="accumulate"/>,
    /// the accumulators start from y (a previous k block) instead of +0.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void KernelF32<TR>(float* x, float* w, int k, float* y, nint ldy, bool accumulate)
        where TR : struct, IRowCount
    {
        Vector256<float> a0 = default, b0 = default, a1 = default, b1 = default, a2 = default, b2 = default;
        Vector256<float> a3 = default, b3 = default, a4 = default, b4 = default, a5 = default, b5 = default;
        if (accumulate)
        {
            a0 = Vector256.Load(y);
            b0 = Vector256.Load(y + 8);
            if (TR.Rows > 1)
            {
                a1 = Vector256.Load(y + ldy);
                b1 = Vector256.Load(y + ldy + 8);
            }
            if (TR.Rows > 2)
            {
                a2 = Vector256.Load(y + (2 * ldy));
                b2 = Vector256.Load(y + (2 * ldy) + 8);
            }
            if (TR.Rows > 3)
            {
                a3 = Vector256.Load(y + (3 * ldy));
                b3 = Vector256.Load(y + (3 * ldy) + 8);
            }
            if (TR.Rows > 4)
            {
                a4 = Vector256.Load(y + (4 * ldy));
                b4 = Vector256.Load(y + (4 * ldy) + 8);
            }
            if (TR.Rows > 5)
            {
                a5 = Vector256.Load(y + (5 * ldy));
                b5 = Vector256.Load(y + (5 * ldy) + 8);
            }
        }
        // Two pointers (x, w) stepped once per two k and one end test: 3 uops of loop overhead per 40 (a 4-wide front
        // end, not the FMA ports, would otherwise be the bound).
        float* xk = x;
        float* wk = w;
        float* wPairsEnd = w + ((nint)(k & ~1) * 16);
        for (; wk < wPairsEnd; wk += 32, xk += 2 * TR.Rows)
        {
            Step<TR>(xk, wk, 0, ref a0, ref b0, ref a1, ref b1, ref a2, ref b2, ref a3, ref b3, ref a4, ref b4, ref a5, ref b5);
            Step<TR>(xk, wk, 1, ref a0, ref b0, ref a1, ref b1, ref a2, ref b2, ref a3, ref b3, ref a4, ref b4, ref a5, ref b5);
        }
        if ((k & 1) != 0)
        {
            Step<TR>(xk, wk, 0, ref a0, ref b0, ref a1, ref b1, ref a2, ref b2, ref a3, ref b3, ref a4, ref b4, ref a5, ref b5);
        }
        a0.Store(y);
        b0.Store(y + 8);
        if (TR.Rows > 1)
        {
            a1.Store(y + ldy);
            b1.Store(y + ldy + 8);
        }
        if (TR.Rows > 2)
        {
            a2.Store(y + (2 * ldy));
            b2.Store(y + (2 * ldy) + 8);
        }
        if (TR.Rows > 3)
        {
            a3.Store(y + (3 * ldy));
            b3.Store(y + (3 * ldy) + 8);
        }
        if (TR.Rows > 4)
        {
            a4.Store(y + (4 * ldy));
            b4.Store(y + (4 * ldy) + 8);
        }
        if (TR.Rows > 5)
        {
            a5.Store(y + (5 * ldy));
            b5.Store(y + (5 * ldy) + 8);
        }
    }

    /// <summary>
    /// One k of <see cref="KernelF32"/>, line <paramref name="line"/> (a constant, 0 or 1) after <paramref name="xk"/> and
    /// <paramref name="wk"/>: its 16 weights times each row's x. The offset is a parameter rather than moved pointers so
    /// the JIT folds it into the loads' displacements instead of materializing new pointers.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step<TR>(float* xk, float* wk, nint line,
        ref Vector256<float> a0, ref Vector256<float> b0, ref Vector256<float> a1, ref Vector256<float> b1,
        ref Vector256<float> a2, ref Vector256<float> b2, ref Vector256<float> a3, ref Vector256<float> b3,
        ref Vector256<float> a4, ref Vector256<float> b4, ref Vector256<float> a5, ref Vector256<float> b5)
        where TR : struct, IRowCount
    {
        Vector256<float> c0 = Vector256.Load(wk + (line * 16));
        Vector256<float> c1 = Vector256.Load(wk + (line * 16) + 8);
        Vector256<float> bb = Vector256.Create(xk[(line * TR.Rows) + 0]);
        a0 = Vector256.FusedMultiplyAdd(bb, c0, a0);
        b0 = Vector256.FusedMultiplyAdd(bb, c1, b0);
        if (TR.Rows > 1)
        {
            bb = Vector256.Create(xk[(line * TR.Rows) + 1]);
            a1 = Vector256.FusedMultiplyAdd(bb, c0, a1);
            b1 = Vector256.FusedMultiplyAdd(bb, c1, b1);
        }
        if (TR.Rows > 2)
        {
            bb = Vector256.Create(xk[(line * TR.Rows) + 2]);
            a2 = Vector256.FusedMultiplyAdd(bb, c0, a2);
            b2 = Vector256.FusedMultiplyAdd(bb, c1, b2);
        }
        if (TR.Rows > 3)
        {
            bb = Vector256.Create(xk[(line * TR.Rows) + 3]);
            a3 = Vector256.FusedMultiplyAdd(bb, c0, a3);
            b3 = Vector256.FusedMultiplyAdd(bb, c1, b3);
        }
        if (TR.Rows > 4)
        {
            bb = Vector256.Create(xk[(line * TR.Rows) + 4]);
            a4 = Vector256.FusedMultiplyAdd(bb, c0, a4);
            b4 = Vector256.FusedMultiplyAdd(bb, c1, b4);
        }
        if (TR.Rows > 5)
        {
            bb = Vector256.Create(xk[(line * TR.Rows) + 5]);
            a5 = Vector256.FusedMultiplyAdd(bb, c0, a5);
            b5 = Vector256.FusedMultiplyAdd(bb, c1, b5);
        }
    }
}

/// <summary>
/// Per-thread scratch for the packed x rows of <see cref="MatMulKernels"/>' Vector256 sliced path: a pinned array (on the
/// pinned object heap, so a raw pointer to it stays valid) that grows to the largest call a thread has made and is
/// collected with the thread.
/// </summary>
internal static unsafe class PackedRows
{
    [ThreadStatic]
    private static float[]? t_buffer;

    /// <summary>At least <paramref name="floats"/> floats, 64-byte aligned, valid until this thread's next call.</summary>
    public static float* Get(nint floats)
    {
        float[]? buffer = t_buffer;
        if (buffer is null || buffer.Length < floats + 16)
        {
            buffer = GC.AllocateUninitializedArray<float>((int)(floats + 16), pinned: true);
            t_buffer = buffer;
        }
        float* p = (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(buffer));
        return (float*)(((nint)p + 63) & ~(nint)63);
    }
}
