using System.Runtime.InteropServices;

namespace Distributed.Kernels.Cpu;

/// <summary>
/// The always-available CPU backend: bf16 weights packed into 32-column panels and widened to fp32 in registers,
/// fp32 FMA accumulation, Vector512 where the machine accelerates it (else Vector256, else scalar), and one dedicated
/// team of worker threads per instance. Every op is batch invariant: a row's result is bitwise the same whatever other
/// rows share the call, whatever the row count and whatever the thread count.
/// </summary>
/// <remarks>
/// <para>Create one instance per process and share it: every instance owns <c>threads - 1</c> worker threads that spin
/// for about 2 ms after each call, and two spinning teams on the same cores slow each other down badly.</para>
/// <para>Calls that use the worker team (large matmuls, FFNs, attention, large row-wise ops) are serialized on an
/// internal lock; small ones run on the calling thread. Dispose the backend to stop its threads; weights it created
/// stay valid until disposed themselves.</para>
/// </remarks>
public sealed unsafe partial class CpuKernelBackend : IKernelBackend
{
    /// <summary>Row-wise ops with fewer elements than this run on the calling thread (a team wake-up costs ~µs).</summary>
    private const long ParallelElementThreshold = 1 << 16;

    private readonly SimdLevel _simd;
    private readonly WorkerTeam _team;
    private readonly Lock _sync = new();
    private readonly ScratchBuffer[] _threadScratch;
    private readonly ScratchBuffer _ffnHidden = new();
    private readonly ScratchBuffer _ffnActivation = new();
    private readonly ScratchBuffer _pairInput = new();
    private readonly ScratchBuffer _fp8Input = new();
    private readonly ScratchBuffer _fp8RowScales = new();
    private readonly PackTask _packTask = new();
    private readonly MatMulTask _matMulTask = new();
    private readonly GateUpTask _gateUpTask = new();
    private readonly AttentionTask _attentionTask;
    private readonly DecodeAttentionTask _decodeAttentionTask;
    private readonly RowTask _rowTask = new();
    private bool _disposed;

    /// <summary>Creates a backend with its own worker team, computing at <see cref="CpuMatMulPrecision.Fp32"/>.</summary>
    /// <param name="threads">Threads one call uses, the caller included; 0 = <see cref="Environment.ProcessorCount"/>.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="threads"/> is negative.</exception>
    public CpuKernelBackend(int threads = 0)
        : this(threads, SimdLevels.Detect(), CpuMatMulPrecision.Fp32)
    {
    }

    /// <summary>Creates a backend with its own worker team and the given matmul arithmetic.</summary>
    /// <param name="threads">Threads one call uses, the caller included; 0 = <see cref="Environment.ProcessorCount"/>.</param>
    /// <param name="precision">The matmul arithmetic; <see cref="CpuMatMulPrecision.Bf16"/> needs AVX512-BF16.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="threads"/> is negative or <paramref name="precision"/> unknown.</exception>
    /// <exception cref="PlatformNotSupportedException"><see cref="CpuMatMulPrecision.Bf16"/> on a machine that cannot run it (the message says why).</exception>
    public CpuKernelBackend(int threads, CpuMatMulPrecision precision)
        : this(threads, SimdLevels.Detect(), precision)
    {
    }

    /// <summary>Why <see cref="CpuMatMulPrecision.Bf16"/> cannot run on this machine, or null when it can.</summary>
    public static string? Bf16Unavailable => Bf16DotKernels.Availability;

    /// <summary>Test hook: forces a narrower SIMD level than the machine supports.</summary>
    internal CpuKernelBackend(int threads, SimdLevel simd, CpuMatMulPrecision precision = CpuMatMulPrecision.Fp32)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(threads);
        if (!Enum.IsDefined(precision))
        {
            throw new ArgumentOutOfRangeException(nameof(precision), precision, "unknown CPU matmul precision (fp32 or bf16)");
        }
        if (precision == CpuMatMulPrecision.Bf16 && Bf16DotKernels.Availability is { } why)
        {
            throw new PlatformNotSupportedException($"Kernels:CpuPrecision bf16 is not available: {why}; use fp32");
        }
        if (precision == CpuMatMulPrecision.Bf16)
        {
            try
            {
                Bf16DotKernels.Prepare();
            }
            catch (PlatformNotSupportedException ex)
            {
                throw new PlatformNotSupportedException($"Kernels:CpuPrecision bf16 is not available: {ex.Message}; use fp32", ex);
            }
        }
        int n = threads == 0 ? Environment.ProcessorCount : threads;
        _simd = simd;
        Precision = precision;
        _team = new WorkerTeam(n);
        _threadScratch = new ScratchBuffer[n];
        for (int i = 0; i < n; i++)
        {
            _threadScratch[i] = new ScratchBuffer();
        }
        _attentionTask = new AttentionTask(_threadScratch);
        _decodeAttentionTask = new DecodeAttentionTask(_threadScratch);
        string suffix = precision == CpuMatMulPrecision.Bf16 ? "-bf16" : "";
        Name = $"cpu-{SimdLevels.ShortName(simd)}x{n}{suffix}";
        Capabilities = new KernelCapabilities(
            $"{CpuModelName()} ({SimdLevels.ShortName(simd)}{(precision == CpuMatMulPrecision.Bf16 ? ", bf16 matmul (VDPBF16PS)" : "")}, {n} threads)",
            SimdLevels.TypeName(simd), n, 0, BatchInvariant: true, Numerics: precision == CpuMatMulPrecision.Bf16 ? "cpu-bf16" : "cpu-fp32");
    }

    /// <summary>The matmul arithmetic of this backend.</summary>
    public CpuMatMulPrecision Precision { get; }

    /// <inheritdoc />
    /// <remarks>Always 0: the CPU backend has no device memory (a worker on it sizes its capacity from host memory).</remarks>
    public long DeviceFreeBytes() => 0;

    // The panel layout the kernels of Precision read.
    private PanelLayout WeightPanelLayout => Precision == CpuMatMulPrecision.Bf16 ? PanelLayout.Bf16Pairs : PanelLayout.Widened;

    /// <inheritdoc />
    public string Name { get; }

    /// <inheritdoc />
    public KernelCapabilities Capabilities { get; }

    internal SimdLevel Simd => _simd;

    internal int Threads => _team.Threads;

    /// <inheritdoc />
    public void SiluMul(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dst)
    {
        ThrowIfDisposed();
        KernelThrowHelper.CheckLength(up.Length, gate.Length, nameof(SiluMul), nameof(up), "same length as gate");
        KernelThrowHelper.CheckLength(dst.Length, gate.Length, nameof(SiluMul), nameof(dst), "same length as gate");
        fixed (float* g = gate, u = up, d = dst)
        {
            VectorOps.SiluMul(_simd, g, u, d, gate.Length);
        }
    }

    /// <inheritdoc />
    public void Add(Span<float> dst, ReadOnlySpan<float> src)
    {
        ThrowIfDisposed();
        KernelThrowHelper.CheckLength(src.Length, dst.Length, nameof(Add), nameof(src), "same length as dst");
        fixed (float* d = dst, s = src)
        {
            VectorOps.Add(_simd, d, s, dst.Length);
        }
    }

    /// <inheritdoc />
    public void RmsNorm(ReadOnlySpan<float> x, int rows, int cols, ReadOnlySpan<float> weight, float eps, Span<float> y)
    {
        ThrowIfDisposed();
        const string Op = nameof(RmsNorm);
        KernelThrowHelper.CheckAtLeast(rows, 0, Op, nameof(rows));
        KernelThrowHelper.CheckAtLeast(cols, 1, Op, nameof(cols));
        KernelThrowHelper.CheckLength(x.Length, (long)rows * cols, Op, nameof(x), "[rows, cols]");
        KernelThrowHelper.CheckLength(y.Length, (long)rows * cols, Op, nameof(y), "[rows, cols]");
        if (!weight.IsEmpty)
        {
            KernelThrowHelper.CheckLength(weight.Length, cols, Op, nameof(weight), "[cols] or empty");
        }
        if (!(eps >= 0f) || float.IsInfinity(eps))
        {
            KernelThrowHelper.ThrowArgument(Op, nameof(eps), $"eps must be finite and non-negative, got {eps}");
        }
        fixed (float* px = x, pw = weight, py = y)
        {
            float* w = weight.IsEmpty ? null : pw;
            RunRows(RowOp.RmsNorm, rows, cols, px, py, w, eps, null, 0, null);
        }
    }

    /// <inheritdoc />
    public void Rope(Span<float> x, int rows, int heads, ReadOnlySpan<int> positions, RopeTable table)
    {
        ThrowIfDisposed();
        const string Op = nameof(Rope);
        ArgumentNullException.ThrowIfNull(table);
        KernelThrowHelper.CheckAtLeast(rows, 0, Op, nameof(rows));
        KernelThrowHelper.CheckAtLeast(heads, 1, Op, nameof(heads));
        KernelThrowHelper.CheckLength(x.Length, (long)rows * heads * table.HeadDim, Op, nameof(x), "[rows, heads, table.HeadDim]");
        KernelThrowHelper.CheckLength(positions.Length, rows, Op, nameof(positions), "[rows]");
        for (int r = 0; r < rows; r++)
        {
            if (positions[r] < 0)
            {
                KernelThrowHelper.ThrowArgument(Op, nameof(positions), $"positions[{r}] = {positions[r]} is negative");
            }
        }
        fixed (float* px = x)
        fixed (int* pp = positions)
        {
            RunRows(RowOp.Rope, rows, heads * table.HeadDim, px, px, null, 0f, pp, heads, table.InvFreq);
        }
    }

    /// <inheritdoc />
    public void SoftmaxStable(Span<float> x, int rows, int cols)
    {
        ThrowIfDisposed();
        const string Op = nameof(SoftmaxStable);
        KernelThrowHelper.CheckAtLeast(rows, 0, Op, nameof(rows));
        KernelThrowHelper.CheckAtLeast(cols, 1, Op, nameof(cols));
        KernelThrowHelper.CheckLength(x.Length, (long)rows * cols, Op, nameof(x), "[rows, cols]");
        fixed (float* px = x)
        {
            RunRows(RowOp.Softmax, rows, cols, px, px, null, 0f, null, 0, null);
        }
    }

    /// <inheritdoc />
    public void TopK(ReadOnlySpan<float> scores, int rows, int cols, int k, Span<int> ids, Span<float> values)
    {
        ThrowIfDisposed();
        const string Op = nameof(TopK);
        KernelThrowHelper.CheckAtLeast(rows, 0, Op, nameof(rows));
        KernelThrowHelper.CheckAtLeast(cols, 1, Op, nameof(cols));
        KernelThrowHelper.CheckAtLeast(k, 1, Op, nameof(k));
        if (k > cols)
        {
            KernelThrowHelper.ThrowArgument(Op, nameof(k), $"k = {k} exceeds cols = {cols}");
        }
        KernelThrowHelper.CheckLength(scores.Length, (long)rows * cols, Op, nameof(scores), "[rows, cols]");
        KernelThrowHelper.CheckLength(ids.Length, (long)rows * k, Op, nameof(ids), "[rows, k]");
        KernelThrowHelper.CheckLength(values.Length, (long)rows * k, Op, nameof(values), "[rows, k]");
        fixed (float* ps = scores, pv = values)
        fixed (int* pi = ids)
        {
            for (int r = 0; r < rows; r++)
            {
                Selection.TopK(_simd, ps + ((long)r * cols), cols, k, pi + ((long)r * k), pv + ((long)r * k));
            }
        }
    }

    /// <inheritdoc />
    public void Argmax(ReadOnlySpan<float> x, int rows, int cols, Span<int> ids)
    {
        ThrowIfDisposed();
        const string Op = nameof(Argmax);
        KernelThrowHelper.CheckAtLeast(rows, 0, Op, nameof(rows));
        KernelThrowHelper.CheckAtLeast(cols, 1, Op, nameof(cols));
        KernelThrowHelper.CheckLength(x.Length, (long)rows * cols, Op, nameof(x), "[rows, cols]");
        KernelThrowHelper.CheckLength(ids.Length, rows, Op, nameof(ids), "[rows]");
        fixed (float* px = x)
        {
            for (int r = 0; r < rows; r++)
            {
                ids[r] = Selection.Argmax(_simd, px + ((long)r * cols), cols);
            }
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        lock (_sync)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            _team.Dispose();
            foreach (var scratch in _threadScratch)
            {
                scratch.Dispose();
            }
            _ffnHidden.Dispose();
            _ffnActivation.Dispose();
            _pairInput.Dispose();
            _fp8Input.Dispose();
            _fp8RowScales.Dispose();
            _decodeAttentionTask.Dispose();
        }
    }

    private void ThrowIfDisposed()
    {
        if (_disposed)
        {
            KernelThrowHelper.ThrowDisposed(nameof(CpuKernelBackend));
        }
    }

    private void RunRows(RowOp op, int rows, int cols, float* x, float* y, float* w, float eps, int* positions, int heads, float[]? invFreq,
        float* b = null)
    {
        if (rows == 0)
        {
            return;
        }
        if ((long)rows * cols < ParallelElementThreshold || rows == 1 || _team.Threads == 1)
        {
            RowTask.Execute(op, _simd, 0, rows, cols, x, y, w, eps, positions, heads, invFreq, b);
            return;
        }
        lock (_sync)
        {
            ThrowIfDisposed();
            _rowTask.Set(op, _simd, rows, cols, x, y, w, eps, positions, heads, invFreq, b);
            _team.Run(_rowTask);
        }
    }

    private static string CpuModelName()
    {
        try
        {
            if (OperatingSystem.IsLinux() && File.Exists("/proc/cpuinfo"))
            {
                foreach (var line in File.ReadLines("/proc/cpuinfo"))
                {
                    if (line.StartsWith("model name", StringComparison.Ordinal))
                    {
                        int colon = line.IndexOf(':', StringComparison.Ordinal);
                        if (colon >= 0)
                        {
                            return line[(colon + 1)..].Trim();
                        }
                    }
                }
            }
        }
        catch (IOException)
        {
            // Diagnostics only: fall through to the architecture name.
        }
        catch (UnauthorizedAccessException)
        {
            // Diagnostics only: fall through to the architecture name.
        }
        return $"{RuntimeInformation.ProcessArchitecture} CPU";
    }
}
