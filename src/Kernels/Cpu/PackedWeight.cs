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

    /// <summary>
    /// FP8 E4M3 codes, one 32-byte line per k in the Vector512 order: byte <c>2j</c> is column <c>32p + j</c>, byte
    /// <c>2j + 1</c> column <c>32p + 16 + j</c> (j = 0–15), so one sign-extending byte→word load decodes to exactly a
    /// <see cref="Widened"/> bf16 line (<see cref="Fp8Lines512"/>). After the lines, one flag byte per k (see
    /// <see cref="PackedWeight.Fp8Flags"/>).
    /// </summary>
    Fp8Wide,

    /// <summary>
    /// FP8 E4M3 codes, one 32-byte line per k in the Vector256 order: in half h (bytes 16h–16h+15, columns
    /// 32p + 16h + 0–15) byte <c>16h + 2j</c> is column <c>16h + j</c> and byte <c>16h + 2j + 1</c> column
    /// <c>16h + 8 + j</c> (j = 0–7), so each half decodes on its own to two 8-column fp32 vectors. Flags as
    /// <see cref="Fp8Wide"/>.
    /// </summary>
    Fp8Narrow,
}

/// <summary>
/// A bf16 matrix <c>W[K, N]</c> packed into column panels of <see cref="PanelWidth"/> columns in one of the
/// <see cref="PanelLayout"/>s; columns past <c>N</c> in the last panel are zero. An FP8 matrix (<see cref="PanelLayout.Fp8Wide"/>,
/// <see cref="PanelLayout.Fp8Narrow"/>) holds one byte per weight plus one scale per output column (<see cref="Scales"/>)
/// and the activation rule its matmuls apply (<see cref="Fp8Activations"/>); its padding columns hold code 0x38 (1.0) so
/// that their lines stay on the fast decode path (their outputs are never stored).
/// </summary>
internal sealed unsafe class PackedWeight : IWeightMatrix
{
    /// <summary>Columns per panel.</summary>
    public const int PanelWidth = 32;

    /// <summary><c>uint</c>s per k line of a <see cref="PanelLayout.Widened"/> panel (64 bytes).</summary>
    public const int LineUints = 16;

    /// <summary><c>uint</c>s per pair line of a <see cref="PanelLayout.Bf16Pairs"/> panel (128 bytes).</summary>
    public const int PairLineUints = 32;

    /// <summary>Bytes per k line of an FP8 panel (32 codes).</summary>
    public const int Fp8LineBytes = 32;

    /// <summary>Code of the padding columns of an FP8 panel (1.0: a normal value, so the fast decode applies).</summary>
    private const byte Fp8Padding = 0x38;

    private readonly long _panelUints;
    private uint* _data;
    private float* _scales;

    public PackedWeight(int inFeatures, int outFeatures, PanelLayout layout = PanelLayout.Widened,
        Fp8ActivationMode activations = Fp8ActivationMode.WeightOnly)
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        Layout = layout;
        Fp8Activations = activations;
        Panels = (outFeatures + PanelWidth - 1) / PanelWidth;
        PairLines = (inFeatures + 1) / 2;
        _panelUints = layout switch
        {
            PanelLayout.Widened => (long)inFeatures * LineUints,
            PanelLayout.Bf16Pairs => (long)PairLines * PairLineUints,
            // Lines then flags, each panel rounded up to whole 64-byte cache lines.
            _ => ((((long)inFeatures * (Fp8LineBytes + 1)) + 63) / 64) * 16,
        };
        ResidentBytes = Panels * _panelUints * sizeof(uint);
        _data = (uint*)NativeMemoryBlock.Allocate((nuint)ResidentBytes);
        if (IsFp8)
        {
            long scaleBytes = (long)Panels * PanelWidth * sizeof(float);
            _scales = (float*)NativeMemoryBlock.Allocate((nuint)scaleBytes);
            new Span<float>(_scales, Panels * PanelWidth).Fill(1f);
            ResidentBytes += scaleBytes;
        }
    }

    ~PackedWeight()
    {
        Release();
    }

    /// <summary>The panel layout, which decides the kernel family that reads it.</summary>
    public PanelLayout Layout { get; }

    /// <summary>True for the FP8 layouts.</summary>
    public bool IsFp8 => Layout is PanelLayout.Fp8Wide or PanelLayout.Fp8Narrow;

    /// <summary>The activation rule of an FP8 matrix's matmuls (<see cref="Fp8ActivationMode.WeightOnly"/> otherwise).</summary>
    public Fp8ActivationMode Fp8Activations { get; }

    /// <summary>FP8: one scale per output column, padded with 1.0 to whole panels (<c>Panels · 32</c> floats).</summary>
    public float* Scales => _scales;

    /// <summary>FP8: the 32-byte code lines of panel <paramref name="panel"/>.</summary>
    public byte* Fp8Lines(int panel) => (byte*)Panel(panel);

    /// <summary>
    /// FP8: one byte per k line of panel <paramref name="panel"/>, non-zero when the line holds a code whose exponent
    /// bits are 0 (zero or subnormal), which the fast decode (<c>bf16 = (code &lt;&lt; 4) + (120 &lt;&lt; 7)</c>) gets wrong and the
    /// exact decode fixes. Real weights flag well under 1 % of lines.
    /// </summary>
    public byte* Fp8Flags(int panel) => (byte*)Panel(panel) + ((long)InFeatures * Fp8LineBytes);

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

    /// <summary>
    /// Packs panels <c>[p0, p1)</c> from <paramref name="src"/>: <c>K × N</c> bf16 bits in <paramref name="layout"/>, or
    /// for the FP8 layouts <c>K × N</c> E4M3 codes.
    /// </summary>
    public void PackPanels(void* src, WeightLayout layout, int p0, int p1)
    {
        if (IsFp8)
        {
            for (int p = p0; p < p1; p++)
            {
                PackFp8Panel((byte*)src, layout, p);
            }
            return;
        }
        PackBf16Panels((ushort*)src, layout, p0, p1);
    }

    /// <summary>FP8: copies the per-output-column scales (<c>OutFeatures</c> positive finite floats).</summary>
    public void SetScales(ReadOnlySpan<float> scales) => scales.CopyTo(new Span<float>(_scales, OutFeatures));

    /// <summary>
    /// Byte position of panel column <paramref name="j"/> (0–31) within an FP8 line of <paramref name="layout"/>.
    /// </summary>
    public static int Fp8Position(PanelLayout layout, int j)
    {
        if (layout == PanelLayout.Fp8Wide)
        {
            return j < 16 ? 2 * j : (2 * (j - 16)) + 1;
        }
        int half = j >> 4, jj = j & 15;
        return (16 * half) + (jj < 8 ? 2 * jj : (2 * (jj - 8)) + 1);
    }

    private void PackFp8Panel(byte* src, WeightLayout layout, int p)
    {
        const int KBlock = 64;
        int k = InFeatures, n = OutFeatures;
        int n0 = p * PanelWidth;
        int width = Math.Min(PanelWidth, n - n0);
        byte* lines = Fp8Lines(p);
        Span<int> position = stackalloc int[PanelWidth];
        for (int j = 0; j < PanelWidth; j++)
        {
            position[j] = Fp8Position(Layout, j);
        }
        if (layout == WeightLayout.InOut)
        {
            for (int kk = 0; kk < k; kk++)
            {
                byte* s = src + ((long)kk * n) + n0;
                byte* d = lines + ((long)kk * Fp8LineBytes);
                for (int j = 0; j < PanelWidth; j++)
                {
                    d[position[j]] = j < width ? s[j] : Fp8Padding;
                }
            }
        }
        else
        {
            // Row c of the source is column c of W: its k codes are contiguous; write them k-block by k-block.
            for (int k0 = 0; k0 < k; k0 += KBlock)
            {
                int kb = Math.Min(KBlock, k - k0);
                for (int j = 0; j < PanelWidth; j++)
                {
                    byte* d = lines + ((long)k0 * Fp8LineBytes) + position[j];
                    byte* s = j < width ? src + ((long)(n0 + j) * k) + k0 : null;
                    for (int kk = 0; kk < kb; kk++)
                    {
                        d[kk * Fp8LineBytes] = s == null ? Fp8Padding : s[kk];
                    }
                }
            }
        }
        byte* flags = Fp8Flags(p);
        var exponent = Vector256.Create((byte)0x78);
        for (int kk = 0; kk < k; kk++)
        {
            var line = Vector256.Load(lines + ((long)kk * Fp8LineBytes));
            flags[kk] = Vector256.EqualsAny(line & exponent, Vector256<byte>.Zero) ? (byte)1 : (byte)0;
        }
    }

    private void PackBf16Panels(ushort* src, WeightLayout layout, int p0, int p1)
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
        float* scales = _scales;
        if (scales != null)
        {
            _scales = null;
            NativeMemoryBlock.Free(scales);
        }
    }
}
