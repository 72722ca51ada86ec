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

    /// <summary>Use the shared-memory row transport with workers on this host when they accept it. Default: false.</summary>
    public bool PreferSharedMemory { get; set; }

    /// <summary>Size of each shared ring (one per worker connection). Default: 64 MiB.</summary>
    public long SharedRingBytes { get; set; } = 64L << 20;

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
    /// What the workers' FP8 experts must multiply, as their handshake reports it (<c>expert_activations</c>):
    /// <c>weight-only</c> or <c>fp8-per-token</c> (W8A8, <c>--fp8-activations</c>). A worker reporting the other is refused
    /// (its outputs would differ from the model this coordinator runs). Default: <c>weight-only</c>.
    /// </summary>
    public string ExpertActivations { get; set; } = "weight-only";

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
        if (ExpertActivations is not ("weight-only" or "fp8-per-token"))
        {
            errors.Add($"Distribution:ExpertActivations '{ExpertActivations}' must be weight-only or fp8-per-token");
        }
        if (string.IsNullOrWhiteSpace(CoordinatorId))
        {
            errors.Add("Distribution:CoordinatorId must not be empty");
        }
        return errors;
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
