namespace Distributed.Checkpoint;

/// <summary>
/// A Hugging Face Llama 4 model directory opened for reading: <c>config.json</c> (text config or the multimodal
/// release's nested <c>text_config</c>), and single or sharded safetensors (<c>model.safetensors.index.json</c>),
/// memory-mapped. Tensor names passed to this API never carry the <c>language_model.</c> prefix of the multimodal
/// layout; the reader adds it. The vision tower and projector of a multimodal release (<c>vision_model.*</c>,
/// <c>multi_modal_projector.*</c>) are read by their full names through <see cref="VisionConfig"/>,
/// <see cref="GetVisionBf16"/> and <see cref="GetVisionF32"/>.
/// <para>
/// <see cref="Open"/> validates everything before returning: the config (see <see cref="Llama4ConfigParser"/>), every
/// safetensors header (see <see cref="SafetensorsFile"/>), the index against the shards, and that every tensor the
/// Llama 4 text model (and, with a <c>vision_config</c>, the vision tower) needs exists with the dtype and shape the config
/// implies. Opening maps files but reads only
/// their headers, so it costs milliseconds even for an 800 GB checkpoint. Spans returned point into the mappings:
/// valid until <see cref="Dispose"/>. Reads are thread-safe; <see cref="Dispose"/> must not race with them.
/// </para>
/// </summary>
public sealed partial class CheckpointReader : IDisposable
{
    /// <summary>Name of the model config file.</summary>
    public const string ConfigFileName = "config.json";
    /// <summary>Name of the sharded-checkpoint index file.</summary>
    public const string IndexFileName = "model.safetensors.index.json";
    /// <summary>Name of the single-file checkpoint.</summary>
    public const string SingleFileName = "model.safetensors";

    private readonly SafetensorsFile[] _files;
    private readonly Dictionary<string, Entry> _tensors;
    private readonly string[] _sortedNames;
    private bool _disposed;

    private CheckpointReader(string directory, Llama4TextConfig config, CheckpointQuantization quantization, string prefix, SafetensorsFile[] files,
        Dictionary<string, Entry> tensors)
    {
        Directory = directory;
        Config = config;
        Quantization = quantization;
        TensorPrefix = prefix;
        _files = files;
        _tensors = tensors;
        _sortedNames = tensors.Keys.Order(StringComparer.Ordinal).ToArray();
        Fingerprint = ComputeFingerprint(config, _sortedNames, tensors);
    }

    /// <summary>Opens and validates a model directory.</summary>
    /// <exception cref="CheckpointException">Missing/malformed files; the message names the file or field.</exception>
    public static CheckpointReader Open(string modelDirectory)
    {
        ArgumentException.ThrowIfNullOrEmpty(modelDirectory);
        string dir = Path.GetFullPath(modelDirectory);
        if (!System.IO.Directory.Exists(dir))
        {
            throw new CheckpointException($"{dir}: model directory does not exist");
        }
        string configPath = Path.Combine(dir, ConfigFileName);
        string configText = ReadText(configPath, "a Hugging Face model directory needs config.json");
        var config = Llama4ConfigParser.Parse(configText, configPath, out string prefix);
        var quantization = CheckpointQuantization.Parse(configText, configPath);
        var vision = Llama4VisionConfigParser.Parse(configText, configPath, config);

        var (paths, weightMap) = LocateWeights(dir);
        var files = new List<SafetensorsFile>(paths.Count);
        try
        {
            foreach (string p in paths)
            {
                files.Add(SafetensorsFile.Open(p));
            }
            var tensors = BuildTensorTable(dir, prefix, files, weightMap);
            var reader = new CheckpointReader(dir, config, quantization, prefix, files.ToArray(), tensors);
            reader.ValidateModelTensors();
            reader.AttachVision(vision, files, weightMap);
            return reader;
        }
        catch
        {
            foreach (var f in files)
            {
                f.Dispose();
            }
            throw;
        }
    }

    /// <summary>The model directory (full path).</summary>
    public string Directory { get; }

    /// <summary>The validated text config.</summary>
    public Llama4TextConfig Config { get; }

    /// <summary><c>""</c> for <c>llama4_text</c> checkpoints, <c>"language_model."</c> for the multimodal layout.</summary>
    public string TensorPrefix { get; }

    /// <summary>The checkpoint's <c>quantization_config</c> (<see cref="CheckpointQuantization.None"/> for bf16 checkpoints).</summary>
    public CheckpointQuantization Quantization { get; }

    /// <summary>
    /// How the routed experts are stored: fused bf16 tensors (<c>experts.gate_up_proj</c>, <c>experts.down_proj</c>), or
    /// the FP8 release's unfused per-expert F8_E4M3 projections with per-output-channel scales. Every MoE layer uses
    /// the same format (checked by <see cref="Open"/>).
    /// </summary>
    public Protocol.Contracts.ExpertWeightFormat ExpertFormat { get; private set; }

    /// <summary>
    /// Lower-case hex SHA-256 over the canonical text config and the tensor index (names, dtypes, shapes): the
    /// UTF-8 bytes of <c>"llama4-checkpoint-fingerprint/v1\n"</c>, <see cref="Llama4ConfigParser.ToJson"/> of
    /// <see cref="Config"/>, <c>"tensors\n"</c>, then one line <c>name \t DTYPE \t d0,d1,...\n</c> per text-model
    /// tensor in ordinal name order (names without <see cref="TensorPrefix"/>). File contents are not hashed, so it
    /// is cheap for any checkpoint size; two checkpoints with the same architecture and layout but different weight
    /// values have the same fingerprint.
    /// </summary>
    public string Fingerprint { get; }

    /// <summary>Text-model tensor names (without prefix), in ordinal order.</summary>
    public IReadOnlyList<string> TensorNames => _sortedNames;

    /// <summary>Full paths of the safetensors files, in index order (or the single file).</summary>
    public IReadOnlyList<string> Files => _files.Select(f => f.Path).ToArray();

    /// <summary>Looks a text-model tensor up (name without prefix). <see cref="TensorInfo.Name"/> carries the full name.</summary>
    public bool TryGetInfo(string name, out TensorInfo info)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_tensors.TryGetValue(name, out var e))
        {
            info = e.Info;
            return true;
        }
        info = null!;
        return false;
    }

    /// <summary>A text-model tensor (name without prefix).</summary>
    /// <exception cref="CheckpointException">No such tensor.</exception>
    public TensorInfo GetInfo(string name) => Find(name).Info;

    /// <summary>A whole bf16 tensor as raw bits, validated against <paramref name="expectedShape"/>.</summary>
    /// <exception cref="CheckpointException">Missing, wrong dtype or shape, or truncated; names the tensor.</exception>
    public ReadOnlySpan<ushort> GetBf16(string name, params ReadOnlySpan<long> expectedShape)
    {
        var e = Find(name);
        Check(e, expectedShape, DType.BF16);
        long count = e.Info.ElementCount;
        if (count > int.MaxValue)
        {
            throw new CheckpointException(
                $"tensor '{name}' in {e.File.Path} has {count} elements, more than one span can hold; read expert slices or raw byte ranges");
        }
        return e.File.GetSpan<ushort>(e.Info, 0, (int)count);
    }

    /// <summary>
    /// Expert <paramref name="expert"/>'s slice <c>[a, b]</c> of a fused <c>[E, a, b]</c> bf16 tensor, touching only that
    /// slice's pages of the mapping.
    /// </summary>
    /// <param name="name">Tensor name without prefix (e.g. <see cref="Llama4TensorNames.ExpertsGateUp"/>).</param>
    /// <param name="expert">Expert index in <c>[0, E)</c>.</param>
    /// <param name="expectedShape">Exactly three dimensions <c>E, a, b</c>; the whole tensor must have this shape.</param>
    /// <returns>The <c>a·b</c> elements of <c>tensor[expert]</c>, row-major.</returns>
    /// <exception cref="CheckpointException">Missing tensor, dtype other than BF16, shape mismatch, or a slice over 2^31 − 1 elements.</exception>
    /// <exception cref="ArgumentException"><paramref name="expectedShape"/> does not have three dimensions.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="expert"/> is outside <c>[0, E)</c>.</exception>
    public ReadOnlySpan<ushort> GetExpertSlice(string name, int expert, params ReadOnlySpan<long> expectedShape)
    {
        if (expectedShape.Length != 3)
        {
            throw new ArgumentException($"expert tensors are [E, a, b]; got {expectedShape.Length} dimensions", nameof(expectedShape));
        }
        if (expert < 0 || expert >= expectedShape[0])
        {
            throw new ArgumentOutOfRangeException(nameof(expert), expert, $"expert must be in [0, {expectedShape[0]}) for tensor '{name}'");
        }
        var e = Find(name);
        Check(e, expectedShape, DType.BF16);
        long slice = checked(expectedShape[1] * expectedShape[2]);
        if (slice > int.MaxValue)
        {
            throw new CheckpointException($"tensor '{name}' in {e.File.Path}: one expert's slice has {slice} elements, more than one span can hold");
        }
        return e.File.GetSpan<ushort>(e.Info, checked(expert * slice), (int)slice);
    }

    /// <summary>
    /// FP8 release: expert <paramref name="expert"/>'s <paramref name="projection"/> of MoE layer <paramref name="layer"/>,
    /// the F8_E4M3 codes <c>[out, in]</c> (nn.Linear layout; gate/up <c>[I, H]</c>, down <c>[H, I]</c>) straight from the
    /// mapping, and its <c>weight_scale</c> <c>[out, 1]</c> widened to float32 (exact from bf16). Both are checked: no NaN
    /// code (<c>0x7F</c>/<c>0xFF</c>), every scale finite and positive.
    /// </summary>
    /// <exception cref="CheckpointException">Not an FP8 checkpoint, a missing tensor, a wrong dtype or shape, a NaN code or a
    /// bad scale; the message names the tensor and the offending index.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The layer is not a MoE layer or the expert is out of range.</exception>
    public ReadOnlySpan<byte> GetFp8ExpertProjection(int layer, int expert, ExpertProjection projection, out float[] scales)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        var c = Config;
        if (layer < 0 || layer >= c.NumLayers || !c.IsMoeLayer(layer))
        {
            throw new ArgumentOutOfRangeException(nameof(layer), layer, "not a MoE layer of this model");
        }
        if (expert < 0 || expert >= c.NumExperts)
        {
            throw new ArgumentOutOfRangeException(nameof(expert), expert, $"expert must be in [0, {c.NumExperts})");
        }
        if (ExpertFormat != Protocol.Contracts.ExpertWeightFormat.Fp8E4M3)
        {
            throw new CheckpointException($"the routed experts of the checkpoint in {Directory} are {ExpertFormat}, not FP8");
        }
        long outF = projection == ExpertProjection.Down ? c.HiddenSize : c.IntermediateSize;
        long inF = projection == ExpertProjection.Down ? c.IntermediateSize : c.HiddenSize;
        string module = Llama4TensorNames.ExpertProjection(layer, expert, projection);
        var w = Find(module + ".weight");
        Check(w, [outF, inF], DType.F8E4M3);
        var s = Find(module + ".weight_scale");
        Check(s, [outF, 1], NormDTypes);
        scales = s.File.ReadF32(s.Info.Name);
        for (int i = 0; i < scales.Length; i++)
        {
            if (!(scales[i] > 0f) || !float.IsFinite(scales[i]))
            {
                throw new CheckpointException(
                    $"tensor '{s.Info.Name}' in {s.File.Path}: row {i} is {scales[i]}; FP8 weight scales must be finite and positive");
            }
        }
        var codes = w.File.GetSpan<byte>(w.Info, 0, checked((int)(outF * inF)));
        int nan = Kernels.Fp8E4M3.IndexOfNaN(codes);
        if (nan >= 0)
        {
            throw new CheckpointException(
                $"tensor '{w.Info.Name}' in {w.File.Path}: element [{nan / inF}, {nan % inF}] is the NaN code 0x{codes[nan]:X2}");
        }
        return codes;
    }

    /// <summary>A small tensor (norm weights) converted to float32 from bf16, f16 or f32.</summary>
    /// <exception cref="CheckpointException">Missing, another dtype, or wrong shape; names the tensor.</exception>
    public float[] GetF32(string name, params ReadOnlySpan<long> expectedShape)
    {
        var e = Find(name);
        Check(e, expectedShape, DType.BF16, DType.F16, DType.F32);
        return e.File.ReadF32(e.Info.Name);
    }

    /// <summary>Bytes <c>[byteOffset, byteOffset + byteLength)</c> of a tensor's data, for streaming large tensors (uploads).</summary>
    /// <exception cref="CheckpointException">No such tensor.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The range is not inside the tensor.</exception>
    public ReadOnlySpan<byte> GetRawBytes(string name, long byteOffset, int byteLength)
    {
        var e = Find(name);
        return e.File.GetBytes(e.Info.Name, byteOffset, byteLength);
    }

    /// <inheritdoc />
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        foreach (var f in _files)
        {
            f.Dispose();
        }
    }

    private Entry Find(string name)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        ArgumentNullException.ThrowIfNull(name);
        if (!_tensors.TryGetValue(name, out var e))
        {
            throw new CheckpointException($"tensor '{TensorPrefix}{name}' is missing from the checkpoint in {Directory}");
        }
        return e;
    }

    private static void Check(Entry e, ReadOnlySpan<long> expectedShape, params ReadOnlySpan<DType> allowed)
    {
        bool ok = false;
        foreach (var d in allowed)
        {
            ok |= d == e.Info.DType;
        }
        if (!ok)
        {
            string want = allowed.Length == 1 ? allowed[0].ToString() : string.Join(" or ", allowed.ToArray());
            throw new CheckpointException($"tensor '{e.Info.Name}' in {e.File.Path} has dtype {e.Info.DType}, expected {want}");
        }
        if (!expectedShape.SequenceEqual(e.Info.Shape))
        {
            throw new CheckpointException(
                $"tensor '{e.Info.Name}' in {e.File.Path} has shape {FormatShape(e.Info.Shape)}, expected {FormatShape(expectedShape)}");
        }
    }

    internal static string FormatShape(ReadOnlySpan<long> shape) => "[" + string.Join(", ", shape.ToArray()) + "]";

    private static string ReadText(string path, string whyNeeded)
    {
        if (!File.Exists(path))
        {
            throw new CheckpointException($"{path}: not found ({whyNeeded})");
        }
        try
        {
            return File.ReadAllText(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            throw new CheckpointException($"{path}: cannot read: {ex.Message}", ex);
        }
    }

    private readonly record struct Entry(SafetensorsFile File, TensorInfo Info);
}
