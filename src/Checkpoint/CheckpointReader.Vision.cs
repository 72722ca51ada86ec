namespace Distributed.Checkpoint;

public sealed partial class CheckpointReader
{
    private Dictionary<string, Entry> _visionTensors = new(StringComparer.Ordinal);

    /// <summary>
    /// The vision tower's config when the checkpoint is a multimodal release (<c>model_type: llama4</c> with a
    /// <c>vision_config</c>), else null. When set, every tensor of <see cref="RequiredVisionTensors"/> was validated by
    /// <see cref="Open"/> like the text tensors.
    /// </summary>
    public Llama4VisionConfig? VisionConfig { get; private set; }

    /// <summary>Names of the vision-tower and projector tensors (full names), in ordinal order; empty without a vision tower.</summary>
    public IReadOnlyList<string> VisionTensorNames => [.. _visionTensors.Keys.Order(StringComparer.Ordinal)];

    /// <summary>
    /// Every tensor the Llama 4 vision tower and projector of <paramref name="config"/> read, in module order (see
    /// <see cref="Llama4VisionTensorNames"/>): matrices BF16; embeddings, norm weights and biases any float dtype.
    /// </summary>
    public static IEnumerable<RequiredTensor> RequiredVisionTensors(Llama4VisionConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        long h = config.HiddenSize, i = config.IntermediateSize;
        yield return new(Llama4VisionTensorNames.PatchEmbedding, [h, config.PatchInputs], false, false);
        yield return new(Llama4VisionTensorNames.ClassEmbedding, [h], true, false);
        yield return new(Llama4VisionTensorNames.PositionalEmbedding, [config.TokensPerTile, h], true, false);
        yield return new(Llama4VisionTensorNames.PreNormWeight, [h], true, false);
        yield return new(Llama4VisionTensorNames.PreNormBias, [h], true, false);
        for (int l = 0; l < config.NumLayers; l++)
        {
            foreach (char p in "qkvo")
            {
                yield return new(Llama4VisionTensorNames.AttentionWeight(l, p), [h, h], false, false);
                yield return new(Llama4VisionTensorNames.AttentionBias(l, p), [h], true, false);
            }
            yield return new(Llama4VisionTensorNames.MlpFc1Weight(l), [i, h], false, false);
            yield return new(Llama4VisionTensorNames.MlpFc1Bias(l), [i], true, false);
            yield return new(Llama4VisionTensorNames.MlpFc2Weight(l), [h, i], false, false);
            yield return new(Llama4VisionTensorNames.MlpFc2Bias(l), [h], true, false);
            yield return new(Llama4VisionTensorNames.InputNormWeight(l), [h], true, false);
            yield return new(Llama4VisionTensorNames.InputNormBias(l), [h], true, false);
            yield return new(Llama4VisionTensorNames.PostAttentionNormWeight(l), [h], true, false);
            yield return new(Llama4VisionTensorNames.PostAttentionNormBias(l), [h], true, false);
        }
        yield return new(Llama4VisionTensorNames.PostNormWeight, [h], true, false);
        yield return new(Llama4VisionTensorNames.PostNormBias, [h], true, false);
        yield return new(Llama4VisionTensorNames.AdapterFc1, [config.ProjectorInputDim, i], false, false);
        yield return new(Llama4VisionTensorNames.AdapterFc2, [config.VisionOutputDim, config.ProjectorInputDim], false, false);
        yield return new(Llama4VisionTensorNames.Projector, [config.TextHiddenSize, config.VisionOutputDim], false, false);
    }

    /// <summary>A whole bf16 vision tensor (full name) as raw bits, validated against <paramref name="expectedShape"/>.</summary>
    /// <exception cref="CheckpointException">Missing, wrong dtype or shape; names the tensor.</exception>
    public ReadOnlySpan<ushort> GetVisionBf16(string name, params ReadOnlySpan<long> expectedShape)
    {
        var e = FindVision(name);
        Check(e, expectedShape, DType.BF16);
        return e.File.GetSpan<ushort>(e.Info, 0, checked((int)e.Info.ElementCount));
    }

    /// <summary>A vision tensor (full name) converted to float32 from bf16, f16 or f32.</summary>
    /// <exception cref="CheckpointException">Missing, another dtype, or wrong shape; names the tensor.</exception>
    public float[] GetVisionF32(string name, params ReadOnlySpan<long> expectedShape)
    {
        var e = FindVision(name);
        Check(e, expectedShape, DType.BF16, DType.F16, DType.F32);
        return e.File.ReadF32(e.Info.Name);
    }

    private Entry FindVision(string name)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(name);
        if (VisionConfig is null)
        {
            throw new CheckpointException($"the checkpoint in {Directory} has no vision tower (config.json has no vision_config)");
        }
        if (!_visionTensors.TryGetValue(name, out var e))
        {
            throw new CheckpointException($"tensor '{name}' is missing from the checkpoint in {Directory}");
        }
        return e;
    }

    /// <summary>
    /// Collects the vision-tower and projector tensors (with an index: each where the index puts it, and no shard holding one
    /// the index omits or places elsewhere) and checks each <see cref="RequiredVisionTensors"/> entry.
    /// </summary>
    private void AttachVision(Llama4VisionConfig? config, List<SafetensorsFile> files, Dictionary<string, string>? weightMap)
    {
        if (config is null)
        {
            return;
        }
        var table = new Dictionary<string, Entry>(StringComparer.Ordinal);
        var byName = files.ToDictionary(f => Path.GetFileName(f.Path), StringComparer.Ordinal);
        foreach (var shard in files)
        {
            foreach (string tensor in shard.TensorNames.Where(Llama4VisionTensorNames.IsVisionTensor))
            {
                if (weightMap is not null)
                {
                    if (!weightMap.TryGetValue(tensor, out string? mapped))
                    {
                        throw new CheckpointException($"{shard.Path}: holds tensor '{tensor}', which {IndexFileName} does not list");
                    }
                    if (mapped != Path.GetFileName(shard.Path))
                    {
                        throw new CheckpointException($"{shard.Path}: holds tensor '{tensor}', which {IndexFileName} places in '{mapped}'");
                    }
                }
                if (!table.TryAdd(tensor, new Entry(shard, shard.GetInfo(tensor))))
                {
                    throw new CheckpointException($"{shard.Path}: tensor '{tensor}' is also stored in {table[tensor].File.Path}");
                }
            }
        }
        if (weightMap is not null)
        {
            foreach (var (tensor, file) in weightMap.Where(kv => Llama4VisionTensorNames.IsVisionTensor(kv.Key)))
            {
                if (!table.ContainsKey(tensor) && byName.TryGetValue(file, out var shard) && !shard.TryGetInfo(tensor, out _))
                {
                    throw new CheckpointException($"{Path.Combine(Directory, IndexFileName)}: tensor '{tensor}' is mapped to '{file}', which does not contain it");
                }
            }
        }
        foreach (var t in RequiredVisionTensors(config))
        {
            if (!table.TryGetValue(t.Name, out var entry))
            {
                throw new CheckpointException(
                    $"tensor '{t.Name}' (shape {FormatShape(t.Shape)}) is missing from the checkpoint in {Directory} (config.json has a vision_config)");
            }
            Check(entry, t.Shape, t.IsNorm ? NormDTypes : MatrixDTypes);
        }
        _visionTensors = table;
        VisionConfig = config;
    }
}
