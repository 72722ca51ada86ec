namespace Distributed.Coordinator.Moe;

/// <summary>
/// The one seam between the model and wherever routed experts run (vLLM's prepare/finalize pair): dispatch sends each
/// routed row (already multiplied by its router score) to its expert, combine waits and writes, per token, the sum of
/// its routed expert outputs in slot order (fixed order, so results never depend on arrival order or placement).
/// The model computes the shared expert between the two calls.
/// </summary>
public interface IExpertDispatcher
{
    /// <summary>Starts the routed experts of MoE layer <paramref name="layer"/> for these tokens.</summary>
    /// <param name="hidden"><c>[tokens, hidden]</c> fp32: the MoE block input (post-attention-norm output). Must stay
    /// unchanged until <see cref="CombineAsync"/> returns.</param>
    ValueTask<DispatchHandle> DispatchAsync(int layer, ReadOnlyMemory<float> hidden, RoutingResult routing, CancellationToken cancellationToken);

    /// <summary>Waits for a dispatch and writes <c>output[t] = Σ_s expert_{ids[t,s]}(score[t,s] · hidden[t])</c>.</summary>
    /// <param name="output"><c>[tokens, hidden]</c>, overwritten.</param>
    ValueTask CombineAsync(DispatchHandle handle, Memory<float> output, CancellationToken cancellationToken);

    /// <summary>
    /// Waits for a dispatch and ADDS the routed sum to <paramref name="output"/>: <c>output[t] += Σ_s expert(...)</c>, the
    /// slot sum formed first exactly as <see cref="CombineAsync"/> writes it, so the result is bitwise
    /// <c>output[t] + CombineAsync's row</c> (the model adds the routed experts to the shared expert's output this way,
    /// without a separate buffer and pass). The default combines into a temporary buffer and adds it.
    /// </summary>
    /// <param name="output"><c>[tokens, hidden]</c>, added to; partly updated when the call throws.</param>
    async ValueTask CombineAddAsync(DispatchHandle handle, Memory<float> output, CancellationToken cancellationToken)
    {
        float[] routed = System.Buffers.ArrayPool<float>.Shared.Rent(output.Length);
        try
        {
            await CombineAsync(handle, routed.AsMemory(0, output.Length), cancellationToken).ConfigureAwait(false);
            var dst = output.Span;
            for (int i = 0; i < dst.Length; i++)
            {
                dst[i] += routed[i];
            }
        }
        finally
        {
            System.Buffers.ArrayPool<float>.Shared.Return(routed);
        }
    }
}

/// <summary>An in-flight dispatch; each dispatcher subclasses it with its own state.</summary>
public abstract class DispatchHandle
{
    /// <summary>Creates the handle.</summary>
    protected DispatchHandle(int layer, int tokens)
    {
        Layer = layer;
        Tokens = tokens;
    }

    /// <summary>MoE layer index.</summary>
    public int Layer { get; }

    /// <summary>Tokens dispatched.</summary>
    public int Tokens { get; }
}
