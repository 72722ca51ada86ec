using System.ComponentModel.DataAnnotations;
using Microsoft.Extensions.Options;

namespace Distributed.ExpertWorker.Hosting;

/// <summary>Settings of one expert worker. Section <c>ExpertWorker</c>.</summary>
public sealed class ExpertWorkerOptions
{
    /// <summary>Configuration section name.</summary>
    public const string SectionName = "ExpertWorker";

    /// <summary>Hugging Face model directory to load expert slices from. Required.</summary>
    [Required]
    public string ModelDirectory { get; set; } = "";

    /// <summary>Cluster-unique worker id. Default: empty = <c>w-{machine}-{pid}</c>.</summary>
    public string WorkerId { get; set; } = "";

    /// <summary>Address Kestrel binds the data plane to (loopback by default; the bench and tests never leave it). Default: 127.0.0.1.</summary>
    public string GrpcHost { get; set; } = "127.0.0.1";

    /// <summary>TCP port of the data plane; 0 picks a free one (the bound address is printed). Default: 0.</summary>
    [Range(0, 65535)]
    public int GrpcPort { get; set; }

    /// <summary>
    /// TCP port of the HTTP/1.1 operations endpoint on <see cref="GrpcHost"/>: <c>/metrics</c> (Prometheus),
    /// <c>/healthz/live</c>, <c>/healthz/ready</c> (200 once the shard serves its plan, warm); 0 picks a free one
    /// (printed as <c>ops=</c> in the ready line), -1 turns it off. Default: 0.
    /// </summary>
    [Range(-1, 65535)]
    public int OpsPort { get; set; }

    /// <summary>Also serve the data plane on this Unix domain socket (same-host coordinators). Default: none.</summary>
    public string? UnixSocketPath { get; set; }

    /// <summary>Largest number of token rows in one request (sizes the gRPC message limit). Default: 4096.</summary>
    [Range(1, 1 << 20)]
    public int MaxRowsPerDispatch { get; set; } = 4096;

    /// <summary>Kernel backend for the experts: Auto = CUDA when a device is usable, else CPU. Default: Auto.</summary>
    public Distributed.Kernels.KernelBackendKind KernelBackend { get; set; } = Distributed.Kernels.KernelBackendKind.Auto;

    /// <summary>
    /// Arithmetic of the CPU backend's expert FFNs: Fp32 (default) or Bf16 (AVX512-BF16 only). Give every process of a
    /// cluster the same value: outputs are independent of placement only when all experts compute alike.
    /// </summary>
    public Distributed.Kernels.CpuMatMulPrecision KernelCpuPrecision { get; set; }

    /// <summary>
    /// Quantization of a bf16 checkpoint's routed experts at load: None, or Fp8 (per output channel, the recipe of the FP8
    /// release). Refused on an FP8 checkpoint. Coordinator and workers must agree (it changes the model fingerprint).
    /// Default: None.
    /// </summary>
    public Distributed.Checkpoint.ExpertQuantization Quantize { get; set; }

    /// <summary>
    /// FP8 experts compute W8A8: expert input and SwiGLU output quantized per token to FP8 (the release's
    /// <c>input_activations</c>, as vLLM computes it). Needs FP8 experts. Reported in the handshake; a coordinator
    /// expecting the other semantics refuses the worker. Default: false (weight-only).
    /// </summary>
    public bool Fp8Activations { get; set; }

    /// <summary>How this worker loads its experts (<see cref="Quantize"/> and <see cref="Fp8Activations"/>).</summary>
    public Distributed.Checkpoint.ExpertLoadOptions ExpertLoad =>
        new(Quantize, Fp8Activations ? Distributed.Kernels.Fp8ActivationMode.PerTokenFp8 : Distributed.Kernels.Fp8ActivationMode.WeightOnly);

    /// <summary>Threads of the CPU kernel backend; 0 = all cores. Default: 0.</summary>
    [Range(0, 1024)]
    public int KernelThreads { get; set; }

    /// <summary>
    /// Bytes of expert weights this worker may hold (its placement capacity, <c>--memory</c>); 0 = measured: with the
    /// CUDA backend the device's free memory after the backend started, less <see cref="DeviceReservedBytes"/>, the
    /// expert calls' workspace and <see cref="DeviceHeadroomBytes"/> (<see cref="Distributed.Kernels.DeviceMemoryBudget"/>);
    /// with the CPU backend the memory available to the process. Default: 0.
    /// </summary>
    [Range(0, long.MaxValue)]
    public long MemoryCapacityBytes { get; set; }

    /// <summary>
    /// CUDA device ordinal the experts run on (<c>--gpu N</c>); null = device 0. Must be below the number of devices
    /// the driver reports; refused with <see cref="KernelBackend"/> Cpu. With Auto on a machine without CUDA the worker
    /// runs on the CPU and logs that the setting is unused. Default: null.
    /// </summary>
    [Range(0, 1023)]
    public int? Gpu { get; set; }

    /// <summary>
    /// Device memory kept free when the capacity is measured, bytes (<see cref="MemoryCapacityBytes"/> 0, CUDA backend):
    /// what grows after the measurement besides weights and call scratch. Default: 2 GiB
    /// (<see cref="Distributed.Kernels.DeviceMemoryBudget.DefaultHeadroomBytes"/>).
    /// </summary>
    [Range(0, long.MaxValue)]
    public long DeviceHeadroomBytes { get; set; } = Distributed.Kernels.DeviceMemoryBudget.DefaultHeadroomBytes;

    /// <summary>
    /// Device memory another user of this GPU will take after this worker measured it, bytes: e.g. a coordinator on the
    /// same GPU (its non-expert weights and KV budget). Subtracted from the measured capacity. Default: 0 (the worker
    /// has its GPU to itself).
    /// </summary>
    [Range(0, long.MaxValue)]
    public long DeviceReservedBytes { get; set; }

    /// <summary>
    /// A fixed shard (<c>all</c>, or <c>layer:first-last,...</c>) served at plan version 0 without joining a cluster
    /// (no silo); empty = join the cluster and follow the placement plan. Default: empty.
    /// </summary>
    public string? StaticExperts { get; set; }

    /// <summary>Plan version a static shard serves (requests must carry it). Default: 0.</summary>
    [Range(0, long.MaxValue)]
    public long StaticPlanVersion { get; set; }

    /// <summary>Requests of one stream computed concurrently. Default: 2.</summary>
    [Range(1, 64)]
    public int MaxConcurrentRequestsPerStream { get; set; } = 2;

    /// <summary>Run each newly loaded expert once on a zero row before serving it. Default: true.</summary>
    public bool WarmUp { get; set; } = true;

    /// <summary>After a new plan version is committed, how long requests routed with the previous version are still
    /// served (and its experts kept resident) so that coordinators switching tables never see a refusal. Default: 2 s.</summary>
    [Range(typeof(TimeSpan), "00:00:00", "00:10:00")]
    public TimeSpan RetireDelay { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>
    /// Run WITHOUT the cluster credential when none is configured (no <c>Cluster:Token</c> /
    /// <c>DISTRIBUTED_CLUSTER_TOKEN</c>): any process that reaches the data-plane port may use it. For development on
    /// one machine only: refused unless <see cref="GrpcHost"/> is a loopback address, and logged as a warning. A
    /// configured token is always required, whatever this says. Default: false (a worker without a token exits with
    /// code 2).
    /// </summary>
    public bool AllowUnauthenticated { get; set; }

    /// <summary>
    /// Accept the same-host shared-memory transport: a coordinator on this host passes a sealed memfd over this worker's
    /// rendezvous socket (in a private 0700 directory) and rows travel through it instead of the gRPC message. False =
    /// rows always travel inline. Default: true.
    /// </summary>
    public bool SharedMemory { get; set; } = true;

    /// <summary>Where the rendezvous socket's private directory is created. Default: empty = <c>$XDG_RUNTIME_DIR</c>
    /// when set, else the temp directory.</summary>
    public string? SharedMemoryDirectory { get; set; }

    /// <summary>
    /// Agree to a coordinator's request for the ring doorbell (protocol 1.4): requests and replies whose rows are in the
    /// shared ring are signalled through slot queues in the ring itself, read by one thread per session, instead of one
    /// Dispatch stream message each way. False = the stream carries every request. Default: true.
    /// </summary>
    public bool RingDoorbell { get; set; } = true;

    /// <summary>How long a session's doorbell reader spins on the request queue before it sleeps on the futex (see
    /// the coordinator's <c>Distribution:DoorbellSpin</c>: spinning only pays where cores are idle). Default: 0.</summary>
    [Range(typeof(TimeSpan), "00:00:00", "00:00:00.010")]
    public TimeSpan DoorbellSpin { get; set; } = TimeSpan.Zero;

    /// <summary>Largest shared ring a coordinator may pass (bytes); larger offers get inline rows. Default: 1 GiB.</summary>
    [Range(1L << 20, 1L << 34)]
    public long MaxSharedRingBytes { get; set; } = 1L << 30;

    /// <summary>Most handshake sessions kept. When full, an idle session (no open stream, unused for
    /// <see cref="SessionIdleGrace"/>) is evicted; if there is none, Hello answers RESOURCE_EXHAUSTED. Default: 256.</summary>
    [Range(1, 65536)]
    public int MaxSessions { get; set; } = 256;

    /// <summary>How long a session must have been idle before a new one may evict it. Default: 30 s.</summary>
    [Range(typeof(TimeSpan), "00:00:00", "01:00:00")]
    public TimeSpan SessionIdleGrace { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Largest payload this worker accepts or sends: rows × hidden × 4 bytes (fp32) plus headroom.</summary>
    public int MaxMessageBytes(int hiddenSize) => (int)Math.Min(int.MaxValue, (long)MaxRowsPerDispatch * hiddenSize * 4 + (64 << 10));
}

/// <summary>Attribute rules of <see cref="ExpertWorkerOptions"/> (source-generated).</summary>
[OptionsValidator]
public sealed partial class ExpertWorkerOptionsValidator : IValidateOptions<ExpertWorkerOptions>
{
}
