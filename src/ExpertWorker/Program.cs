using Distributed.ExpertWorker.Hosting;
using Distributed.Checkpoint;
using Microsoft.Extensions.Options;

namespace Distributed.ExpertWorker;

/// <summary>Entry point of the expert worker (Kestrel gRPC data plane + Orleans silo).</summary>
public static class Program
{
    /// <summary>Short command-line names for the configuration keys (any <c>--Section:Key value</c> also works).</summary>
    public static readonly IReadOnlyDictionary<string, string> Switches = new Dictionary<string, string>
    {
        ["--model"] = "ExpertWorker:ModelDirectory",
        ["--worker-id"] = "ExpertWorker:WorkerId",
        ["--grpc-host"] = "ExpertWorker:GrpcHost",
        ["--grpc-port"] = "ExpertWorker:GrpcPort",
        ["--unix-socket"] = "ExpertWorker:UnixSocketPath",
        ["--ops-port"] = "ExpertWorker:OpsPort",
        ["--otlp-endpoint"] = "Telemetry:OtlpEndpoint",
        ["--threads"] = "ExpertWorker:KernelThreads",
        ["--backend"] = "ExpertWorker:KernelBackend",
        ["--cpu-precision"] = "ExpertWorker:KernelCpuPrecision",
        ["--quantize"] = "ExpertWorker:Quantize",
        ["--fp8-activations"] = "ExpertWorker:Fp8Activations",
        ["--max-rows"] = "ExpertWorker:MaxRowsPerDispatch",
        ["--experts"] = "ExpertWorker:StaticExperts",
        ["--memory"] = "ExpertWorker:MemoryCapacityBytes",
        ["--plan-version"] = "ExpertWorker:StaticPlanVersion",
        ["--clustering"] = "Cluster:Clustering",
        ["--cluster-id"] = "Cluster:ClusterId",
        ["--service-id"] = "Cluster:ServiceId",
        ["--silo-port"] = "Cluster:SiloPort",
        ["--gateway-port"] = "Cluster:GatewayPort",
        ["--primary-silo-port"] = "Cluster:PrimarySiloPort",
        ["--redis"] = "Cluster:RedisConnectionString",
        ["--probe-timeout"] = "Cluster:ProbeTimeout",
    };

    /// <summary>Runs the worker until SIGTERM/Ctrl+C. Exit codes: 0 stopped, 2 bad configuration, 3 unusable model, 4 a listener or the silo did not start.</summary>
    public static async Task<int> Main(string[] args)
    {
        var configuration = new ConfigurationBuilder()
            .AddEnvironmentVariables(Distributed.Hosting.TelemetryOptions.EnvironmentPrefix)
            .AddCommandLine(args, Switches.ToDictionary(kv => kv.Key, kv => kv.Value))
            .Build();
        try
        {
            await using var host = await WorkerHost.StartAsync(configuration);
            await host.WaitForShutdownAsync();
            return 0;
        }
        catch (OptionsValidationException ex)
        {
            Console.Error.WriteLine("expert worker: invalid configuration:");
            foreach (var failure in ex.Failures)
            {
                Console.Error.WriteLine("  " + failure);
            }
            return 2;
        }
        catch (CheckpointException ex)
        {
            Console.Error.WriteLine($"expert worker: cannot use the model: {ex.Message}");
            return 3;
        }
        catch (Exception ex) when (ex is FormatException or PlatformNotSupportedException or WorkerStartupException)
        {
            // A malformed value, a kernel setting this machine cannot run (bf16 matmul without AVX512-BF16): 2.
            // A listener or the silo that did not start: 4.
            Console.Error.WriteLine($"expert worker: {ex.Message}");
            return ex is WorkerStartupException ? 4 : 2;
        }
    }
}
