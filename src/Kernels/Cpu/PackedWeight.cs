using System.Runtime.Intrinsics;

namespace Distributed.Kernels.Cpu;

/// <summary>How a <see cref="PackedWeight"/> lays out a panel's k lines.</summary>
internal enum PanelLayout
{
    /// <summary>
    /// One 64-byte line per k: lane <c>j</c> carries column <c>32p + j</c> in its low half and column <c>32p + 16 + j</c>
    /// in its high half, so one load widens to two fp32 vectors with one shift and one mask (the fp32 FMA path).
    /// </summary>
    Widened,

    /// <summary>
    /// One 128-byte pair line per two k (<see cref="CpuMatMulPrecision.Bf16"/>): dword <c>j</c> (0–31) carries column
    /// <c>32p + j</c> at rows <c>2q</c> (low half) and <c>2q + 1</c> (high half), the operand order of <c>VDPBF16PS</c>.
    /// Odd K is padded with a zero row.
    /// </summary>
    Bf16Pairs,
}

/// <summary>
/// A bf16 matrix <c>W[K, N]</c> packed into column panels of <see cref="PanelWidth"/> columns in one of the
/// <see cref="PanelLayout"/>s; columns past <c>N</c> in the last panel are zero.
/// </summary>
internal sealed unsafe class PackedWeight : IWeightMatrix
{
    /// <summary>Columns per panel.</summary>
    public const int PanelWidth = 32;

    /// <summary><c>uint</c>s per k line of a <see cref="PanelLayout.Widened"/> panel (64 bytes).</summary>
    public const int LineUints = 16;

    /// <summary><c>uint</c>s per pair line of a <see cref="PanelLayout.Bf16Pairs"/> panel (128 bytes).</summary>
    public const int PairLineUints = 32;

    private readonly long _panelUints;
    private uint* _data;

    public PackedWeight(int inFeatures, int outFeatures, PanelLayout layout = PanelLayout.Widened)
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        Layout = layout;
        Panels = (outFeatures + PanelWidth - 1) / PanelWidth;
        PairLines = (inFeatures + 1) / 2;
        _panelUints = layout == PanelLayout.Widened ? (long)inFeatures * LineUints : (long)PairLines * PairLineUints;
        ResidentBytes = Panels * _panelUints * sizeof(uint);
        _data = (uint*)NativeMemoryBlock.Allocate((nuint)ResidentBytes);
    }

    ~PackedWeight()
    {
        Release();
    }

    /// <summary>The panel layout, which decides the kernel family that reads it.</summary>
    public PanelLayout Layout { get; }

    /// <summary><c>⌈K / 2⌉</c>: pair lines per panel in <see cref="PanelLayout.Bf16Pairs"/>.</summary>
    public int PairLines { get; }

    public int InFeatures { get; }

    public int OutFeatures { get; }

    public long ResidentBytes { get; }

    /// <summary>Number of 32-column panels.</summary>
    public int Panels { get; }

    /// <summary>True once disposed.</summary>
    public bool IsDisposed => _data == null;

    /// <summary>First line of panel <paramref name="panel"/>.</summary>
    public uint* Panel(int panel) => _data + (panel * _panelUints);

    /// <summary>Packs panels <c>[p0, p1)</c> from <paramref name="src"/> (<c>K × N</c> bf16 bits in <paramref name="layout"/>).</summary>
    public void PackPanels(ushort* src, WeightLayout layout, int p0, int p1)
    {
        for (int p = p0; p < p1; p++)
        {
            int n0 = p * PanelWidth;
            int width = Math.Min(PanelWidth, OutFeatures - n0);
            switch ((Layout, layout))
            {
                case (PanelLayout.Widened, WeightLayout.InOut):
                    PackWidenedInOut(src, Panel(p), n0, width);
                    break;
                case (PanelLayout.Widened, _):
                    PackWidenedOutIn(src, (ushort*)Panel(p), n0);
                    break;
                case (_, WeightLayout.InOut):
                    PackPairsInOut(src, Panel(p), n0, width);
                    break;
                default:
                    PackPairsOutIn(src, Panel(p), n0, width);
                    break;
            }
        }
    }

    // 16 dwords d[j] = lo[j] | hi[j] << 16: the shape of both layouts' lines (column halves, or row pairs).
    private static void Interleave16(ushort* lo, ushort* hi, uint* d)
    {
        var (lo0, lo1) = Vector256.Widen(Vector256.Load(lo));
        var (hi0, hi1) = Vector256.Widen(Vector256.Load(hi));
        (lo0 | (hi0 << 16)).Store(d);
        (lo1 | (hi1 << 16)).Store(d + 8);
    }

    // Widened line k: dword j = W[k, n0 + j] | W[k, n0 + 16 + j] << 16.
    private void PackWidenedInOut(ushort* src, uint* dst, int n0, int width)
    {
        int n = OutFeatures;
        for (int kk = 0; kk < InFeatures; kk++)
        {
            ushort* s = src + (long)kk * n + n0;
            uint* d = dst + (long)kk * LineUints;
            if (width == PanelWidth)
            {
                Interleave16(s, s + 16, d);
            }
            else
            {
                for (int j = 0; j < LineUints; j++)
                {
                    uint lo = j < width ? s[j] : 0u;
                    uint hi = j + 16 < width ? s[j + 16] : 0u;
                    d[j] = lo | (hi << 16);
                }
            }
        }
    }

    // Line k of the panel as 32 ushorts: column j sits at 2·(j mod 16) + j / 16 (little-endian halves).
    private void PackWidenedOutIn(ushort* src, ushort* dst, int n0)
    {
        const int KBlock = 64;
        int k = InFeatures;
        for (int k0 = 0; k0 < k; k0 += KBlock)
        {
            int kb = Math.Min(KBlock, k - k0);
            for (int j = 0; j < PanelWidth; j++)
            {
                ushort* d = dst + (long)k0 * PanelWidth + (2 * (j & 15)) + (j >> 4);
                if (n0 + j < OutFeatures)
                {
                    ushort* s = src + ((long)(n0 + j) * k) + k0;
                    for (int kk = 0; kk < kb; kk++)
                    {
                        d[kk * PanelWidth] = s[kk];
                    }
                }
                else
                {
                    for (int kk = 0; kk < kb; kk++)
                    {
                        d[kk * PanelWidth] = 0;
                    }
                }
            }
        }
    }

    // Pair line q: dword j = W[2q, n0 + j] | W[2q + 1, n0 + j] << 16, zero past K and N.
    private void PackPairsInOut(ushort* src, uint* dst, int n0, int width)
    {
        int n = OutFeatures;
        for (int q = 0; q < PairLines; q++)
        {
            ushort* even = src + ((long)(2 * q) * n) + n0;
            ushort* odd = (2 * q) + 1 < InFeatures ? even + n : null;
            uint* d = dst + ((long)q * PairLineUints);
            if (width == PanelWidth && odd != null)
            {
                Interleave16(even, odd, d);
                Interleave16(even + 16, odd + 16, d + 16);
            }
            else
            {
                for (int j = 0; j < PanelWidth; j++)
                {
                    uint lo = j < width ? even[j] : 0u;
                    uint hi = j < width && odd != null ? odd[j] : 0u;
                    d[j] = lo | (hi << 16);
                }
            }
        }
    }

    // Row c of the source is column c of W: its k values are contiguous, so a pair is two adjacent ushorts.
    private void PackPairsOutIn(ushort* src, uint* dst, int n0, int width)
    {
        const int QBlock = 64;
        int k = InFeatures;
        for (int q0 = 0; q0 < PairLines; q0 += QBlock)
        {
            int qn = Math.Min(QBlock, PairLines - q0);
            for (int j = 0; j < PanelWidth; j++)
            {
                uint* d = dst + ((long)q0 * PairLineUints) + j;
                ushort* s = j < width ? src + ((long)(n0 + j) * k) : null;
                for (int q = q0; q < q0 + qn; q++, d += PairLineUints)
                {
                    int kk = 2 * q;
                    *d = s == null ? 0u : s[kk] | (kk + 1 < k ? (uint)s[kk + 1] << 16 : 0u);
                }
            }
        }
    }

    public void Dispose()
    {
        Release();
        GC.SuppressFinalize(this);
    }

    private void Release()
    {
        uint* data = _data;
        if (data != null)
        {
            _data = null;
            NativeMemoryBlock.Free(data);
        }
    }
}
