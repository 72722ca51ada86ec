using System.Diagnostics;
using System.Text.Json;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Kernels;
using Distributed.Checkpoint;

namespace Distributed.Coordinator.Cli;

/// <summary>Subcommand dispatch for the coordinator executable. Results go to stdout, logs and errors to stderr.</summary>
public static partial class CommandLine
{
    private const string Usage =
        "usage: Distributed.Coordinator <command> [options]\n"
        + "  infer           --model DIR --prompt-ids 1,2,3 [--max-new-tokens 16] [--json] [--backend cpu|cuda|auto] [--gpu N] [--threads N] [--prefill-chunk N]\n"
        + "                  [--cpu-precision fp32|bf16] [--kv-dtype fp32|bf16|fp8] [--device-path on|off] [--cuda-graphs on|off] [--Section:Key value ...]\n"
        + "                  " + Distribution.DistributedExpertsCli.Usage + "\n"
        + "                  [--image FILE [--image FILE ...]] [--max-image-tiles N]   (each <|image|> id of --prompt-ids marks one image, in order)\n"
        + "  make-synthetic  --out DIR [--preset NAME] [--<field> value ...]\n"
        + "  bench           --model DIR [--prompt 128] [--gen 64] [--threads N] [--backend cpu|cuda|auto] [--gpu N] [--cpu-precision fp32|bf16]\n"
        + "                  [--quantize none|fp8] [--fp8-activations] [--kv-dtype fp32|bf16|fp8] [--device-path on|off] [--cuda-graphs on|off] [--json]\n"
        + "  " + ServeUsage + "\n  " + AdminUsage + "\n  " + PlanUsage;

    /// <summary>Runs <paramref name="args"/> and returns the process exit code (0 ok, 1 failure, 2 usage error).</summary>
    public static async Task<int> RunAsync(string[] args, TextWriter stdout, TextWriter stderr)
    {
        ArgumentNullException.ThrowIfNull(args);
        if (args.Length == 0 || args[0] is "-h" or "--help" or "help")
        {
            stderr.WriteLine(Usage);
            return args.Length == 0 ? 2 : 0;
        }
        using var cts = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true;
            cts.Cancel();
        };
        Console.CancelKeyPress += onCancel;
        try
        {
            var rest = args.Skip(1);
            return args[0] switch
            {
                "infer" => await InferAsync(rest, stdout, stderr, cts.Token).ConfigureAwait(false),
                "bench" => await BenchAsync(rest, stdout, stderr, cts.Token).ConfigureAwait(false),
                "make-synthetic" => MakeSynthetic(rest, stdout, stderr),
                "serve" => await ServeAsync(rest, stdout, stderr, cts.Token).ConfigureAwait(false),
                "admin" => await AdminAsync(rest, stdout, stderr, cts.Token).ConfigureAwait(false),
                "plan" => Plan(rest, stdout),
                _ => throw new UsageException($"unknown command '{args[0]}' (expected infer, make-synthetic, bench, serve, admin or plan)"),
            };
        }
        catch (UsageException ex)
        {
            stderr.WriteLine($"error: {ex.Message}");
            return 2;
        }
        catch (CheckpointException ex)
        {
            stderr.WriteLine($"error: bad model directory: {OneLine(ex.Message)}");
            return 1;
        }
        catch (OperationCanceledException)
        {
            stderr.WriteLine("error: cancelled");
            return 130;
        }
        catch (Exception ex) when (ex is ArgumentException or InvalidOperationException or IOException or UnauthorizedAccessException
            or Distribution.ExpertDispatchException or TimeoutException or FormatException or Kernels.Cuda.CudaException
            or PlatformNotSupportedException)
        {
            stderr.WriteLine($"error: {OneLine(ex.Message)}");
            return 1;
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
        }
    }

    private static string OneLine(string s) => s.ReplaceLineEndings(" ");

    /// <summary>
    /// The command's configuration: <c>DISTRIBUTED_*</c> environment, <c>--Section:Key</c> settings, and the cluster
    /// options of <see cref="Distribution.DistributedExpertsCli"/>, plus <paramref name="commandKeys"/> (the command's own options mapped to keys).
    /// </summary>
    /// <exception cref="UsageException">An unknown key or a malformed value.</exception>
    private static Hosting.CoordinatorConfiguration Configuration(CliArgs a, IDictionary<string, string?>? commandKeys = null)
    {
        var keys = commandKeys ?? new Dictionary<string, string?>();
        Distribution.DistributedExpertsCli.MapOptions(a, keys);
        try
        {
            return Hosting.CoordinatorConfiguration.Build(a.ConfigurationSettings, new Dictionary<string, string?>(keys));
        }
        catch (ArgumentException ex)
        {
            throw new UsageException(ex.Message);
        }
    }

    private static IKernelBackend CreateBackend(CliArgs a, TextWriter stderr, Hosting.CoordinatorConfiguration? configuration = null)
    {
        // Defaults from Kernels:* (environment, --Kernels:Key) where the command reads configuration; Auto otherwise.
        var defaults = configuration is null ? new KernelOptions() : BindOrUsage<KernelOptions>(configuration, KernelOptions.SectionName);
        if (configuration?.Has("Kernels:Backend") != true)
        {
            // KernelOptions defaults to Cpu for tests; the commands default to Auto.
            defaults.Backend = KernelBackendKind.Auto;
        }
        var options = new KernelOptions
        {
            Backend = a.Enum("backend", defaults.Backend),
            Threads = a.Int("threads", defaults.Threads, 0, 1024),
            CpuPrecision = a.Enum("cpu-precision", defaults.CpuPrecision),
            DeviceOrdinal = a.Int("gpu", defaults.DeviceOrdinal, 0, 1023),
            DevicePath = OnOff(a, "device-path", defaults.DevicePath),
            CudaGraphs = OnOff(a, "cuda-graphs", defaults.CudaGraphs),
        };
        bool gpuGiven = a.Has("gpu") || configuration?.Has("Kernels:DeviceOrdinal") == true;
        int[] workerGpus = configuration?.Has("LocalCluster:Gpus") == true
            ? BindOrUsage<Distribution.LocalClusterOptions>(configuration, Distribution.LocalClusterOptions.SectionName).Gpus
            : [];
        options.DeviceOrdinal = CoordinatorDevice(options.Backend, gpuGiven, options.DeviceOrdinal, workerGpus, stderr);
        var backend = KernelBackendFactory.Create(options, stderr);
        if (gpuGiven && backend.Capabilities.DeviceOrdinal < 0)
        {
            stderr.WriteLine($"kernels: --gpu {options.DeviceOrdinal} (Kernels:DeviceOrdinal) is unused: no CUDA device is usable, the coordinator runs on {backend.Name}");
        }
        return backend;
    }

    /// <summary>
    /// The coordinator's CUDA device: <c>--gpu N</c> (<c>Kernels:DeviceOrdinal</c>) when given, checked against the
    /// driver's device count; otherwise the device with the most free memory among those not given to local workers
    /// (<c>--gpus</c>), or 0 (<see cref="Kernels.Cuda.CudaDeviceChoice.MostFree"/>). With the CPU backend a given
    /// <c>--gpu</c> is a usage error.
    /// </summary>
    /// <exception cref="UsageException"><c>--gpu</c> with <c>--backend cpu</c>, or a device the driver does not have.</exception>
    internal static int CoordinatorDevice(KernelBackendKind backend, bool gpuGiven, int ordinal, IReadOnlyCollection<int> workerGpus, TextWriter log)
    {
        if (backend == KernelBackendKind.Cpu)
        {
            if (gpuGiven)
            {
                throw new UsageException($"--gpu {ordinal} (Kernels:DeviceOrdinal) needs a CUDA backend, but --backend cpu (Kernels:Backend) was given");
            }
            return ordinal;
        }
        if (gpuGiven)
        {
            int count = Kernels.Cuda.CudaKernelBackend.CountDevices(out _);
            if (count > 0 && ordinal >= count)
            {
                throw new UsageException($"--gpu {ordinal} (Kernels:DeviceOrdinal) is out of range: the CUDA driver reports {count} device(s), ordinals 0-{count - 1}");
            }
            if (workerGpus.Contains(ordinal))
            {
                log.WriteLine($"kernels: the coordinator shares GPU {ordinal} with a local worker (--gpus): that worker's capacity does not count the coordinator's weights and KV; give it --memory");
            }
            return ordinal;
        }
        var devices = Kernels.Cuda.CudaKernelBackend.QueryDevices(workerGpus, out _);
        if (devices.Count == 0)
        {
            if (workerGpus.Count > 0 && Kernels.Cuda.CudaKernelBackend.CountDevices(out _) > 0)
            {
                log.WriteLine($"kernels: coordinator device {ordinal}: every device is given to local workers (--gpus); sharing device {ordinal}");
            }
            return ordinal;
        }
        int chosen = Kernels.Cuda.CudaDeviceChoice.MostFree(devices, workerGpus, out string why);
        log.WriteLine($"kernels: coordinator device {chosen}: {why}");
        return chosen;
    }

    private static string ModelDirectory(CliArgs a)
    {
        string dir = a.Required("model");
        if (!Directory.Exists(dir))
        {
            throw new UsageException($"--model: directory '{dir}' does not exist");
        }
        return dir;
    }

    private static async Task<int> InferAsync(IEnumerable<string> args, TextWriter stdout, TextWriter stderr, CancellationToken ct)
    {
        var a = new CliArgs(args, ["model", "prompt-ids", "max-new-tokens", "backend", "gpu", "threads", "cpu-precision", "prefill-chunk", "kv-dtype", "max-image-tiles", "device-path", "cuda-graphs",
                .. Distribution.DistributedExpertsCli.Options],
            ["json", .. Distribution.DistributedExpertsCli.Flags], configurationKeys: true, repeatable: ["image"]);
        string dir = ModelDirectory(a);
        int[] prompt = a.IntList("prompt-ids");
        int maxNew = a.Int("max-new-tokens", 16, 0, 1 << 20);
        int prefillChunk = a.Int("prefill-chunk", 512, 1, 1 << 20);
        var imageFiles = a.GetAll("image");
        var imageOptions = new Serving.Images.ImageOptions();
        imageOptions.MaxImageTiles = a.Int("max-image-tiles", imageOptions.MaxImageTiles, 1, 64);
        bool json = a.Has("json");
        var configuration = Configuration(a);
        var expertsSettings = Distribution.DistributedExpertsCli.Settings(configuration, dir, a.Get("cpu-precision"));
        var expertOptions = ExpertOptionsFrom(configuration, dir);
        var kvDType = KvDTypeFrom(a, BindOrUsage<Serving.Scheduling.SchedulerOptions>(configuration, Serving.Scheduling.SchedulerOptions.SectionName).KvDType);
        using var backend = CreateBackend(a, stderr, configuration);
        var sw = Stopwatch.StartNew();
        await using var experts = await Distribution.DistributedExpertsCli.StartAsync(expertsSettings, dir, stderr, waitServing: true, ct).ConfigureAwait(false);
        using var wireCheckpoint = expertsSettings is null && configuration.Has("Distribution:WireDType") ? CheckpointReader.Open(dir) : null;
        using var wireRounded = wireCheckpoint is null ? null : Distribution.DistributedExpertsCli.InProcessWire(configuration, expertsSettings, wireCheckpoint, backend);
        using var engine = LoadEngine(dir, backend, prefillChunk, (Moe.IExpertDispatcher?)experts?.Dispatcher ?? wireRounded, expertOptions);
        engine.KvDType = kvDType;
        engine.Model.MicroBatching = expertsSettings?.Distribution.MicroBatching() ?? MicroBatching.Off;
        stderr.WriteLine($"loaded {dir} in {sw.ElapsedMilliseconds} ms on {backend.Name} (fingerprint {engine.Fingerprint[..12]})");
        sw.Restart();
        Model.Llama4.Vision.Llama4ImagePrompt? images = null;
        if (imageFiles.Count > 0)
        {
            (prompt, images) = ExpandImages(engine, dir, prompt, imageFiles, imageOptions);
            stderr.WriteLine($"preprocessed {imageFiles.Count} image(s) into {images.TotalTiles} tile(s) in {sw.ElapsedMilliseconds} ms; prompt expanded to {prompt.Length} tokens");
            sw.Restart();
        }
        var result = await engine.InferAsync(prompt, maxNew, images, ct).ConfigureAwait(false);
        stderr.WriteLine($"inferred {prompt.Length} prompt + {result.NewTokens.Length} new tokens in {sw.ElapsedMilliseconds} ms");
        ReportGraphs(backend, stderr);
        if (json)
        {
            WriteJson(stdout, result);
        }
        else
        {
            stdout.WriteLine($"prompt_ids: {string.Join(",", result.PromptIds)}");
            stdout.WriteLine($"argmax:     {string.Join(",", result.Argmax)}");
            stdout.WriteLine($"new_tokens: {string.Join(",", result.NewTokens)}");
        }
        return 0;
    }

    /// <summary>
    /// <c>infer --image</c>: decodes and preprocesses each file (Llama4ImageProcessorFast) and expands the prompt's
    /// <c>&lt;|image|&gt;</c> ids (one per file, in order; ids from the model's tokenizer.json) as Llama4Processor does.
    /// </summary>
    private static (int[] Prompt, Model.Llama4.Vision.Llama4ImagePrompt Images) ExpandImages(Llama4Engine engine, string dir, int[] prompt,
        IReadOnlyList<string> files, Serving.Images.ImageOptions options)
    {
        var vision = engine.Vision ?? throw new UsageException($"--image: the model in {dir} has no vision tower (its config.json has no vision_config)");
        Serving.Tokenization.Llama4Tokenizer tokenizer;
        try
        {
            tokenizer = Serving.Tokenization.Llama4Tokenizer.Load(dir);
        }
        catch (Serving.Tokenization.TokenizerException ex)
        {
            throw new InvalidOperationException($"--image needs the model's tokenizer.json for the image token ids: {ex.Message}", ex);
        }
        var tokens = Serving.Images.Llama4VisionTokenIds.Resolve(tokenizer, vision.Config);
        var processor = new Serving.Images.Llama4ImageProcessor(vision.Config.ImageSize, options.MaxImageTiles);
        var images = new List<Serving.Images.PreprocessedImage>(files.Count);
        foreach (string file in files)
        {
            try
            {
                var info = new FileInfo(file);
                if (!info.Exists)
                {
                    throw new UsageException($"--image: file '{file}' does not exist");
                }
                if (info.Length > options.MaxImageBytes)
                {
                    throw new Serving.Images.ImageInputException($"the file is {info.Length} bytes; the limit is {options.MaxImageBytes}");
                }
                images.Add(processor.Process(Serving.Images.ImageDecoder.Decode(File.ReadAllBytes(file), options.MaxImagePixels)));
            }
            catch (Serving.Images.ImageInputException ex)
            {
                throw new InvalidOperationException($"--image {file}: {ex.Message}", ex);
            }
        }
        try
        {
            var expanded = Serving.Images.Llama4PromptExpander.Expand(prompt, images, tokens, vision.Config.OutputTokensPerTile);
            return (expanded.Ids, expanded.Images);
        }
        catch (ArgumentException ex)
        {
            throw new UsageException($"--prompt-ids / --image: {ex.Message}");
        }
    }

    private static Llama4Engine LoadEngine(string dir, IKernelBackend backend, int prefillChunk, Moe.IExpertDispatcher? dispatcher = null,
        ExpertLoadOptions? experts = null)
    {
        var engine = Llama4Engine.Load(dir, backend, dispatcher, experts);
        engine.PrefillChunkTokens = prefillChunk;
        return engine;
    }

    /// <summary>Writes the <c>infer --json</c> object: exactly one JSON object and a newline.</summary>
    internal static void WriteJson(TextWriter stdout, InferenceResult r)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            WriteInts(w, "prompt_ids", r.PromptIds);
            w.WriteStartArray("last_logits");
            foreach (float f in r.LastLogits)
            {
                w.WriteNumberValue(f);
            }
            w.WriteEndArray();
            WriteInts(w, "argmax", r.Argmax);
            w.WriteStartObject("experts");
            foreach (var (layer, perToken) in r.Experts.OrderBy(kv => kv.Key))
            {
                w.WriteStartArray(layer.ToString(System.Globalization.CultureInfo.InvariantCulture));
                foreach (var ids in perToken)
                {
                    w.WriteStartArray();
                    foreach (int id in ids)
                    {
                        w.WriteNumberValue(id);
                    }
                    w.WriteEndArray();
                }
                w.WriteEndArray();
            }
            w.WriteEndObject();
            WriteInts(w, "new_tokens", r.NewTokens);
            w.WriteEndObject();
        }
        stdout.WriteLine(System.Text.Encoding.UTF8.GetString(ms.ToArray()));
        stdout.Flush();
    }

    private static void WriteInts(Utf8JsonWriter w, string name, int[] values)
    {
        w.WriteStartArray(name);
        foreach (int v in values)
        {
            w.WriteNumberValue(v);
        }
        w.WriteEndArray();
    }

    private static async Task<int> BenchAsync(IEnumerable<string> args, TextWriter stdout, TextWriter stderr, CancellationToken ct)
    {
        var a = new CliArgs(args, ["model", "prompt", "gen", "threads", "backend", "gpu", "cpu-precision", "repeat", "quantize", "kv-dtype", "device-path", "cuda-graphs"], ["json", "fp8-activations"],
            configurationKeys: true);
        string dir = ModelDirectory(a);
        var configuration = Configuration(a);
        var expertOptions = ExpertOptionsFrom(configuration, dir);
        var kvDType = KvDTypeFrom(a, BindOrUsage<Serving.Scheduling.SchedulerOptions>(configuration, Serving.Scheduling.SchedulerOptions.SectionName).KvDType);
        int promptLen = a.Int("prompt", 128, 1, 1 << 20);
        int gen = a.Int("gen", 64, 1, 1 << 20);
        int repeat = a.Int("repeat", 3, 1, 100);
        using var backend = CreateBackend(a, stderr, configuration);
        using var engine = Llama4Engine.Load(dir, backend, experts: expertOptions);
        engine.KvDType = kvDType;
        var c = engine.Config;
        var rng = new Random(1234);
        var prompt = Enumerable.Range(0, promptLen).Select(_ => rng.Next(c.VocabSize)).ToArray();
        stderr.WriteLine($"bench: {dir} on {backend.Name}, prompt {promptLen}, gen {gen}, best of {repeat}");

        var timings = await EngineBenchmark.RunAsync(engine, prompt, gen, repeat, ct).ConfigureAwait(false);
        double bestPrefill = timings.PrefillSeconds, bestDecode = timings.DecodeSecondsPerToken * gen;
        double prefillTps = promptLen / bestPrefill, decodeTps = gen / bestDecode;
        if (a.Has("json"))
        {
            stdout.WriteLine(JsonSerializer.Serialize(new { backend = backend.Name, prompt = promptLen, gen, prefill_tokens_per_s = prefillTps, decode_tokens_per_s = decodeTps }));
        }
        else
        {
            stdout.WriteLine($"backend {backend.Name}: prefill {prefillTps:F1} tok/s ({promptLen} tokens in {bestPrefill * 1000:F1} ms), decode {decodeTps:F2} tok/s ({bestDecode * 1000 / gen:F2} ms/token)");
        }
        ReportGraphs(backend, stderr);
        return 0;
    }

    // With --cuda-graphs on: what the graphs did (a capture that keeps failing shows here, not as an error).
    private static void ReportGraphs(IKernelBackend backend, TextWriter stderr)
    {
        if (backend is Kernels.Cuda.CudaKernelBackend { Options.CudaGraphs: true } cuda)
        {
            var g = cuda.GraphCounters;
            stderr.WriteLine($"cuda graphs: {g.Launches} launches, {g.Captures} captures, {g.CaptureFailures} failed captures, {g.EagerSegments} eager segments, "
                + $"{g.GraphSets} graph sets ({g.Graphs} graphs){(g.LastFailure is null ? "" : $"; last failure: {g.LastFailure}")}");
        }
    }
}
