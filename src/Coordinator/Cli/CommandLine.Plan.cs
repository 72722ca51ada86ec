using System.Globalization;
using System.Text.Json;
using Distributed.Checkpoint;
using Distributed.Coordinator.Tools;
using Distributed.Protocol.Contracts;

namespace Distributed.Coordinator.Cli;

public static partial class CommandLine
{
    private const string PlanUsage =
        "plan            --model DIR|config.json [--gpus 8] [--gpu h100|h200] [--gpu-memory-gib N] [--precision fp8|bf16] [--kv-dtype bf16|fp8|fp32]\n"
        + "                  [--input 1000] [--output 1000] [--context N] [--batch 1,8,32,64,128,256] [--data-plane shm|grpc] [--json]";

    /// <summary>
    /// <c>plan</c>: the sizing simulator (<see cref="SizingPlanner"/>). Reads only the config (a model directory's
    /// <c>config.json</c> or the file itself, no weights) and prints per-GPU memory, the largest batch and context that
    /// fit, and a predicted decode step per batch size for one host of <c>--gpus</c> GPUs.
    /// </summary>
    private static int Plan(IEnumerable<string> args, TextWriter stdout)
    {
        var a = new CliArgs(args, ["model", "gpus", "gpu", "gpu-memory-gib", "precision", "kv-dtype", "input", "output", "context", "batch", "data-plane"], ["json"]);
        string path = a.Required("model");
        string file = Directory.Exists(path) ? Path.Combine(path, CheckpointReader.ConfigFileName) : path;
        if (!File.Exists(file))
        {
            throw new UsageException($"--model: '{path}' is neither a model directory with config.json nor a config file");
        }
        string json = File.ReadAllText(file);
        var config = Llama4ConfigParser.Parse(json, file);
        var quantization = CheckpointQuantization.Parse(json, file);
        GpuSpec gpu;
        try
        {
            gpu = GpuSpec.Parse(a.Get("gpu") ?? "h100");
        }
        catch (FormatException ex)
        {
            throw new UsageException(ex.Message);
        }
        if (a.Has("gpu-memory-gib"))
        {
            double gib = a.Double("gpu-memory-gib", gpu.MemoryGiB);
            if (!(gib > 0 && gib <= 4096))
            {
                throw new UsageException($"--gpu-memory-gib must be in (0, 4096], got {gib}");
            }
            gpu = gpu with { MemoryGiB = gib };
        }
        string precision = a.Get("precision") ?? (quantization.IsFp8PerChannel ? "fp8" : "bf16");
        var experts = precision switch
        {
            "fp8" => ExpertWeightFormat.Fp8E4M3,
            "bf16" => ExpertWeightFormat.Bf16,
            _ => throw new UsageException($"--precision '{precision}' must be fp8 or bf16"),
        };
        string plane = a.Get("data-plane") ?? "shm";
        if (plane is not ("shm" or "grpc"))
        {
            throw new UsageException($"--data-plane '{plane}' must be shm or grpc");
        }
        var input = new SizingInput
        {
            Config = config,
            Gpus = a.Int("gpus", 8, 2, 4096),
            Gpu = gpu,
            Experts = experts,
            KvDType = KvDTypeFrom(a) ?? Kernels.KvCacheDType.Bf16,
            InputTokens = a.Int("input", 1000, 1, 1 << 24),
            OutputTokens = a.Int("output", 1000, 1, 1 << 24),
            Context = a.Has("context") ? a.Int("context", 0, 1, 1 << 26) : null,
            Batches = a.Has("batch") ? a.IntList("batch") : [1, 8, 32, 64, 128, 256],
            SharedMemory = plane == "shm",
        };
        if (input.Batches.Any(b => b < 1 || b > 1 << 20))
        {
            throw new UsageException("--batch: every batch size must be in [1, 1048576]");
        }
        var plan = SizingPlanner.Plan(input);
        if (a.Has("json"))
        {
            stdout.WriteLine(JsonSerializer.Serialize(new { input = new { input.Gpus, gpu = gpu.Name, gpu.MemoryGiB, gpu.HbmGBps, gpu.GemmTflops, precision, kv_dtype = input.KvDType.ToString(), input.InputTokens, input.OutputTokens, data_plane = plane }, plan }));
            return 0;
        }
        var c = config;
        static string GiB(double bytes) => (bytes / (1L << 30)).ToString("F1", CultureInfo.InvariantCulture) + " GiB";
        static string MiB(double bytes) => (bytes / (1L << 20)).ToString("F1", CultureInfo.InvariantCulture) + " MiB";
        var w = stdout;
        w.WriteLine(FormattableString.Invariant(
            $"plan: hidden {c.HiddenSize}, {c.NumLayers} layers ({c.MoeLayers.Count} MoE x {c.NumExperts} experts, top-{c.TopK}), vocab {c.VocabSize} on {input.Gpus} x {gpu.Name} ({gpu.MemoryGiB:F1} GiB, {gpu.HbmGBps:F0} GB/s, {gpu.GemmTflops:F0} TFLOP/s); experts {precision}, KV {input.KvDType.ToString().ToLowerInvariant()}"));
        w.WriteLine(FormattableString.Invariant(
            $"routed experts: {plan.RoutedExperts} x {plan.ExpertParameters:N0} params = {plan.RoutedExperts * plan.ExpertParameters / 1e9:F1} B; {MiB(plan.ExpertBytes)} each"));
        w.WriteLine(FormattableString.Invariant(
            $"GPU 0 (coordinator): weights {GiB(plan.CoordinatorWeightBytes)} ({plan.CoordinatorParameters / 1e9:F2} B params, bf16) + workspace {GiB(plan.CoordinatorWorkspaceBytes)} + KV budget {GiB(plan.KvBudgetBytes)}"));
        w.WriteLine(FormattableString.Invariant(
            $"GPUs 1-{plan.Workers} (workers): {plan.ExpertsPerWorker} experts each = {GiB(plan.WorkerWeightBytes)} + workspace/headroom {GiB(plan.WorkerWorkspaceBytes)} = {GiB(plan.WorkerWeightBytes + plan.WorkerWorkspaceBytes)} of {GiB(plan.GpuBytes)}"));
        w.WriteLine(FormattableString.Invariant(
            $"KV per token: {plan.KvBytesPerToken.WithinChunk / 1024.0:F1} KiB within the {c.AttentionChunkSize}-token chunk, {plan.KvBytesPerToken.BeyondChunk / 1024.0:F1} KiB beyond; {plan.SequenceTokens}-token sequence: {MiB(plan.KvBytesPerSequence)}"));
        if (!plan.Fits)
        {
            w.WriteLine(plan.WorkerWeightBytes + plan.WorkerWorkspaceBytes > plan.GpuBytes
                ? "fits: NO: the workers' experts do not fit their GPUs (use FP8 experts, more GPUs or larger GPUs)"
                : "fits: NO: the coordinator's weights leave no room for the KV cache");
            return 0;
        }
        w.WriteLine(FormattableString.Invariant($"fits: yes; largest batch of {plan.SequenceTokens}-token sequences: {plan.MaxBatch}; longest context at batch 1: {plan.MaxContext:N0} tokens"));
        w.WriteLine(FormattableString.Invariant($"decode step at mean context {input.InputTokens + (input.OutputTokens / 2)} (this build: host round trips per layer + {(input.SharedMemory ? "shared-memory" : "inline gRPC")} data plane; floor: same bytes and FLOPs, device-resident):"));
        w.WriteLine($"{"batch",6} {"fits",5} {"this build ms",14} {"floor ms",9} {"coordinator",12} {"experts",8} {"data plane",11} {"tok/s this build",17} {"tok/s floor",12}");
        foreach (var s in plan.Steps.Append(plan.AtMaxBatch))
        {
            w.WriteLine(FormattableString.Invariant(
                $"{s.Batch,6} {(s.Fits ? "yes" : "no"),5} {s.StepMsThisBuild,14:F2} {s.StepMsFloor,9:F2} {s.CoordinatorMs,12:F2} {s.ExpertMs,8:F2} {s.DispatchMs,11:F2} {s.TokensPerSecondThisBuild,17:F0} {s.TokensPerSecondFloor,12:F0}"));
        }
        w.WriteLine(FormattableString.Invariant(
            $"at the largest batch ({plan.AtMaxBatch.Batch}): {plan.AtMaxBatch.TokensPerSecondThisBuild:F0} output tok/s this build, {plan.AtMaxBatch.TokensPerSecondFloor:F0} at the floor ({input.InputTokens} in / {input.OutputTokens} out; prefill included)"));
        return 0;
    }
}
