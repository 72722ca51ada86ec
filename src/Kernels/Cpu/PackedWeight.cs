using System.Runtime.Intrinsics;

namespace Distributed.Kernels.Cpu;

/// <summary>
/// A bf16 matrix <c>W[K, N]</c> packed into column panels of <see cref="PanelWidth"/> columns. Panel <c>p</c> holds
/// columns <c>[32p, 32p + 32)</c> as <c>K</c> consecutive 64-byte lines; line <c>k</c> is 16 <c>uint</c>s where lane
/// <c>j</c> carries column <c>32p + j</c> in its low half and column <c>32p + 16 + j</c> in its high half. One
/// <c>Vector512&lt;uint&gt;</c> load therefore widens to two fp32 vectors with one shift and one mask. Columns past
/// <c>N</c> in the last panel are zero.
/// </summary>
internal sealed unsafe class PackedWeight : IWeightMatrix
{
    /// <summary>Columns per panel.</summary>
    public const int PanelWidth = 32;

    /// <summary><c>uint</c>s per k line of a panel (64 bytes).</summary>
    public const int LineUints = 16;

    private uint* _data;

    public PackedWeight(int inFeatures, int outFeatures)
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        Panels = (outFeatures + PanelWidth - 1) / PanelWidth;
        ResidentBytes = (long)Panels * inFeatures * LineUints * sizeof(uint);
        _data = (uint*)NativeMemoryBlock.Allocate((nuint)ResidentBytes);
    }

    ~PackedWeight()
    {
        Release();
    }

    public int InFeatures { get; }

    public int OutFeatures { get; }

    public long ResidentBytes { get; }

    /// <summary>Number of 32-column panels.</summary>
    public int Panels { get; }

    /// <summary>True once disposed.</summary>
    public bool IsDisposed => _data == null;

    /// <summary>First line of panel <paramref name="panel"/>.</summary>
    public uint* Panel(int panel) => _data + (long)panel * InFeatures * LineUints;

    /// <summary>Packs panels <c>[p0, p1)</c> from <paramref name="src"/> (<c>K × N</c> bf16 bits in <paramref name="layout"/>).</summary>
    public void PackPanels(ushort* src, WeightLayout layout, int p0, int p1)
    {
        if (layout == WeightLayout.InOut)
        {
            PackInOut(src, p0, p1);
        }
        else
        {
            PackOutIn(src, p0, p1);
        }
    }

    private void PackInOut(ushort* src, int p0, int p1)
    {
        int k = InFeatures;
        int n = OutFeatures;
        for (int p = p0; p < p1; p++)
        {
            uint* dst = Panel(p);
            int n0 = p * PanelWidth;
            int width = Math.Min(PanelWidth, n - n0);
            for (int kk = 0; kk < k; kk++)
            {
                ushort* s = src + (long)kk * n + n0;
                uint* d = dst + (long)kk * LineUints;
                if (width == PanelWidth)
                {
                    var (loA, loB) = Vector256.Widen(Vector256.Load(s));
                    var (hiA, hiB) = Vector256.Widen(Vector256.Load(s + 16));
                    (loA | (hiA << 16)).Store(d);
                    (loB | (hiB << 16)).Store(d + 8);
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
    }

    private void PackOutIn(ushort* src, int p0, int p1)
    {
        const int KBlock = 64;
        int k = InFeatures;
        int n = OutFeatures;
        for (int p = p0; p < p1; p++)
        {
            // Line k of the panel as 32 ushorts: column j sits at 2·(j mod 16) + j / 16 (little-endian halves).
            ushort* dst = (ushort*)Panel(p);
            int n0 = p * PanelWidth;
            for (int k0 = 0; k0 < k; k0 += KBlock)
            {
                int kb = Math.Min(KBlock, k - k0);
                for (int j = 0; j < PanelWidth; j++)
                {
                    ushort* d = dst + (long)k0 * PanelWidth + (2 * (j & 15)) + (j >> 4);
                    if (n0 + j < n)
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
