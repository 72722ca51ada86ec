namespace Distributed.Kernels.Cpu;

/// <summary>The row-wise ops that <see cref="CpuKernelBackend"/> can spread over its team.</summary>
internal enum RowOp
{
    RmsNorm,
    Rope,
    Softmax,
    SwiGluActivation,

    /// <summary>x rows (width cols) rounded to bf16 pairs into y (row stride ⌈cols/2⌉ uints).</summary>
    Bf16Pairs,

    /// <summary>
    /// x rows quantized per token to E4M3 (<see cref="Fp8E4M3.QuantizeRowToValues"/>): the code values into y, each
    /// row's scale into w[r].
    /// </summary>
    Fp8PerToken,

    /// <summary>x rows rounded to bf16 values (still floats) into y.</summary>
    Bf16Round,

    /// <summary>LayerNorm of x rows into y with weight w and bias b.</summary>
    LayerNorm,

    /// <summary>Adjacent pairs of x rows (heads × headDim) rotated in place by w = cosSin [rows, headDim/2, 2].</summary>
    RotatePairs,
}

/// <summary>
/// A row-wise op over rows split into contiguous ranges per thread. Each row is processed by the same code whatever
/// the split, so results are independent of the thread count.
/// </summary>
internal sealed unsafe class RowTask : ITeamTask
{
    private RowOp _op;
    private SimdLevel _simd;
    private int _rows;
    private int _cols;
    private float* _x;
    private float* _y;
    private float* _w;
    private float _eps;
    private int* _positions;
    private int _heads;
    private float[]? _invFreq;
    private float* _b;

    public void Set(RowOp op, SimdLevel simd, int rows, int cols, float* x, float* y, float* w, float eps, int* positions, int heads, float[]? invFreq,
        float* b = null)
    {
        _b = b;
        _op = op;
        _simd = simd;
        _rows = rows;
        _cols = cols;
        _x = x;
        _y = y;
        _w = w;
        _eps = eps;
        _positions = positions;
        _heads = heads;
        _invFreq = invFreq;
    }

    public void Execute(int thread, int threads)
    {
        int r0 = (int)((long)_rows * thread / threads);
        int r1 = (int)((long)_rows * (thread + 1) / threads);
        Execute(_op, _simd, r0, r1, _cols, _x, _y, _w, _eps, _positions, _heads, _invFreq, _b);
    }

    /// <summary>
    /// Rows <c>[r0, r1)</c>. For <see cref="RowOp.SwiGluActivation"/>, x rows are <c>[gate | up]</c> of width 2·cols and
    /// y rows have width cols; for the others x and y rows have width cols.
    /// </summary>
    public static void Execute(RowOp op, SimdLevel simd, int r0, int r1, int cols, float* x, float* y, float* w, float eps,
        int* positions, int heads, float[]? invFreq, float* b = null)
    {
        switch (op)
        {
            case RowOp.LayerNorm:
                for (int r = r0; r < r1; r++)
                {
                    VectorOps.LayerNormRow(simd, x + ((long)r * cols), cols, w, b, eps, y + ((long)r * cols));
                }
                break;
            case RowOp.RotatePairs:
                {
                    int pairs = cols / heads / 2;
                    for (int r = r0; r < r1; r++)
                    {
                        RopeKernel.RotateRow(x + ((long)r * cols), heads, pairs, w + ((long)r * pairs * 2));
                    }
                    break;
                }
            case RowOp.RmsNorm:
                for (int r = r0; r < r1; r++)
                {
                    VectorOps.RmsNormRow(simd, x + ((long)r * cols), cols, w, eps, y + ((long)r * cols));
                }
                break;
            case RowOp.Softmax:
                for (int r = r0; r < r1; r++)
                {
                    VectorOps.SoftmaxRow(simd, x + ((long)r * cols), cols);
                }
                break;
            case RowOp.SwiGluActivation:
                for (int r = r0; r < r1; r++)
                {
                    float* h = x + (2L * r * cols);
                    VectorOps.SiluMul(simd, h, h + cols, y + ((long)r * cols), cols);
                }
                break;
            case RowOp.Bf16Pairs:
                Bf16DotKernels.ToPairs(x, cols, r0, r1, cols, (uint*)y);
                break;
            case RowOp.Fp8PerToken:
                for (int r = r0; r < r1; r++)
                {
                    w[r] = Fp8E4M3.QuantizeRowToValues(new ReadOnlySpan<float>(x + ((long)r * cols), cols), new Span<float>(y + ((long)r * cols), cols));
                }
                break;
            case RowOp.Bf16Round:
                for (int r = r0; r < r1; r++)
                {
                    float* xr = x + ((long)r * cols);
                    float* yr = y + ((long)r * cols);
                    for (int c = 0; c < cols; c++)
                    {
                        yr[c] = DTypeInfo.Bf16ToFloat(DTypeInfo.FloatToBf16(xr[c]));
                    }
                }
                break;
            case RowOp.Rope:
                {
                    int half = invFreq!.Length;
                    float[]? rented = half > 2048 ? new float[2 * half] : null;
                    Span<float> cosSin = rented ?? stackalloc float[2 * half];
                    fixed (float* cs = cosSin)
                    {
                        for (int r = r0; r < r1; r++)
                        {
                            RopeKernel.Row(x + ((long)r * cols), heads, positions[r], invFreq, cs);
                        }
                    }
                    break;
                }
            default:
                throw new InvalidOperationException($"unknown row op {op}");
        }
    }
}

/// <summary>Packs a weight's panels, chunks claimed dynamically by the team.</summary>
internal sealed unsafe class PackTask : ITeamTask
{
    private const int PanelsPerChunk = 8;
    private PackedWeight? _weight;
    private void* _src;
    private WeightLayout _layout;
    private int _next;

    /// <summary><paramref name="src"/>: bf16 bits, or E4M3 codes for an FP8 weight.</summary>
    public void Set(PackedWeight weight, void* src, WeightLayout layout)
    {
        _weight = weight;
        _src = src;
        _layout = layout;
        _next = 0;
    }

    public void Execute(int thread, int threads)
    {
        var w = _weight!;
        int chunks = (w.Panels + PanelsPerChunk - 1) / PanelsPerChunk;
        int c;
        while ((c = Interlocked.Increment(ref _next) - 1) < chunks)
        {
            int p0 = c * PanelsPerChunk;
            w.PackPanels(_src, _layout, p0, Math.Min(w.Panels, p0 + PanelsPerChunk));
        }
    }
}

/// <summary>
/// <c>y = x · W</c> split into (panel range × row range) chunks that threads claim dynamically. Never splits k.
/// </summary>
internal sealed unsafe class MatMulTask : ITeamTask
{
    /// <summary>Rows per chunk for tall inputs (a multiple of the 8-row microkernel).</summary>
    private const int RowsPerChunk = 128;

    private SimdLevel _simd;
    private float* _x;
    private nint _ldx;
    private int _rows;
    private PackedWeight? _w;
    private float* _y;
    private nint _ldy;
    private int _panelsPerChunk;
    private int _panelChunks;
    private int _chunks;
    private int _next;
    private float* _rowScales;

    /// <summary><paramref name="rowScales"/>: per-row W8A8 activation scales (FP8 weights), or null.</summary>
    public void Set(SimdLevel simd, float* x, nint ldx, int rows, PackedWeight w, float* y, nint ldy, int threads, float* rowScales = null)
    {
        _simd = simd;
        _x = x;
        _ldx = ldx;
        _rows = rows;
        _w = w;
        _y = y;
        _ldy = ldy;
        _rowScales = rowScales;
        _panelsPerChunk = PanelsPerChunk(w.Panels, rows, threads);
        _panelChunks = (w.Panels + _panelsPerChunk - 1) / _panelsPerChunk;
        _chunks = _panelChunks * ((rows + RowsPerChunk - 1) / RowsPerChunk);
        _next = 0;
    }

    /// <summary>
    /// About four chunks per thread so a late-waking thread costs little, at most 16 panels, and a multiple of 4 at
    /// T=1 so the four-panel decode kernel covers whole chunks.
    /// </summary>
    public static int PanelsPerChunk(int panels, int rows, int threads)
    {
        int target = Math.Max(1, threads * 4);
        int ppc = Math.Clamp((panels + target - 1) / target, 1, 16);
        if (rows == 1 && panels >= 4)
        {
            ppc = (ppc + 3) & ~3;
        }
        return ppc;
    }

    public void Execute(int thread, int threads)
    {
        var w = _w!;
        int c;
        while ((c = Interlocked.Increment(ref _next) - 1) < _chunks)
        {
            int pc = c % _panelChunks;
            int r0 = c / _panelChunks * RowsPerChunk;
            int p0 = pc * _panelsPerChunk;
            int p1 = Math.Min(w.Panels, p0 + _panelsPerChunk);
            int rn = Math.Min(RowsPerChunk, _rows - r0);
            MatMulKernels.Compute(_simd, _x + (r0 * _ldx), _ldx, rn, w, p0, p1, _y + (r0 * _ldy), _ldy, _rowScales == null ? null : _rowScales + r0);
        }
    }
}

/// <summary>
/// The gate/up half of a SwiGLU FFN when the intermediate width I is a multiple of 32: a chunk computes gate panels
/// <c>[a, b)</c> and the matching up panels <c>[a + I/32, b + I/32)</c>, then <c>act = silu(gate) · up</c> for those
/// columns, so the activation needs no separate pass.
/// </summary>
internal sealed unsafe class GateUpTask : ITeamTask
{
    private SimdLevel _simd;
    private float* _x;
    private nint _ldx;
    private int _rows;
    private PackedWeight? _w;
    private float* _hidden;
    private float* _act;
    private int _intermediate;
    private int _halfPanels;
    private int _panelsPerChunk;
    private int _chunks;
    private int _next;
    private float* _rowScales;

    /// <summary><paramref name="rowScales"/>: per-row W8A8 activation scales (FP8 weights), or null.</summary>
    public void Set(SimdLevel simd, float* x, nint ldx, int rows, PackedWeight gateUp, float* hidden, float* act, int threads, float* rowScales = null)
    {
        _rowScales = rowScales;
        _simd = simd;
        _x = x;
        _ldx = ldx;
        _rows = rows;
        _w = gateUp;
        _hidden = hidden;
        _act = act;
        _intermediate = gateUp.OutFeatures / 2;
        _halfPanels = _intermediate / PackedWeight.PanelWidth;
        _panelsPerChunk = MatMulTask.PanelsPerChunk(_halfPanels, rows, threads);
        _chunks = (_halfPanels + _panelsPerChunk - 1) / _panelsPerChunk;
        _next = 0;
    }

    public void Execute(int thread, int threads)
    {
        var w = _w!;
        nint ldh = 2 * (nint)_intermediate;
        int c;
        while ((c = Interlocked.Increment(ref _next) - 1) < _chunks)
        {
            int a = c * _panelsPerChunk;
            int b = Math.Min(_halfPanels, a + _panelsPerChunk);
            MatMulKernels.Compute(_simd, _x, _ldx, _rows, w, a, b, _hidden, ldh, _rowScales);
            MatMulKernels.Compute(_simd, _x, _ldx, _rows, w, a + _halfPanels, b + _halfPanels, _hidden, ldh, _rowScales);
            int col = a * PackedWeight.PanelWidth;
            int width = (b - a) * PackedWeight.PanelWidth;
            for (int r = 0; r < _rows; r++)
            {
                float* h = _hidden + (r * ldh) + col;
                VectorOps.SiluMul(_simd, h, h + _intermediate, _act + ((nint)r * _intermediate) + col, width);
            }
        }
    }
}

/// <summary>Attention work units (row tile × kv head × head group), claimed dynamically; scratch is per thread.</summary>
internal sealed unsafe class AttentionTask : ITeamTask
{
    private readonly ScratchBuffer[] _scratch;
    private SimdLevel _simd;
    private AttentionShape _shape;
    private float* _q;
    private int* _positions;
    private float* _k;
    private float* _v;
    private float* _output;
    private int _rows;
    private int _rowTile;
    private int _tiles;
    private int _headsPerUnit;
    private int _groupsPerKvHead;
    private int _units;
    private int _next;

    public AttentionTask(ScratchBuffer[] scratch)
    {
        _scratch = scratch;
    }

    public void Set(SimdLevel simd, in AttentionShape shape, float* q, int* positions, float* k, float* v, float* output, int rows, int threads)
    {
        _simd = simd;
        _shape = shape;
        _q = q;
        _positions = positions;
        _k = k;
        _v = v;
        _output = output;
        _rows = rows;
        _rowTile = Math.Min(AttentionKernel.RowTile, rows);
        _tiles = (rows + _rowTile - 1) / _rowTile;
        int coarseUnits = _tiles * shape.KvHeads;
        // Split a kv head's query heads only when there are too few units to keep every thread busy (decode, MQA).
        int splits = coarseUnits >= 2 * threads ? 1 : Math.Min(shape.Group, (2 * threads + coarseUnits - 1) / coarseUnits);
        _headsPerUnit = (shape.Group + splits - 1) / splits;
        _groupsPerKvHead = (shape.Group + _headsPerUnit - 1) / _headsPerUnit;
        _units = coarseUnits * _groupsPerKvHead;
        _next = 0;
    }

    public void Execute(int thread, int threads)
    {
        int u;
        float* scratch = null;
        // kv-head-major order: the units working at the same time share one kv head's K/V (8 MiB at 8k context),
        // which then stays in L3 while every row tile streams it.
        int perKvHead = _tiles * _groupsPerKvHead;
        while ((u = Interlocked.Increment(ref _next) - 1) < _units)
        {
            if (scratch == null)
            {
                scratch = _scratch[thread].Get(AttentionKernel.ScratchFloats(_shape, _rowTile, _headsPerUnit));
            }
            int kvHead = u / perKvHead;
            int rem = u % perKvHead;
            int tile = rem / _groupsPerKvHead;
            int g0 = rem % _groupsPerKvHead * _headsPerUnit;
            int g1 = Math.Min(_shape.Group, g0 + _headsPerUnit);
            int r0 = tile * _rowTile;
            int rowCount = Math.Min(_rowTile, _rows - r0);
            AttentionKernel.Unit(_simd, _shape, _q, _positions, _k, _v, _output, r0, rowCount, kvHead, g0, g1, scratch);
        }
    }
}
