namespace Distributed.Kernels.Checkpoint;

/// <summary>
/// A Hugging Face Llama 4 model directory opened for reading: <c>config.json</c> (text config or the multimodal
/// release's nested <c>text_config</c>), and single or sharded safetensors (<c>model.safetensors.index.json</c>),
/// memory-mapped. Tensor names passed to this API never carry the <c>language_model.</c> prefix of the multimodal
/// layout; the reader adds it. Vision tensors are ignored.
/// </summary>
public sealed partial class CheckpointReader : IDisposable
{
    /// <summary>Opens and validates a model directory.</summary>
    /// <exception cref="CheckpointException">Missing/malformed files; the message names the file or field.</exception>
    public static CheckpointReader Open(string modelDirectory) => throw new NotImplementedException();

    /// <summary>The model directory.</summary>
    public string Directory => throw new NotImplementedException();

    /// <summary>The validated text config.</summary>
    public Llama4TextConfig Config => throw new NotImplementedException();

    /// <summary><c>""</c> for <c>llama4_text</c> checkpoints, <c>"language_model."</c> for the multimodal layout.</summary>
    public string TensorPrefix => throw new NotImplementedException();

    /// <summary>Lower-case hex SHA-256 over the canonical text config and the tensor index (names, dtypes, shapes).</summary>
    public string Fingerprint => throw new NotImplementedException();

    /// <summary>Looks a text-model tensor up (name without prefix).</summary>
    public bool TryGetInfo(string name, out TensorInfo info) => throw new NotImplementedException();

    /// <summary>A whole bf16 tensor as raw bits, validated against <paramref name="expectedShape"/>.</summary>
    /// <exception cref="CheckpointException">Missing, wrong dtype or shape, or truncated; names the tensor.</exception>
    public ReadOnlySpan<ushort> GetBf16(string name, params ReadOnlySpan<long> expectedShape) => throw new NotImplementedException();

    /// <summary>
    /// Expert <paramref name="expert"/>'s slice <c>[a, b]</c> of a fused <c>[E, a, b]</c> bf16 tensor, touching only that
    /// slice's pages of the mapping.
    /// </summary>
    public ReadOnlySpan<ushort> GetExpertSlice(string name, int expert, params ReadOnlySpan<long> expectedShape) => throw new NotImplementedException();

    /// <summary>A small tensor (norm weights) converted to float32 from bf16, f16 or f32.</summary>
    public float[] GetF32(string name, params ReadOnlySpan<long> expectedShape) => throw new NotImplementedException();

    /// <inheritdoc />
    public void Dispose() => throw new NotImplementedException();
}
