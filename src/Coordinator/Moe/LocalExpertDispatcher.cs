using Distributed.Checkpoint;
using Distributed.Kernels;
using Distributed.Kernels.Cuda;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;

namespace Distributed.Coordinator.Moe;

/// <summary>
/// Runs every routed expert in-process on a kernel backend. Used by the in-process engine and as the reference the
/// distributed dispatcher must match bitwise (fp32 wire). Expert weights are read from the checkpoint's memory map on
/// first use of each (layer, expert) and kept. On the CUDA backend's device path it also runs on device rows
/// (<see cref="IDeviceExpertDispatcher"/>), with fp32 or bf16 rounding; FP8 rounding stays on the host path.
/// </summary>
public sealed class LocalExpertDispatcher : IExpertDispatcher, IDeviceExpertDispatcher, IDisposable
{
    private readonly CheckpointReader _checkpoint;
    private readonly IKernelBackend _backend;
    private readonly Llama4TextConfig _c;
    private readonly ExpertWeights?[][] _experts;
    private readonly Lock _loadLock = new();
    private readonly ExpertLoadOptions _options;

    /// <summary>
    /// Creates the dispatcher; <paramref name="checkpoint"/> must outlive it. Experts are loaded with
    /// <paramref name="options"/> (default: as stored, weight-only).
    /// </summary>
    /// <exception cref="CheckpointException"><paramref name="options"/> does not apply to this checkpoint.</exception>
    public LocalExpertDispatcher(CheckpointReader checkpoint, IKernelBackend backend, ExpertLoadOptions? options = null)
    {
        _checkpoint = checkpoint ?? throw new ArgumentNullException(nameof(checkpoint));
        _backend = backend ?? throw new ArgumentNullException(nameof(backend));
        _options = options ?? ExpertLoadOptions.Default;
        if (_options.Problem(checkpoint.ExpertFormat) is { } problem)
        {
            throw new CheckpointException($"{checkpoint.Directory}: {problem}");
        }
        _c = checkpoint.Config;
        _experts = new ExpertWeights?[_c.NumLayers][];
        foreach (int il in _c.MoeLayers)
        {
            _experts[il] = new ExpertWeights?[_c.NumExperts];
        }
    }

    /// <summary>
    /// Rounds the rows as a data plane with these dtypes would, so that an in-process run equals a run on workers
    /// bitwise (<c>infer --wire X</c> without workers): dispatch rows go through <see cref="WireCodec.EncodeRows"/> /
    /// <see cref="WireCodec.DecodeRows"/> in <c>Dispatch</c>, outputs the same way in <c>Combine</c>. Null (default) = exact
    /// fp32, what fp32 on the wire gives.
    /// </summary>
    public (WireDType Dispatch, WireDType Combine)? WireRounding { get; init; }

    /// <summary>Loads every expert now instead of on first use.</summary>
    public void LoadAll()
    {
        foreach (int il in _c.MoeLayers)
        {
            for (int e = 0; e < _c.NumExperts; e++)
            {
                _ = Get(il, e);
            }
        }
    }

    /// <summary>Backend bytes held by loaded experts.</summary>
    public long ResidentBytes => _experts.Where(l => l is not null).SelectMany(l => l!).Sum(x => x?.ResidentBytes ?? 0);

    /// <inheritdoc />
    public ValueTask<DispatchHandle> DispatchAsync(int layer, ReadOnlyMemory<float> hidden, RoutingResult routing, CancellationToken cancellationToken)
    {
        if ((uint)layer >= (uint)_c.NumLayers || _experts[layer] is null)
        {
            throw new ArgumentOutOfRangeException(nameof(layer), layer, "not a MoE layer");
        }
        int h = _c.HiddenSize;
        var plan = DispatchPlan.Build(routing, _c.NumExperts);
        if (hidden.Length != plan.Tokens * h)
        {
            throw new ArgumentException($"hidden has {hidden.Length} values, expected {plan.Tokens} x {h}", nameof(hidden));
        }
        var rows = new float[plan.Rows * h];
        plan.GatherScaled(hidden.Span, h, routing.Weights.Span, rows);
        if (WireRounding is { } dispatchWire)
        {
            RoundTrip(rows, h, dispatchWire.Dispatch);
        }
        var (gateUp, down) = Weights(layer, plan.Experts);
        var outRows = new float[plan.Rows * h];
        _backend.SwiGluFfnGrouped(rows, plan.RowCounts, gateUp, down, outRows);
        if (WireRounding is { } combineWire)
        {
            RoundTrip(outRows, h, combineWire.Combine);
        }
        return ValueTask.FromResult<DispatchHandle>(new LocalHandle(layer, plan, outRows));
    }

    /// <inheritdoc />
    public bool CanRunOnDevice(CudaDeviceStep step)
    {
        ArgumentNullException.ThrowIfNull(step);
        if (_backend is not CudaKernelBackend cuda || !step.RunsOn(cuda))
        {
            return false;
        }
        return WireRounding is not { } r || (r.Dispatch is WireDType.Fp32 or WireDType.Bf16 && r.Combine is WireDType.Fp32 or WireDType.Bf16);
    }

    /// <inheritdoc />
    public void RunOnDevice(CudaDeviceStep step, int layer, DeviceTensor hidden, RoutingResult routing, DeviceTensor output)
    {
        ArgumentNullException.ThrowIfNull(step);
        if ((uint)layer >= (uint)_c.NumLayers || _experts[layer] is null)
        {
            throw new ArgumentOutOfRangeException(nameof(layer), layer, "not a MoE layer");
        }
        if (!CanRunOnDevice(step))
        {
            throw new ArgumentException("the step is not on this dispatcher's CUDA backend, or the wire rounding is FP8", nameof(step));
        }
        int h = _c.HiddenSize;
        var plan = DispatchPlan.Build(routing, _c.NumExperts);
        var weights = routing.Weights.Span;
        var scores = new float[plan.Rows];
        for (int r = 0; r < plan.Rows; r++)
        {
            scores[r] = plan.RowScore(r, weights);
        }
        var (gateUp, down) = Weights(layer, plan.Experts);
        step.RoutedExperts(hidden, plan.Tokens, h, plan.PairTokens, scores, plan.RowOf, plan.TopK, plan.RowCounts, gateUp, down,
            WireRounding?.Dispatch == WireDType.Bf16, WireRounding?.Combine == WireDType.Bf16, output);
    }

    /// <inheritdoc />
    public ValueTask CombineAsync(DispatchHandle handle, Memory<float> output, CancellationToken cancellationToken)
    {
        if (handle is not LocalHandle local)
        {
            throw new ArgumentException("handle was not produced by this dispatcher", nameof(handle));
        }
        local.Plan.Combine(local.Output, _c.HiddenSize, output.Span);
        return ValueTask.CompletedTask;
    }

    // rows ← decode(encode(rows)) in the wire dtype, row by row as the data plane does it.
    private static void RoundTrip(float[] rows, int hidden, WireDType dtype)
    {
        int rowBytes = (int)WireCodec.RowBytes(hidden, dtype);
        var bytes = new byte[rowBytes];
        for (int r = 0; r < rows.Length / hidden; r++)
        {
            var row = rows.AsSpan(r * hidden, hidden);
            WireCodec.EncodeRows(row, hidden, dtype, bytes);
            WireCodec.DecodeRows(bytes, hidden, dtype, row);
        }
    }

    /// <inheritdoc />
    public ValueTask CombineAddAsync(DispatchHandle handle, Memory<float> output, CancellationToken cancellationToken)
    {
        if (handle is not LocalHandle local)
        {
            throw new ArgumentException("handle was not produced by this dispatcher", nameof(handle));
        }
        local.Plan.CombineAdd(local.Output, _c.HiddenSize, output.Span);
        return ValueTask.CompletedTask;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        foreach (var layer in _experts)
        {
            if (layer is null)
            {
                continue;
            }
            for (int e = 0; e < layer.Length; e++)
            {
                layer[e]?.Dispose();
                layer[e] = null;
            }
        }
    }

    private ExpertWeights Get(int layer, int expert)
    {
        var slot = _experts[layer];
        var w = Volatile.Read(ref slot[expert]);
        if (w is not null)
        {
            return w;
        }
        lock (_loadLock)
        {
            return slot[expert] ??= ExpertWeights.Load(_checkpoint, _backend, layer, expert, _options);
        }
    }

    private sealed class LocalHandle(int layer, DispatchPlan plan, float[] output) : DispatchHandle(layer, plan.Tokens)
    {
        public DispatchPlan Plan { get; } = plan;
        public float[] Output { get; } = output;
    }

    /// <summary>The gate/up and down matrices of <paramref name="experts"/> of <paramref name="layer"/>, in that order.</summary>
    private (IWeightMatrix[] GateUp, IWeightMatrix[] Down) Weights(int layer, int[] experts)
    {
        var gateUp = new IWeightMatrix[experts.Length];
        var down = new IWeightMatrix[experts.Length];
        for (int g = 0; g < experts.Length; g++)
        {
            var w = Get(layer, experts[g]);
            gateUp[g] = w.GateUp;
            down[g] = w.Down;
        }
        return (gateUp, down);
    }
}
