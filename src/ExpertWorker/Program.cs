namespace Distributed.ExpertWorker;

/// <summary>Entry point of the expert worker host (Kestrel gRPC + Orleans silo). Built out by the expert-workers issue.</summary>
public static class Program
{
    /// <summary>Runs the worker.</summary>
    public static int Main(string[] args)
    {
        Console.Error.WriteLine("expert worker: not yet implemented (issue #3)");
        return 2;
    }
}
