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
            "dataplane" => DataPlane.DataPlaneBenchmark.RunAsync(args).GetAwaiter().GetResult(),
            "dataplane-server" => DataPlane.DataPlaneServer.RunAsync(args).GetAwaiter().GetResult(),
            "dataplane-e2e" => DataPlane.EndToEndBenchmark.RunAsync(args).GetAwaiter().GetResult(),
            "serving-load" => Load.ServingLoadBenchmark.Run(args),
            "prefix-cache" => Load.PrefixCacheBenchmark.Run(args),
            "admin-events" => Admin.AdminEventsBenchmark.RunAsync(args).GetAwaiter().GetResult(),
            "vision" => VisionBenchmark.Run(args),
            _ => Usage(),
        };
    }

    private static int Usage()
    {
        Console.Error.WriteLine("usage: Distributed.Benchmarks cpu-ffn [--threads 1,2] [--impl ours|openblas|both] [--rounds 2] [--cases T128,dense] [--levels avx512|avx2] [--clock wall|cpu]");
        Console.Error.WriteLine("       Distributed.Benchmarks cpu-ops [--threads N]");
        Console.Error.WriteLine("       dotnet Distributed.Benchmarks.dll dataplane [--rows 1,64,512,4096] [--scale 1]");
        Console.Error.WriteLine("       dotnet Distributed.Benchmarks.dll dataplane-e2e [--model DIR] [--workers 2] [--tokens 64]");
        Console.Error.WriteLine("       Distributed.Benchmarks serving-load [--model DIR] [--clients 1,8,32] [--config NAME=SERVE_ARGS]...");
        Console.Error.WriteLine("       Distributed.Benchmarks prefix-cache [--model DIR] [--requests 32] [--prefix-tokens 200] [--clients 8] [--rounds 5] [--serve-args \"ARGS\"]");
        Console.Error.WriteLine("       dotnet Distributed.Benchmarks.dll admin-events [--model DIR] [--workers 3] [--clients 8] [--max-tokens 24] [--wire bf16|fp32] [--warmup-seconds 15] [--settle-seconds 3]");
        Console.Error.WriteLine("       Distributed.Benchmarks vision [--threads N] [--layers 3] [--repeat 5]");
        return 2;
    }
}
