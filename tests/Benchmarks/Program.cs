namespace Distributed.Benchmarks;

internal static class Program
{
    private static int Main(string[] args)
    {
        string mode = args.Length > 0 ? args[0] : string.Empty;
        return mode switch
        {
            "cpu-ffn" => CpuFfnBenchmark.Run(args),
            "cpu-ops" => CpuOpsBenchmark.Run(args),
            "serving-load" => Load.ServingLoadBenchmark.Run(args),
            _ => Usage(),
        };
    }

    private static int Usage()
    {
        Console.Error.WriteLine("usage: Distributed.Benchmarks cpu-ffn [--threads 1,2] [--impl ours|openblas|both]");
        Console.Error.WriteLine("       Distributed.Benchmarks cpu-ops [--threads N]");
        Console.Error.WriteLine("       Distributed.Benchmarks serving-load [--model DIR] [--clients 1,8,32] [--config NAME=SERVE_ARGS]...");
        return 2;
    }
}
