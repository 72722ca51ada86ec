namespace Distributed.Coordinator.Model.Llama4;

/// <summary>
/// How <see cref="Llama4Model.ForwardAsync"/> overlaps the wire with compute (micro-batch ping-pong, issue #15): a step
/// of at least <paramref name="MinTokens"/> tokens over at least two sequences runs as two micro-batches that take
/// turns, one computing its attention, router and shared expert while the other's routed rows are at the experts.
/// </summary>
/// <param name="Enabled">Split steps at all.</param>
/// <param name="MinTokens">Smallest step (tokens over all sequences) that is split: below it, a second set of dispatch
/// messages per layer costs more than the overlap gains.</param>
public sealed record MicroBatching(bool Enabled, int MinTokens)
{
    /// <summary>Never split.</summary>
    public static MicroBatching Off { get; } = new(false, int.MaxValue);

    /// <summary>Split every step with at least <paramref name="minTokens"/> tokens over two or more sequences.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="minTokens"/> below 2.</exception>
    public static MicroBatching From(int minTokens)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(minTokens, 2);
        return new MicroBatching(true, minTokens);
    }
}
