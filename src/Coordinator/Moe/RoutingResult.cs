namespace Distributed.Coordinator.Moe;

/// <summary>
/// The router's decision for a batch of tokens: for token t and slot s &lt; TopK, expert <c>ExpertIds[t·TopK + s]</c>
/// with score <c>Weights[t·TopK + s]</c> (Llama 4: sigmoid of the selected router logit). Llama 4 multiplies the expert
/// INPUT by the score (HF modeling_llama4.py <c>Llama4TextMoe.forward</c>), so dispatchers ship <c>score · x</c>.
/// </summary>
/// <param name="ExpertIds"><c>[tokens, TopK]</c>.</param>
/// <param name="Weights"><c>[tokens, TopK]</c>.</param>
/// <param name="TopK">Slots per token.</param>
public readonly record struct RoutingResult(ReadOnlyMemory<int> ExpertIds, ReadOnlyMemory<float> Weights, int TopK)
{
    /// <summary>Number of tokens.</summary>
    public int Tokens => TopK == 0 ? 0 : ExpertIds.Length / TopK;
}
