namespace Distributed.Checkpoint;

/// <summary>One routed expert's weights prepared on a backend: <c>gate_up</c> <c>[H, 2I]</c> and <c>down</c> <c>[I, H]</c>.</summary>
public sealed class ExpertWeights : IDisposable
{
    /// <summary>Wraps prepared matrices (ownership moves to this object).</summary>
    public ExpertWeights(int layer, int expert, IWeightMatrix gateUp, IWeightMatrix down)
    {
        Layer = layer;
        Expert = expert;
        GateUp = gateUp;
        Down = down;
    }

    /// <summary>Decoder layer index.</summary>
    public int Layer { get; }
    /// <summary>Expert id within the layer.</summary>
    public int Expert { get; }
    /// <summary><c>[H, 2I]</c>, gate columns first.</summary>
    public IWeightMatrix GateUp { get; }
    /// <summary><c>[I, H]</c>.</summary>
    public IWeightMatrix Down { get; }
    /// <summary>Backend memory of both matrices.</summary>
    public long ResidentBytes => GateUp.ResidentBytes + Down.ResidentBytes;

    /// <summary>
    /// Reads expert <paramref name="expert"/> of MoE layer <paramref name="layer"/> (only that expert's slices of the
    /// memory map are touched) and prepares it on <paramref name="backend"/> as <paramref name="options"/> say:
    /// <list type="bullet">
    /// <item>bf16 checkpoint, no quantization: the fused slices as bf16 weights;</item>
    /// <item>bf16 checkpoint, <see cref="ExpertQuantization.Fp8"/>: each output channel quantized by the compressed-tensors
    /// recipe (<see cref="Fp8E4M3.QuantizeWeightRow"/>), then FP8 weights;</item>
    /// <item>FP8 checkpoint: <c>gate_proj</c> and <c>up_proj</c> stacked into <c>gate_up</c> (gate first, as HF fuses
    /// them), <c>down_proj</c> as is, codes and scales checked on the way.</item>
    /// </list>
    /// FP8 weights carry <see cref="ExpertLoadOptions.Activations"/>.
    /// </summary>
    /// <exception cref="CheckpointException">The layer is not a MoE layer, the expert is out of range, the options do not
    /// apply to this checkpoint, or a tensor is bad (NaN code, bad scale, dtype, shape).</exception>
    public static ExpertWeights Load(CheckpointReader checkpoint, IKernelBackend backend, int layer, int expert, ExpertLoadOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        ArgumentNullException.ThrowIfNull(backend);
        options ??= ExpertLoadOptions.Default;
        var cfg = checkpoint.Config;
        if (layer < 0 || layer >= cfg.NumLayers || !cfg.IsMoeLayer(layer))
        {
            throw new CheckpointException($"layer {layer} is not a MoE layer of this model (moe_layers = [{string.Join(", ", cfg.MoeLayers)}])");
        }
        if (expert < 0 || expert >= cfg.NumExperts)
        {
            throw new CheckpointException($"expert {expert} is out of range [0, {cfg.NumExperts}) in layer {layer}");
        }
        if (options.Problem(checkpoint.ExpertFormat) is { } problem)
        {
            throw new CheckpointException($"{checkpoint.Directory}: {problem}");
        }
        if (checkpoint.ExpertFormat == Protocol.Contracts.ExpertWeightFormat.Fp8E4M3)
        {
            return LoadFp8(checkpoint, backend, layer, expert, options.Activations);
        }
        long h = cfg.HiddenSize, i = cfg.IntermediateSize, e = cfg.NumExperts;
        var gateUpBits = checkpoint.GetExpertSlice(Llama4TensorNames.ExpertsGateUp(layer), expert, e, h, 2 * i);
        IWeightMatrix gateUp = options.Quantize == ExpertQuantization.Fp8
            ? QuantizeToFp8(backend, gateUpBits, (int)h, (int)(2 * i), options.Activations)
            : backend.CreateWeight(gateUpBits, (int)h, (int)(2 * i), WeightLayout.InOut);
        try
        {
            var downBits = checkpoint.GetExpertSlice(Llama4TensorNames.ExpertsDown(layer), expert, e, i, h);
            IWeightMatrix down = options.Quantize == ExpertQuantization.Fp8
                ? QuantizeToFp8(backend, downBits, (int)i, (int)h, options.Activations)
                : backend.CreateWeight(downBits, (int)i, (int)h, WeightLayout.InOut);
            return new ExpertWeights(layer, expert, gateUp, down);
        }
        catch
        {
            gateUp.Dispose();
            throw;
        }
    }

    private static ExpertWeights LoadFp8(CheckpointReader checkpoint, IKernelBackend backend, int layer, int expert, Fp8ActivationMode activations)
    {
        int h = checkpoint.Config.HiddenSize, i = checkpoint.Config.IntermediateSize;
        var gate = checkpoint.GetFp8ExpertProjection(layer, expert, ExpertProjection.Gate, out float[] gateScales);
        byte[] gateUpCodes = GC.AllocateUninitializedArray<byte>(checked(2 * i * h));
        gate.CopyTo(gateUpCodes);
        var up = checkpoint.GetFp8ExpertProjection(layer, expert, ExpertProjection.Up, out float[] upScales);
        up.CopyTo(gateUpCodes.AsSpan(i * h));
        IWeightMatrix gateUp = backend.CreateFp8Weight(gateUpCodes, [.. gateScales, .. upScales], h, 2 * i, WeightLayout.OutIn, activations);
        try
        {
            var down = checkpoint.GetFp8ExpertProjection(layer, expert, ExpertProjection.Down, out float[] downScales);
            return new ExpertWeights(layer, expert, gateUp, backend.CreateFp8Weight(down, downScales, i, h, WeightLayout.OutIn, activations));
        }
        catch
        {
            gateUp.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Quantizes a bf16 <c>[inFeatures, outFeatures]</c> (<see cref="WeightLayout.InOut"/>) matrix per output channel
    /// (column) with <see cref="Fp8E4M3.QuantizeWeightRow"/> and prepares it on the backend. Columns are gathered 64 at
    /// a time (rows read contiguously) and quantized in parallel.
    /// </summary>
    internal static IWeightMatrix QuantizeToFp8(IKernelBackend backend, ReadOnlySpan<ushort> inOut, int inFeatures, int outFeatures,
        Fp8ActivationMode activations)
    {
        var (codes, scales) = QuantizeColumns(inOut, inFeatures, outFeatures);
        return backend.CreateFp8Weight(codes, scales, inFeatures, outFeatures, WeightLayout.OutIn, activations);
    }

    /// <summary>
    /// The per-output-channel FP8 quantization of a bf16 <c>[inFeatures, outFeatures]</c> matrix: codes
    /// <c>[outFeatures, inFeatures]</c> (nn.Linear layout, as the FP8 release stores them) and one scale per output
    /// channel (bf16 values widened to float32).
    /// </summary>
    internal static unsafe (byte[] Codes, float[] Scales) QuantizeColumns(ReadOnlySpan<ushort> inOut, int inFeatures, int outFeatures)
    {
        const int Block = 64;
        byte[] codes = GC.AllocateUninitializedArray<byte>(checked(inFeatures * outFeatures));
        float[] scales = new float[outFeatures];
        int blocks = (outFeatures + Block - 1) / Block;
        fixed (ushort* source = inOut)
        {
            nint src = (nint)source;
            Parallel.For(0, blocks, () => new ushort[Block * inFeatures], (b, _, columns) =>
            {
                ushort* s = (ushort*)src;
                int c0 = b * Block;
                int width = Math.Min(Block, outFeatures - c0);
                for (int k = 0; k < inFeatures; k++)
                {
                    ushort* row = s + ((long)k * outFeatures) + c0;
                    for (int j = 0; j < width; j++)
                    {
                        columns[(j * inFeatures) + k] = row[j];
                    }
                }
                for (int j = 0; j < width; j++)
                {
                    ushort scale = Fp8E4M3.QuantizeWeightRow(columns.AsSpan(j * inFeatures, inFeatures), codes.AsSpan((c0 + j) * inFeatures, inFeatures));
                    scales[c0 + j] = DTypeInfo.Bf16ToFloat(scale);
                }
                return columns;
            }, _ => { });
        }
        return (codes, scales);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        GateUp.Dispose();
        Down.Dispose();
    }
}
