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
    /// Reads expert <paramref name="expert"/> of MoE layer <paramref name="layer"/> from the fused checkpoint tensors
    /// (only that expert's slice of the memory map is touched) and prepares it on <paramref name="backend"/>.
    /// </summary>
    /// <exception cref="CheckpointException">The layer is not a MoE layer, the expert is out of range, or a tensor is bad.</exception>
    public static ExpertWeights Load(CheckpointReader checkpoint, IKernelBackend backend, int layer, int expert)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        ArgumentNullException.ThrowIfNull(backend);
        var cfg = checkpoint.Config;
        if (layer < 0 || layer >= cfg.NumLayers || !cfg.IsMoeLayer(layer))
        {
            throw new CheckpointException($"layer {layer} is not a MoE layer of this model (moe_layers = [{string.Join(", ", cfg.MoeLayers)}])");
        }
        if (expert < 0 || expert >= cfg.NumExperts)
        {
            throw new CheckpointException($"expert {expert} is out of range [0, {cfg.NumExperts}) in layer {layer}");
        }
        long h = cfg.HiddenSize, i = cfg.IntermediateSize, e = cfg.NumExperts;
        var gateUpBits = checkpoint.GetExpertSlice(Llama4TensorNames.ExpertsGateUp(layer), expert, e, h, 2 * i);
        IWeightMatrix gateUp = backend.CreateWeight(gateUpBits, (int)h, (int)(2 * i), WeightLayout.InOut);
        try
        {
            var downBits = checkpoint.GetExpertSlice(Llama4TensorNames.ExpertsDown(layer), expert, e, i, h);
            IWeightMatrix down = backend.CreateWeight(downBits, (int)i, (int)h, WeightLayout.InOut);
            return new ExpertWeights(layer, expert, gateUp, down);
        }
        catch
        {
            gateUp.Dispose();
            throw;
        }
    }

    /// <inheritdoc />
    public void Dispose()
    {
        GateUp.Dispose();
        Down.Dispose();
    }
}
