using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Serving.Scheduling;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests;

/// <summary>
/// One GPU per worker, end to end on the CPU emulation of the CUDA libraries (built here by
/// <c>tests/Kernels.Tests/Cuda/Emulator/build.sh</c>, three emulated devices of 4, 6 and 8 GiB):
/// <c>infer --local-workers 2 --gpus 0,1</c> starts worker i with <c>--gpu i</c>, each worker's experts run on its own
/// device and its placement capacity is that device's free memory less workspace and headroom, the coordinator takes
/// the free device with the most memory (2), and the result is the golden one (fp32 KV: the CUDA default, bf16, drifts
/// from the fixture's greedy tokens late in the generation, as documented for the GPU check). A worker asked for a device the driver
/// does not have exits with code 2 naming the flag and the count.
/// </summary>
[Trait("Category", "Integration")]
public sealed partial class GpuWorkersTests(ITestOutputHelper output)
{
    private const long MiB = 1L << 20;

    private static Dictionary<string, string> EmulatorEnvironment(int devices, string mib) => new()
    {
        ["DISTRIBUTED_CUDA_LIBRARY_PATH"] = CudaEmulator.Directory,
        ["FAKE_CUDA_DEVICES"] = devices.ToString(CultureInfo.InvariantCulture),
        ["FAKE_CUDA_MEMORY_MIB"] = mib,
    };

    [CudaEmulatorFact]
    public async Task Infer_TwoLocalWorkersOnGpus01_EachOnItsDeviceWithItsMemory_CoordinatorOnTheFreeOne_MatchesGolden()
    {
        CudaEmulatorFactAttribute.Require(CudaEmulator.Missing);
        var golden = Golden.Load("tiny-maverick");
        var prompt = golden.Prompts[1];
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string arg in (string[])[TestPaths.CoordinatorDll, "infer", "--model", TestPaths.Fixture("tiny-maverick"),
            "--prompt-ids", string.Join(",", prompt.InputIds), "--max-new-tokens", prompt.NewTokens.Length.ToString(CultureInfo.InvariantCulture),
            "--json", "--threads", "1", "--kv-dtype", "fp32", "--local-workers", "2", "--gpus", "0,1", "--wire", "fp32"])
        {
            psi.ArgumentList.Add(arg);
        }
        foreach (var (k, v) in EmulatorEnvironment(3, "4096,6144,8192"))
        {
            psi.Environment[k] = v;
        }
        using var process = Process.Start(psi)!;
        var lines = new ConcurrentQueue<string>();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = Task.Run(async () =>
        {
            while (await process.StandardError.ReadLineAsync() is { } line)
            {
                lines.Enqueue(line);
                output.WriteLine(line);
            }
        });
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(180));
        int exitCode;
        try
        {
            await process.WaitForExitAsync(timeout.Token);
            await stderr;
            exitCode = process.ExitCode;
        }
        finally
        {
            await TestProcesses.KillAndDisposeAsync(process);
        }

        Assert.Equal(0, exitCode);
        // The coordinator: the device with the most free memory among those not given to workers.
        Assert.Contains(lines, l => l.Contains("kernels: coordinator device 2: device 2 has the most free memory", StringComparison.Ordinal));
        Assert.Contains(lines, l => l.StartsWith("loaded ", StringComparison.Ordinal) && l.Contains(" on cuda:2 ", StringComparison.Ordinal));
        foreach (var (worker, gpu, totalMiB) in new[] { (0, 0, 4096L), (1, 1, 6144L) })
        {
            Assert.Contains(lines, l => l.Contains($"starting worker-{worker} on GPU {gpu} (--gpu {gpu})", StringComparison.Ordinal));
            Assert.Contains(lines, l => l.StartsWith($"[worker-{worker} ", StringComparison.Ordinal)
                && l.Contains($"] kernels: backend cuda:{gpu} (Emulated CUDA device (CPU))", StringComparison.Ordinal));
            // capacity = free − reserved − workspace − headroom, free measured on the worker's own device.
            var capacity = lines.Select(l => CapacityLine().Match(l)).Single(m => m.Success && m.Groups["worker"].Value == $"worker-{worker}");
            long Value(string name) => long.Parse(capacity.Groups[name].Value, CultureInfo.InvariantCulture);
            Assert.Equal(gpu, (int)Value("gpu"));
            Assert.InRange(Value("free"), (totalMiB - 256) * MiB, totalMiB * MiB);
            Assert.Equal(Value("free") - Value("reserved") - Value("workspace") - Value("headroom"), Value("capacity"));
            Assert.Equal(2L << 30, Value("headroom"));
        }

        using var doc = JsonDocument.Parse(await stdout);
        var root = doc.RootElement;
        static int[] Ints(JsonElement e) => [.. e.EnumerateArray().Select(x => x.GetInt32())];
        var experts = root.GetProperty("experts").EnumerateObject().ToDictionary(
            e => int.Parse(e.Name, CultureInfo.InvariantCulture), e => e.Value.EnumerateArray().Select(Ints).ToArray());
        var result = new InferenceResult(Ints(root.GetProperty("prompt_ids")), [.. root.GetProperty("last_logits").EnumerateArray().Select(x => x.GetSingle())],
            Ints(root.GetProperty("argmax")), experts, Ints(root.GetProperty("new_tokens")));
        var (failures, maxError) = golden.Check(prompt, result, checkLogits: true);
        output.WriteLine($"emulated GPUs: last-logit max |diff| {maxError:E3} (tolerance {golden.LogitTolerance})");
        Assert.True(failures.Count == 0, string.Join("; ", failures));
    }

    [CudaEmulatorFact]
    public async Task Worker_GpuBeyondTheDeviceCount_ExitsWithCode2NamingTheFlagAndTheCount()
    {
        CudaEmulatorFactAttribute.Require(CudaEmulator.Missing);
        var lines = new ConcurrentQueue<string>();
        var log = new TestLog { Output = output };
        await using var worker = WorkerProcess.Start(WorkerProcess.LocateWorker(),
            ["--model", TestPaths.Fixture("tiny-maverick"), "--threads", "1", "--worker-id", "gpu3", "--gpu", "3", "--experts", "all"],
            "gpu3", line =>
            {
                lines.Enqueue(line);
                log.Write(line);
            }, EmulatorEnvironment(2, "4096"));
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        await worker.WaitForExitAsync(timeout.Token);

        Assert.Equal(2, worker.ExitCode);
        Assert.Contains(lines, l => l.Contains("--gpu (ExpertWorker:Gpu) 3 is out of range: the CUDA driver reports 2 device(s), ordinals 0-1", StringComparison.Ordinal));
    }

    [GeneratedRegex(@"Worker (?<worker>\S+): placement capacity (?<capacity>\d+) bytes \(\d+ experts\), GPU (?<gpu>\d+): (?<free>\d+) free - (?<reserved>\d+) reserved - (?<workspace>\d+) workspace \([^)]*\) - (?<headroom>\d+) headroom")]
    private static partial Regex CapacityLine();
}
