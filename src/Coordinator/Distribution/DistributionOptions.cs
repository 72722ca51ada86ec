using Distributed.Checkpoint;
using Distributed.Kernels;
using Distributed.Protocol.Grpc;

namespace Distributed.Coordinator.Distribution;

/// <summary>How the coordinator talks to expert workers. Section <c>Distribution</c>.</summary>
public sealed class DistributionOptions
{
    /// <summary>Configuration section name.</summary>
    public const string SectionName = "Distribution";

    /// <summary>
    /// Row dtype of dispatch (coordinator → worker): BF16 (half the bytes of fp32), FP32 (bitwise identical to in-process),
    /// or FP8_E4M3 (per-row scale + 1 byte per element, about half of bf16, as DeepEP dispatches; rows travel inline).
    /// Replies use the same dtype, except after FP8 dispatch: <see cref="CombineWireDType"/>. Default: BF16.
    /// </summary>
    public WireDType WireDType { get; set; } = WireDType.Bf16;

    /// <summary>Reply (combine) dtype after FP8 dispatch: BF16 or FP32 (replies are never FP8). Default: BF16.</summary>
    public WireDType CombineWireDType { get; set; } = WireDType.Bf16;

    /// <summary>The dtype replies come back in: <see cref="WireDType"/>, or <see cref="CombineWireDType"/> after FP8 dispatch.</summary>
    public WireDType ReplyWireDType => WireDType == WireDType.Fp8E4M3 ? CombineWireDType : WireDType;

    /// <summary>Longest a MoE layer's dispatch may take, from send to the last reply, before it fails with
    /// DeadlineExceeded naming the silent worker. Default: 30 s.</summary>
    public TimeSpan DispatchTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Longest a handshake with a worker may take. Default: 10 s.</summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Use the shared-memory row transport with workers on this host when they accept it: after the handshake the
    /// coordinator passes a sealed memfd of <see cref="SharedRingBytes"/> to the worker as a file descriptor over the
    /// worker's rendezvous socket, and rows travel through it (the gRPC message carries only their offset). Workers on
    /// other hosts, workers that decline, and a failed rendezvous give inline rows. Linux only (elsewhere always
    /// inline). Default: true.
    /// </summary>
    public bool PreferSharedMemory { get; set; } = true;

    /// <summary>Size of each shared ring (one per worker connection; pages are only used as rows are written). Default: 64 MiB.</summary>
    public long SharedRingBytes { get; set; } = 64L << 20;

    /// <summary>
    /// With the shared ring, signal requests and replies through the ring itself (a doorbell: slot queues in the ring's
    /// first 264 KiB with futex wake-ups, protocol 1.4) instead of one Dispatch stream message each way, when the
    /// worker offers it. A request whose header does not fit a slot, or that finds all 64 slots busy, still goes over
    /// the stream. Workers of protocol 1.3 keep the stream. Default: true.
    /// </summary>
    public bool RingDoorbell { get; set; } = true;

    /// <summary>
    /// How long the coordinator's doorbell reader spins on the reply queue before it sleeps on the futex. A reply that
    /// comes within it skips a wake-up, but the reader spins right after it hands a reply on, exactly when the code
    /// awaiting that reply needs a core: on a machine without idle cores spinning makes round trips slower (2 vCPUs:
    /// 1 row 0.060 ms at 0, 0.074 ms at 20 µs, 0.239 ms at 100 µs; docs/BENCHMARKS.md "#15 ring doorbell"). Raise it
    /// only where cores are to spare. Default: 0 (sleep at once).
    /// </summary>
    public TimeSpan DoorbellSpin { get; set; } = TimeSpan.Zero;

    /// <summary>
    /// The cluster credential's token, sent as <c>authorization: Bearer &lt;token&gt;</c> on every data-plane call.
    /// Secret: never logged. Default: the <c>DISTRIBUTED_CLUSTER_TOKEN</c> environment variable, read when the options
    /// are created (null when unset: calls carry no credential and a worker that requires one refuses them with
    /// UNAUTHENTICATED). <c>serve</c> and <c>infer</c> take the configuration key <c>Cluster:Token</c> instead when it
    /// is set, as a worker does. <see cref="LocalWorkerCluster"/> generates one for the workers it starts when this is null.
    /// </summary>
    public string? ClusterToken { get; set; } = Protocol.Contracts.ClusterToken.Resolve().Token;

    /// <summary>An expert with at least this many rows in one dispatch is split into contiguous slices over its least
    /// loaded healthy replicas (one slice per replica, at least half this many rows each). Default: 32.</summary>
    public int SplitRows { get; set; } = 32;

    /// <summary>Rounds of sending a MoE layer's rows (the first send plus retries after a lost worker or a stale plan)
    /// before the dispatch fails. Default: 4.</summary>
    public int MaxDispatchAttempts { get; set; } = 4;

    /// <summary>How long a worker that failed on the data plane is avoided while the plan version stays the same. Default: 10 s.</summary>
    public TimeSpan SuspectDuration { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Longest wait for a plan that re-places the experts of unreachable workers before the dispatch fails
    /// with Unavailable. Default: 60 s.</summary>
    public TimeSpan RecoveryTimeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Quantization applied at load to bf16 routed experts, in process and on every worker (<c>--quantize none|fp8</c>):
    /// <see cref="ExpertQuantization.Fp8"/> holds each expert in FP8 E4M3 with one scale per output channel, the codes and
    /// scales of the FP8 release made from these weights. Folded into the model fingerprint, so a worker that loaded its
    /// experts otherwise is refused. Default: <see cref="ExpertQuantization.None"/>.
    /// </summary>
    public ExpertQuantization Quantize { get; set; } = ExpertQuantization.None;

    /// <summary>
    /// FP8 experts compute W8A8 (<c>--fp8-activations</c>): the expert input and the SwiGLU output quantized per token to
    /// FP8, as the release's config says. Every worker must report the same rule in its handshake (<c>expert_activations</c>);
    /// one reporting the other is refused. Default: false (weight-only).
    /// </summary>
    public bool Fp8Activations { get; set; }

    /// <summary>How routed experts are loaded: <see cref="Quantize"/> and <see cref="Fp8Activations"/>.</summary>
    public ExpertLoadOptions ExpertLoad => new(Quantize, Fp8Activations ? Fp8ActivationMode.PerTokenFp8 : Fp8ActivationMode.WeightOnly);

    /// <summary>The handshake tag the workers must report: <c>weight-only</c> or <c>fp8-per-token</c>.</summary>
    public string ExpertActivations => ExpertLoad.ActivationsTag;

    /// <summary>
    /// Fixed workers with static shards, comma-separated (<c>host:port</c>, <c>http(s)://host:port</c>, <c>unix:/path</c>):
    /// placement from their handshakes, never changed, no admin API. Null = experts in-process or on a cluster. Default: null.
    /// </summary>
    public string? Workers { get; set; }

    /// <summary>How long <c>infer</c> waits for the cluster to serve every expert before it gives up. Default: 120 s.</summary>
    public TimeSpan ReadyTimeout { get; set; } = TimeSpan.FromSeconds(120);

    /// <summary>
    /// Micro-batch ping-pong (issue #15): a step of at least this many tokens over at least two sequences is split into
    /// two micro-batches of about half the tokens each (sequences stay whole), and while one micro-batch's routed rows
    /// are at the workers the coordinator runs the other's attention, router and shared expert. Below the threshold a
    /// second set of requests per MoE layer costs more than the overlap hides. Outputs are bitwise those of the unsplit
    /// step. 0 = never split. The CLI's <c>--micro-batch N|off</c>. Default: 0 (off): on the 2-vCPU development machine
    /// the second set of requests costs more CPU than the overlap hides (docs/BENCHMARKS.md, issue #15); turn it on where
    /// the coordinator's per-layer work for half a batch is comparable to a round trip and it has a core to spare.
    /// </summary>
    public int MicroBatchMinTokens { get; set; }

    /// <summary>The model's <see cref="Model.Llama4.MicroBatching"/> for <see cref="MicroBatchMinTokens"/>.</summary>
    public Model.Llama4.MicroBatching MicroBatching()
        => MicroBatchMinTokens == 0 ? Model.Llama4.MicroBatching.Off : Model.Llama4.MicroBatching.From(MicroBatchMinTokens);

    /// <summary>Identity sent in handshakes. Default: <c>coordinator-{pid}</c>.</summary>
    public string CoordinatorId { get; set; } = $"coordinator-{Environment.ProcessId}";

    /// <summary>Every problem with these options; each message names its field.</summary>
    public IReadOnlyList<string> Validate()
    {
        var errors = new List<string>();
        if (WireDType is not (WireDType.Bf16 or WireDType.Fp32 or WireDType.Fp8E4M3))
        {
            errors.Add($"Distribution:WireDType {WireDType} must be Bf16, Fp32 or Fp8E4M3");
        }
        if (CombineWireDType is not (WireDType.Bf16 or WireDType.Fp32))
        {
            errors.Add($"Distribution:CombineWireDType {CombineWireDType} must be Bf16 or Fp32");
        }
        if (DispatchTimeout <= TimeSpan.Zero || DispatchTimeout > TimeSpan.FromHours(1))
        {
            errors.Add($"Distribution:DispatchTimeout {DispatchTimeout} must be within (0, 1 h]");
        }
        if (ConnectTimeout <= TimeSpan.Zero || ConnectTimeout > TimeSpan.FromHours(1))
        {
            errors.Add($"Distribution:ConnectTimeout {ConnectTimeout} must be within (0, 1 h]");
        }
        if (SharedRingBytes is < 1 << 20 or > 1L << 34)
        {
            errors.Add($"Distribution:SharedRingBytes {SharedRingBytes} must be within [1 MiB, 16 GiB]");
        }
        if (DoorbellSpin < TimeSpan.Zero || DoorbellSpin > TimeSpan.FromMilliseconds(10))
        {
            errors.Add($"Distribution:DoorbellSpin {DoorbellSpin} must be within [0, 10 ms]");
        }
        if (SplitRows is < 2 or > 1 << 20)
        {
            errors.Add($"Distribution:SplitRows {SplitRows} must be within [2, {1 << 20}]");
        }
        if (MaxDispatchAttempts is < 1 or > 32)
        {
            errors.Add($"Distribution:MaxDispatchAttempts {MaxDispatchAttempts} must be within [1, 32]");
        }
        if (SuspectDuration < TimeSpan.Zero || SuspectDuration > TimeSpan.FromHours(1))
        {
            errors.Add($"Distribution:SuspectDuration {SuspectDuration} must be within [0, 1 h]");
        }
        if (RecoveryTimeout <= TimeSpan.Zero || RecoveryTimeout > TimeSpan.FromHours(1))
        {
            errors.Add($"Distribution:RecoveryTimeout {RecoveryTimeout} must be within (0, 1 h]");
        }
        if (MicroBatchMinTokens != 0 && MicroBatchMinTokens is < 2 or > 1 << 20)
        {
            errors.Add($"Distribution:MicroBatchMinTokens {MicroBatchMinTokens} must be 0 (off) or within [2, {1 << 20}]");
        }
        if (!Enum.IsDefined(Quantize))
        {
            errors.Add($"Distribution:Quantize '{Quantize}' must be None or Fp8");
        }
        if (ReadyTimeout <= TimeSpan.Zero || ReadyTimeout > TimeSpan.FromHours(1))
        {
            errors.Add($"Distribution:ReadyTimeout {ReadyTimeout} must be within (0, 1 h]");
        }
        if (ClusterToken is not null)
        {
            errors.AddRange(Protocol.Contracts.ClusterToken.Validate(ClusterToken, $"Distribution:ClusterToken ({Protocol.Contracts.ClusterToken.EnvironmentVariable})"));
        }
        if (string.IsNullOrWhiteSpace(CoordinatorId))
        {
            errors.Add("Distribution:CoordinatorId must not be empty");
        }
        return errors;
    }

    /// <summary>Parses the CLI's <c>--micro-batch</c>: <c>off</c> (0) or the smallest step split, in tokens (at least 2).</summary>
    /// <exception cref="FormatException">Anything else.</exception>
    public static int ParseMicroBatch(string text)
    {
        string t = text.Trim();
        if (t.Equals("off", StringComparison.OrdinalIgnoreCase))
        {
            return 0;
        }
        return int.TryParse(t, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int n) && n is >= 2 and <= 1 << 20
            ? n
            : throw new FormatException($"--micro-batch '{text}' must be off or a token count within [2, {1 << 20}]");
    }

    /// <summary>Parses <c>bf16</c> / <c>fp32</c> / <c>fp8</c> (the CLI's <c>--wire</c>; fp8 dispatch is answered in bf16).</summary>
    /// <exception cref="FormatException">Anything else.</exception>
    public static WireDType ParseWire(string text) => text.Trim().ToLowerInvariant() switch
    {
        "bf16" => WireDType.Bf16,
        "fp32" => WireDType.Fp32,
        "fp8" => WireDType.Fp8E4M3,
        _ => throw new FormatException($"--wire '{text}' must be bf16, fp32 or fp8"),
    };
}
