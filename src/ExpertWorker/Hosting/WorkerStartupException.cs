namespace Distributed.ExpertWorker.Hosting;

/// <summary>
/// The worker could not start a listener or its silo (a port in use, a membership store it cannot reach or use). The
/// message names what failed and the root cause; the process exits with code 4 instead of crashing.
/// </summary>
public sealed class WorkerStartupException(string message, Exception inner) : Exception(message, inner)
{
    /// <summary>The innermost cause's type and message (Orleans and Kestrel wrap the interesting one deeply).</summary>
    public static string Describe(Exception ex)
    {
        var root = ex;
        while (root is AggregateException { InnerExceptions.Count: 1 } or { InnerException: not null })
        {
            root = root is AggregateException agg ? agg.InnerExceptions[0] : root.InnerException!;
        }
        return $"{root.GetType().Name}: {root.Message.ReplaceLineEndings(" ")}";
    }
}
