using MessagePack;

namespace Distributed.Protocol.Contracts;

/// <summary>
/// The facts about a model that coordinator, workers and the placement grain must agree on. Built from a checkpoint
/// (<c>CheckpointReader</c>) on each side; two sides with different <see cref="Fingerprint"/>s never talk.
/// </summary>
/// <param name="Fingerprint">Lower-case hex SHA-256 over the canonical text config and the tensor index.</param>
/// <param name="HiddenSize"><c>hidden_size</c>: elements per token row.</param>
/// <param name="IntermediateSize"><c>intermediate_size</c> of each routed expert.</param>
/// <param name="NumLayers"><c>num_hidden_layers</c>.</param>
/// <param name="NumExperts"><c>num_local_experts</c> per MoE layer.</param>
/// <param name="MoeLayers">MoE decoder layers, ascending.</param>
/// <param name="ExpertFormat">How the routed experts are held (bf16, or FP8 from the checkpoint or quantized at load).</param>
[GenerateSerializer, Immutable, Alias("distributed.ModelDescriptor")]
[MessagePackObject]
public sealed record ModelDescriptor(
    [property: Id(0), Key(0)] string Fingerprint,
    [property: Id(1), Key(1)] int HiddenSize,
    [property: Id(2), Key(2)] int IntermediateSize,
    [property: Id(3), Key(3)] int NumLayers,
    [property: Id(4), Key(4)] int NumExperts,
    [property: Id(5), Key(5)] int[] MoeLayers,
    [property: Id(6), Key(6)] ExpertWeightFormat ExpertFormat = ExpertWeightFormat.Bf16)
{
    /// <summary>
    /// Bytes of one routed expert's weights in <see cref="ExpertFormat"/> (<c>gate_up</c> <c>[H, 2I]</c> + <c>down</c>
    /// <c>[I, H]</c>): 2 bytes per weight in bf16; 1 byte per weight plus one fp32 scale per output channel
    /// (<c>2I + H</c> of them) in FP8. Capacity planning divides a worker's memory by it.
    /// </summary>
    [IgnoreMember]
    public long ExpertBytes => ExpertFormat == ExpertWeightFormat.Fp8E4M3
        ? (3L * HiddenSize * IntermediateSize) + ((2L * IntermediateSize) + HiddenSize) * sizeof(float)
        : 3L * HiddenSize * IntermediateSize * sizeof(ushort);

    /// <summary>True when <paramref name="layer"/> is a MoE layer of this model.</summary>
    public bool IsMoeLayer(int layer) => Array.IndexOf(MoeLayers, layer) >= 0;

    /// <summary>Checks internal consistency.</summary>
    /// <exception cref="ArgumentException">A field is out of range; the message names it.</exception>
    public void Validate()
    {
        if (string.IsNullOrEmpty(Fingerprint))
        {
            throw new ArgumentException("ModelDescriptor.Fingerprint is empty");
        }
        if (HiddenSize <= 0 || IntermediateSize <= 0 || NumLayers <= 0 || NumExperts <= 0)
        {
            throw new ArgumentException(
                $"ModelDescriptor sizes must be positive (hidden {HiddenSize}, intermediate {IntermediateSize}, layers {NumLayers}, experts {NumExperts})");
        }
        ArgumentNullException.ThrowIfNull(MoeLayers);
        if (!Enum.IsDefined(ExpertFormat))
        {
            throw new ArgumentException($"ModelDescriptor.ExpertFormat {(int)ExpertFormat} is not a known expert weight format");
        }
        for (int i = 0; i < MoeLayers.Length; i++)
        {
            if (MoeLayers[i] < 0 || MoeLayers[i] >= NumLayers || (i > 0 && MoeLayers[i] <= MoeLayers[i - 1]))
            {
                throw new ArgumentException($"ModelDescriptor.MoeLayers[{i}] = {MoeLayers[i]} is not ascending within [0, {NumLayers})");
            }
        }
    }
}
