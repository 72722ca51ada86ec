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
            _ => Usage(),
        };
    }

    private static int Usage()
    {
        Console.Error.WriteLine("usage: Distributed.Benchmarks cpu-ffn [--threads 1,2] [--impl ours|openblas|both] [--rounds 2]");
        Console.Error.WriteLine("       Distributed.Benchmarks cpu-ops [--threads N]");
        return 2;
    }
}
