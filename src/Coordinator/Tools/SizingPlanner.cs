using Distributed.Checkpoint;
using Distributed.Kernels;

namespace Distributed.Coordinator.Tools;

/// <summary>A GPU kind the planner knows measured figures for.</summary>
/// <param name="Name">Short name (<c>h100</c>, <c>h200</c>).</param>
/// <param name="MemoryGiB">Device memory the driver reports, GiB.</param>
/// <param name="HbmGBps">
/// Rate at which kernels stream weights and KV from device memory, GB/s: the device-to-device copy rate the GPU check
/// measures (read + write bytes over time), which the 16-expert bf16 GEMM pair at 64 rows matched (102 % on the H100,
/// 104 % on the H200: docs/BENCHMARKS.md, "CUDA (GPU check)").
/// </param>
/// <param name="GemmTflops">
/// Dense bf16 GEMM ceiling, TFLOP/s: one <c>cublasGemmEx</c> pair at Maverick width and 4096 rows in the same GPU check
/// (777 on the H100, 756 on the H200).
/// </param>
public sealed record GpuSpec(string Name, double MemoryGiB, double HbmGBps, double GemmTflops)
{
    /// <summary>NVIDIA H100 80GB HBM3: 79.2 GiB reported, 3010 GB/s copy, 777 TFLOP/s (GPU check run 6, docs/BENCHMARKS.md).</summary>
    public static GpuSpec H100 { get; } = new("h100", 79.2, 3010, 777);

    /// <summary>NVIDIA H200: 139.8 GiB reported, 4252 GB/s copy, 756 TFLOP/s (GPU check, docs/BENCHMARKS.md).</summary>
    public static GpuSpec H200 { get; } = new("h200", 139.8, 4252, 756);

    /// <summary>The spec named <paramref name="name"/> (<c>h100</c>, <c>h200</c>).</summary>
    /// <exception cref="FormatException">Unknown name.</exception>
    public static GpuSpec Parse(string name) => name.Trim().ToLowerInvariant() switch
    {
        "h100" => H100,
        "h200" => H200,
        _ => throw new FormatException($"--gpu '{name}' must be h100 or h200"),
    };
}

/// <summary>What <see cref="SizingPlanner.Plan"/> sizes: the model, the host, and the workload.</summary>
public sealed record SizingInput
{
    /// <summary>The model's text config.</summary>
    public required Llama4TextConfig Config { get; init; }

    /// <summary>GPUs on the host: one coordinator GPU (this build's coordinator uses one device), the rest workers. Default: 8.</summary>
    public int Gpus { get; init; } = 8;

    /// <summary>The GPU's measured figures; <see cref="GpuSpec.MemoryGiB"/> may be overridden by <c>--gpu-memory-gib</c>.</summary>
    public GpuSpec Gpu { get; init; } = GpuSpec.H100;

    /// <summary>How routed experts are held (bf16, or FP8 with per-channel scales). Everything else stays bf16, as in the FP8 release.</summary>
    public Protocol.Contracts.ExpertWeightFormat Experts { get; init; } = Protocol.Contracts.ExpertWeightFormat.Fp8E4M3;

    /// <summary>The KV cache's element type. Default: bf16 (the CUDA default).</summary>
    public KvCacheDType KvDType { get; init; } = KvCacheDType.Bf16;

    /// <summary>Prompt tokens per request. Default: 1000.</summary>
    public int InputTokens { get; init; } = 1000;

    /// <summary>Generated tokens per request. Default: 1000.</summary>
    public int OutputTokens { get; init; } = 1000;

    /// <summary>Sequence length the batch must fit at (KV per sequence); null = InputTokens + OutputTokens.</summary>
    public int? Context { get; init; }

    /// <summary>Batch sizes (concurrent sequences) to predict a decode step for. Default: 1, 8, 32, 64, 128, 256.</summary>
    public IReadOnlyList<int> Batches { get; init; } = [1, 8, 32, 64, 128, 256];

    /// <summary>Rows per dispatch a worker accepts (sizes its expert calls' device scratch). Default: 4096 (ExpertWorker:MaxRowsPerDispatch).</summary>
    public int MaxRowsPerDispatch { get; init; } = 4096;

    /// <summary>Tokens per scheduler step (sizes the coordinator's logits and activation workspace). Default: 512 (Scheduler:MaxBatchTokens).</summary>
    public int MaxBatchTokens { get; init; } = 512;

    /// <summary>Data plane between coordinator and workers on one host: the shared-memory ring (true) or inline gRPC.</summary>
    public bool SharedMemory { get; init; } = true;
}

/// <summary>One row of the decode-step prediction.</summary>
/// <param name="Batch">Concurrent sequences, one new token each per step.</param>
/// <param name="Fits">False when this many sequences of InputTokens + OutputTokens do not fit the coordinator's KV budget.</param>
/// <param name="StepMsThisBuild">Predicted decode step with this build's measured overheads (host round trips per layer, gRPC data plane).</param>
/// <param name="StepMsFloor">The bandwidth floor: the same bytes and FLOPs with no per-op host round trip (device-resident, CUDA graphs).</param>
/// <param name="CoordinatorMs">Coordinator weight, KV and compute time of one step (floor).</param>
/// <param name="ExpertMs">Routed-expert weight and compute time of one step on the busiest worker (floor, all MoE layers).</param>
/// <param name="DispatchMs">Data-plane time of one step (all MoE layers).</param>
/// <param name="TokensPerSecondThisBuild">Output tokens per second over a whole 1000-in/1000-out style run at this batch, this build.</param>
/// <param name="TokensPerSecondFloor">The same at the floor.</param>
public sealed record DecodeStepPrediction(int Batch, bool Fits, double StepMsThisBuild, double StepMsFloor, double CoordinatorMs, double ExpertMs,
    double DispatchMs, double TokensPerSecondThisBuild, double TokensPerSecondFloor);

/// <summary>The planner's answer.</summary>
public sealed record SizingPlan
{
    /// <summary>Parameters of one routed expert (<c>3 · H · I</c>).</summary>
    public required long ExpertParameters { get; init; }

    /// <summary>Routed experts in the model (MoE layers × experts per layer).</summary>
    public required long RoutedExperts { get; init; }

    /// <summary>Bytes of one routed expert in the chosen format.</summary>
    public required long ExpertBytes { get; init; }

    /// <summary>Parameters the coordinator holds: attention, dense MLPs, shared experts, routers, embeddings and lm_head.</summary>
    public required long CoordinatorParameters { get; init; }

    /// <summary>Worker GPUs.</summary>
    public required int Workers { get; init; }

    /// <summary>Routed experts on the fullest worker (<c>ceil(experts / workers)</c>).</summary>
    public required long ExpertsPerWorker { get; init; }

    /// <summary>Per worker GPU: expert weights, bytes.</summary>
    public required long WorkerWeightBytes { get; init; }

    /// <summary>Per worker GPU: expert-call workspace and headroom, bytes (what the worker subtracts from its measured free memory).</summary>
    public required long WorkerWorkspaceBytes { get; init; }

    /// <summary>Per coordinator GPU: weights (bf16), bytes.</summary>
    public required long CoordinatorWeightBytes { get; init; }

    /// <summary>Per coordinator GPU: logits/activation workspace and reserve, bytes.</summary>
    public required long CoordinatorWorkspaceBytes { get; init; }

    /// <summary>Per coordinator GPU: what is left for the KV cache (negative: the weights do not fit), bytes.</summary>
    public required long KvBudgetBytes { get; init; }

    /// <summary>Device memory per GPU, bytes.</summary>
    public required long GpuBytes { get; init; }

    /// <summary>True when the worker GPUs hold their experts and the coordinator GPU its weights with room for one sequence.</summary>
    public required bool Fits { get; init; }

    /// <summary>KV bytes per token of the first 8192 positions (every layer), and per token beyond (NoPE layers only).</summary>
    public required (long WithinChunk, long BeyondChunk) KvBytesPerToken { get; init; }

    /// <summary>Positions of one sequence the batch must fit at (Context, or InputTokens + OutputTokens).</summary>
    public required long SequenceTokens { get; init; }

    /// <summary>KV bytes of one sequence of <see cref="SequenceTokens"/> positions.</summary>
    public required long KvBytesPerSequence { get; init; }

    /// <summary>Most concurrent sequences of <see cref="SequenceTokens"/> positions the KV budget holds.</summary>
    public required long MaxBatch { get; init; }

    /// <summary>Longest context one sequence can have (KV budget and max_position_embeddings).</summary>
    public required long MaxContext { get; init; }

    /// <summary>Decode-step predictions per batch size.</summary>
    public required IReadOnlyList<DecodeStepPrediction> Steps { get; init; }

    /// <summary>The prediction at <see cref="MaxBatch"/> (the throughput this host can reach on this workload).</summary>
    public required DecodeStepPrediction AtMaxBatch { get; init; }
}

/// <summary>
/// The sizing simulator behind <c>plan</c>: from a Llama 4 config alone (no weights), the memory of every GPU of one host
/// in this project's layout (one coordinator GPU with attention, KV cache, dense layers, shared experts, routers,
/// embeddings and lm_head; the other GPUs workers holding the routed experts, spread evenly), the largest batch and
/// context that fit, and a decode step per batch size from constants this project measured. Every constant names its
/// source (docs/BENCHMARKS.md); the two that are assumptions say so.
/// </summary>
public static class SizingPlanner
{
    /// <summary>
    /// Host round trips of the host-staged CUDA path (<c>--device-path off</c>) per decoder layer, ms: every op stages its
    /// activations through host memory and synchronizes. tiny-maverick decodes at 2.42 ms/token on an H100 with 6 layers
    /// of ~1 µs of math each (docs/BENCHMARKS.md, CUDA, H100 run 6) = 0.40 ms per layer. The device-resident path waits
    /// once per MoE layer instead; it has not run on a GPU, so no measured constant for it exists yet.
    /// </summary>
    public const double HostRoundTripMsPerLayer = 0.40;

    /// <summary>
    /// Data-plane cost per MoE layer that does not depend on the rows, ms: tiny-maverick on 2 local workers, 201 µs per MoE
    /// layer of serialize + wait − worker time (docs/BENCHMARKS.md, "Data plane", section 2).
    /// </summary>
    public const double DispatchFixedMsPerMoeLayer = 0.20;

    /// <summary>
    /// Data-plane cost per MiB of rows (request + reply) on the same-host shared-memory ring, ms: (0.477 − 0.052) ms for
    /// 5 MiB more (docs/BENCHMARKS.md, "Data plane", section 1, run A, grpc shm at 512 vs 1 row).
    /// </summary>
    public const double SharedMemoryMsPerMiB = 0.085;

    /// <summary>
    /// Data-plane cost per MiB of rows sent inline through gRPC, ms: (11.904 − 0.091) ms for 5 MiB more (same table,
    /// grpc stream column).
    /// </summary>
    public const double InlineGrpcMsPerMiB = 2.36;

    /// <summary>
    /// Per GPU, bytes held back for the CUDA context and allocator slack: the worker's default headroom
    /// (<see cref="DeviceMemoryBudget.DefaultHeadroomBytes"/>, 2 GiB). An assumption, not a measurement of this project.
    /// </summary>
    public const long ReserveBytes = DeviceMemoryBudget.DefaultHeadroomBytes;

    /// <summary>Expert calls in flight on one worker that the workspace is sized for (<c>ExpertWorker:MaxConcurrentRequestsPerStream</c>'s default).</summary>
    public const int WorkerConcurrentCalls = 2;

    /// <summary>
    /// Plans <paramref name="input"/>.
    /// </summary>
    /// <exception cref="ArgumentException">Fewer GPUs than the coordinator needs plus one worker, or a non-positive size.</exception>
    public static SizingPlan Plan(SizingInput input)
    {
        ArgumentNullException.ThrowIfNull(input);
        var c = input.Config;
        if (input.Gpus < 2)
        {
            throw new ArgumentException($"--gpus {input.Gpus} must be at least 2: one for the coordinator and at least one worker");
        }
        if (input.InputTokens < 1 || input.OutputTokens < 1 || input.Context is < 1 || input.Batches.Any(b => b < 1) || input.Gpu.MemoryGiB <= 0)
        {
            throw new ArgumentException("token counts, batch sizes and GPU memory must be positive");
        }
        long h = c.HiddenSize, inter = c.IntermediateSize, mlp = c.IntermediateSizeMlp, v = c.VocabSize;
        long q = (long)c.NumHeads * c.HeadDim, kv = (long)c.NumKvHeads * c.HeadDim;
        int moeLayers = c.MoeLayers.Count, denseLayers = c.NumLayers - moeLayers;
        long expertParams = 3 * h * inter;
        long routedExperts = (long)moeLayers * c.NumExperts;
        bool fp8 = input.Experts == Protocol.Contracts.ExpertWeightFormat.Fp8E4M3;
        long expertBytes = fp8 ? expertParams + (((2 * inter) + h) * sizeof(float)) : expertParams * 2;
        long attention = (long)c.NumLayers * ((h * q) + (2 * h * kv) + (q * h));
        long shared = moeLayers * expertParams;
        long dense = denseLayers * 3 * h * mlp;
        long routers = moeLayers * (long)c.NumExperts * h;
        long embeddings = v * h * (c.TieWordEmbeddings ? 1 : 2);
        long coordinatorParams = attention + shared + dense + routers + embeddings;

        int workers = input.Gpus - 1;
        long perWorker = (routedExperts + workers - 1) / workers;
        long gpuBytes = (long)(input.Gpu.MemoryGiB * (1L << 30));
        long workerWeights = perWorker * expertBytes;
        // What a worker subtracts from its GPU's free memory before it reports a capacity (DeviceMemoryBudget): the
        // expert calls' device scratch at MaxRowsPerDispatch rows, cuBLAS workspaces, and the headroom.
        long workerWorkspace = DeviceMemoryBudget.WorkerWorkspaceBytes(input.MaxRowsPerDispatch, WorkerConcurrentCalls, h, inter, fp8) + ReserveBytes;
        long coordinatorWeights = coordinatorParams * 2;
        // Logits of a full step (fp32) and a few hidden-sized activation buffers, plus the reserve.
        long coordinatorWorkspace = ((long)input.MaxBatchTokens * ((v * 4) + (8 * h * 4) + (2 * mlp * 4))) + ReserveBytes;
        long kvBudget = gpuBytes - coordinatorWeights - coordinatorWorkspace;

        int nope = Enumerable.Range(0, c.NumLayers).Count(l => !c.UsesRope(l) || c.AttentionChunkSize <= 0);
        int chunked = c.NumLayers - nope;
        long rowBytes = 2 * KvCacheDTypes.RowBytes(input.KvDType, kv); // K and V of one position of one layer
        long KvBytes(long tokens) => rowBytes * ((nope * tokens) + (chunked * Math.Min(tokens, c.AttentionChunkSize > 0 ? c.AttentionChunkSize : tokens)));
        long sequence = input.Context ?? (input.InputTokens + input.OutputTokens);
        long perSequence = KvBytes(sequence);
        long maxBatch = kvBudget > 0 ? kvBudget / perSequence : 0;
        long maxContext = 0;
        if (kvBudget > 0)
        {
            // KV grows by rowBytes · layers per token up to the chunk, then by rowBytes · NoPE layers.
            long withinChunk = rowBytes * c.NumLayers;
            long chunk = c.AttentionChunkSize > 0 ? c.AttentionChunkSize : long.MaxValue;
            maxContext = kvBudget / withinChunk <= chunk ? kvBudget / withinChunk : chunk + ((kvBudget - KvBytes(chunk)) / Math.Max(1, rowBytes * nope));
            maxContext = Math.Min(maxContext, c.MaxPositionEmbeddings);
        }
        bool fits = workerWeights + workerWorkspace <= gpuBytes && kvBudget >= KvBytes(1);

        DecodeStepPrediction Predict(int batch)
        {
            double bw = input.Gpu.HbmGBps * 1e9 / 1e3; // bytes per ms
            double flops = input.Gpu.GemmTflops * 1e12 / 1e3; // FLOP per ms
            // Coordinator: every weight it holds is read once per step (lm_head included; the embedding is a gather),
            // every sequence's KV at the run's mean context, and its matmul FLOPs, whichever bound is higher.
            long readWeights = (coordinatorParams - (v * h * (c.TieWordEmbeddings ? 0 : 1))) * 2;
            double meanContext = input.InputTokens + (input.OutputTokens / 2.0);
            double kvRead = batch * (double)KvBytes((long)meanContext);
            double coordinatorMs = Math.Max((readWeights + kvRead) / bw, 2.0 * (coordinatorParams - (v * h)) * batch / flops);
            // Workers: each MoE layer, the busiest worker streams the distinct experts its tokens hit (top-k, uniform
            // routing: E · (1 − (1 − k/E)^B) distinct experts per layer, spread over the workers) and does their FLOPs.
            double distinct = c.NumExperts * (1 - Math.Pow(1 - ((double)c.TopK / c.NumExperts), batch));
            double perWorkerExperts = Math.Ceiling(distinct / workers);
            double expertLayerMs = Math.Max(perWorkerExperts * expertBytes / bw, 2.0 * expertParams * batch * c.TopK / workers / flops);
            double expertMs = moeLayers * expertLayerMs;
            // Data plane per MoE layer: rows out (bf16) and back (bf16), fixed cost plus bytes.
            double mib = batch * c.TopK * h * 4.0 / (1 << 20);
            double dispatchMs = moeLayers * (DispatchFixedMsPerMoeLayer + (mib * (input.SharedMemory ? SharedMemoryMsPerMiB : InlineGrpcMsPerMiB)));
            // The shared expert runs on the coordinator while the routed experts run: its time is in coordinatorMs.
            double floor = coordinatorMs + expertMs;
            double thisBuild = coordinatorMs + expertMs + dispatchMs + (c.NumLayers * HostRoundTripMsPerLayer);
            // Whole run at this batch: prefill of every prompt (compute-bound at the GEMM ceiling on the coordinator, the
            // experts' share on the workers in parallel), then OutputTokens decode steps.
            double prefillMs = 2.0 * batch * input.InputTokens * Math.Max(coordinatorParams - (v * h), (double)moeLayers * expertParams * c.TopK / workers) / flops;
            double tokens = (double)batch * input.OutputTokens;
            bool batchFits = batch <= maxBatch;
            return new DecodeStepPrediction(batch, batchFits, thisBuild, floor, coordinatorMs, expertMs, dispatchMs,
                tokens / ((prefillMs + (input.OutputTokens * thisBuild)) / 1e3), tokens / ((prefillMs + (input.OutputTokens * floor)) / 1e3));
        }

        var steps = input.Batches.Select(Predict).ToList();
        return new SizingPlan
        {
            ExpertParameters = expertParams,
            RoutedExperts = routedExperts,
            ExpertBytes = expertBytes,
            CoordinatorParameters = coordinatorParams,
            Workers = workers,
            ExpertsPerWorker = perWorker,
            WorkerWeightBytes = workerWeights,
            WorkerWorkspaceBytes = workerWorkspace,
            CoordinatorWeightBytes = coordinatorWeights,
            CoordinatorWorkspaceBytes = coordinatorWorkspace,
            KvBudgetBytes = kvBudget,
            GpuBytes = gpuBytes,
            Fits = fits,
            KvBytesPerToken = (rowBytes * c.NumLayers, rowBytes * nope),
            SequenceTokens = sequence,
            KvBytesPerSequence = perSequence,
            MaxBatch = maxBatch,
            MaxContext = maxContext,
            Steps = steps,
            AtMaxBatch = Predict((int)Math.Clamp(maxBatch, 1, int.MaxValue)),
        };
    }
}
