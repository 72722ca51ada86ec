namespace Distributed.Coordinator.Cli;

/// <summary>Subcommand dispatch for the coordinator executable.</summary>
public static class CommandLine
{
    /// <summary>Runs <paramref name="args"/>; writes results to <paramref name="stdout"/> and logs/errors to <paramref name="stderr"/>.</summary>
    public static Task<int> RunAsync(string[] args, TextWriter stdout, TextWriter stderr)
    {
        stderr.WriteLine("usage: Distributed.Coordinator <infer|make-synthetic|bench> ...");
        return Task.FromResult(2);
    }
}
