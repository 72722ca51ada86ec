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
        ["--allow-unauthenticated"] = "ExpertWorker:AllowUnauthenticated",
        ["--shared-memory"] = "ExpertWorker:SharedMemory",
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
        ["--gpu"] = "ExpertWorker:Gpu",
        ["--plan-version"] = "ExpertWorker:StaticPlanVersion",
        ["--clustering"] = "Cluster:Clustering",
        ["--cluster-id"] = "Cluster:ClusterId",
        ["--service-id"] = "Cluster:ServiceId",
        ["--silo-port"] = "Cluster:SiloPort",
        ["--gateway-port"] = "Cluster:GatewayPort",
        ["--primary-silo-port"] = "Cluster:PrimarySiloPort",
        ["--redis"] = "Cluster:RedisConnectionString",
        ["--probe-timeout"] = "Cluster:ProbeTimeout",
        ["--advertised-address"] = "Cluster:AdvertisedAddress",
        ["--tls-cert"] = "Tls:CertificatePath",
        ["--tls-key"] = "Tls:KeyPath",
        ["--tls-ca"] = "Tls:CaPath",
    };

    /// <summary>Command-line flags without a value, and the configuration key each sets to <c>true</c>.</summary>
    public static readonly IReadOnlyDictionary<string, string> Flags = new Dictionary<string, string>
    {
        ["--insecure"] = "Tls:AllowInsecure",
    };

    /// <summary>
    /// Runs the worker until SIGTERM/Ctrl+C. Exit codes: 0 stopped, 2 bad configuration, 3 unusable model, 4 a listener or
    /// the silo did not start. <c>--print-schema</c> and <c>--apply-schema</c> handle the PostgreSQL schema and exit
    /// (<see cref="SchemaCommand"/>).
    /// </summary>
    public static async Task<int> Main(string[] args)
    {
        if (args.Contains(SchemaCommand.PrintFlag, StringComparer.Ordinal))
        {
            return SchemaCommand.Print(Console.Out);
        }
        bool applySchema = args.Contains(SchemaCommand.ApplyFlag, StringComparer.Ordinal);
        var configuration = new ConfigurationBuilder()
            .AddEnvironmentVariables(Distributed.Hosting.TelemetryOptions.EnvironmentPrefix)
            .AddCommandLine(ExpandFlags([.. args.Where(a => a != SchemaCommand.ApplyFlag)]), Switches.ToDictionary(kv => kv.Key, kv => kv.Value))
            .Build();
        if (applySchema)
        {
            return await SchemaCommand.ApplyAsync(configuration, Console.Out, Console.Error, CancellationToken.None);
        }
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

    // "--insecure" takes no value; the configuration parser needs one.
    private static string[] ExpandFlags(string[] args)
        => [.. args.SelectMany(a => Flags.TryGetValue(a, out var key) ? new[] { "--" + key, "true" } : [a])];
}
