namespace Distributed.Protocol.Contracts;

/// <summary>One routed expert of one MoE layer.</summary>
/// <param name="Layer">Decoder layer index.</param>
/// <param name="Expert">Expert id within the layer, <c>[0, num_local_experts)</c>.</param>
public readonly record struct ExpertKey(int Layer, int Expert)
{
    /// <inheritdoc />
    public override string ToString() => $"L{Layer}.E{Expert}";
}
