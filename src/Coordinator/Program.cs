namespace Distributed.Coordinator;

/// <summary>Coordinator executable entry point: dispatches to the command-line subcommands.</summary>
public static class Program
{
    /// <summary>Runs a subcommand and returns its exit code.</summary>
    public static Task<int> Main(string[] args) => Cli.CommandLine.RunAsync(args, Console.Out, Console.Error);
}
