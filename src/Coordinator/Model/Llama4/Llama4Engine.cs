using Distributed.Coordinator.Model.Llama4.Vision;
using Distributed.Coordinator.Moe;
using Distributed.Kernels;
using Distributed.Checkpoint;

namespace Distributed.Coordinator.Model.Llama4;

/// <summary>
/// One model ready to run: checkpoint + coordinator weights + an expert dispatcher (in-process by default). Generation
/// runs through the scheduler (<c>Serving.Scheduling</c>: <c>ContinuousBatchScheduler</c>, and <c>EngineInference</c> for
/// <c>infer</c>). A multimodal checkpoint also brings its vision tower and projector (<see cref="Vision"/>).
/// </summary>
public sealed class Llama4Engine : IDisposable
{
    private readonly CheckpointReader _checkpoint;
    private readonly Llama4Weights _weights;
    private readonly IDisposable? _ownedDispatcher;

    private Llama4Engine(CheckpointReader checkpoint, Llama4Weights weights, IKernelBackend backend, IExpertDispatcher dispatcher, IDisposable? owned,
        Llama4VisionModel? vision)
    {
        _checkpoint = checkpoint;
        _weights = weights;
        _ownedDispatcher = owned;
        Backend = backend;
        Model = new Llama4Model(weights, backend, dispatcher);
        Vision = vision;
    }

    /// <summary>The model.</summary>
    public Llama4Model Model { get; }

    /// <summary>The vision tower and projector of a multimodal checkpoint, or null for a text-only one.</summary>
    public Llama4VisionModel? Vision { get; }

    /// <summary>The validated config.</summary>
    public Llama4TextConfig Config => _weights.Config;

    /// <summary>The checkpoint's fingerprint (config + tensor index).</summary>
    public string Fingerprint => _checkpoint.Fingerprint;

    /// <summary>The kernel backend.</summary>
    public IKernelBackend Backend { get; }

    /// <summary>Coordinator-side weight bytes on the backend.</summary>
    public long ResidentBytes => _weights.ResidentBytes;

    /// <summary>Most prompt tokens per prefill step of <c>infer</c> and <c>bench</c> (bounds activation memory). Default: 512.</summary>
    public int PrefillChunkTokens
    {
        get => _prefillChunkTokens;
        set => _prefillChunkTokens = value > 0 ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "must be positive");
    }

    private int _prefillChunkTokens = 512;

    /// <summary>
    /// Opens <paramref name="modelDirectory"/> and loads the coordinator weights. With no <paramref name="dispatcher"/>,
    /// routed experts run in-process (<see cref="LocalExpertDispatcher"/>, owned by the engine, loading them with
    /// <paramref name="experts"/>: as stored by default, or quantized to FP8, W8A8).
    /// </summary>
    /// <exception cref="CheckpointException">The directory is not a usable Llama 4 checkpoint, or <paramref name="experts"/>
    /// does not apply to it.</exception>
    public static Llama4Engine Load(string modelDirectory, IKernelBackend backend, IExpertDispatcher? dispatcher = null, ExpertLoadOptions? experts = null)
    {
        ArgumentNullException.ThrowIfNull(backend);
        var checkpoint = CheckpointReader.Open(modelDirectory);
        try
        {
            var weights = Llama4Weights.Load(checkpoint, backend);
            Llama4VisionWeights? vision;
            try
            {
                vision = Llama4VisionWeights.Load(checkpoint, backend);
            }
            catch
            {
                weights.Dispose();
                throw;
            }
            LocalExpertDispatcher? local = dispatcher is null ? new LocalExpertDispatcher(checkpoint, backend, experts) : null;
            return new Llama4Engine(checkpoint, weights, backend, dispatcher ?? local!, local, vision is null ? null : new Llama4VisionModel(vision, backend));
        }
        catch
        {
            checkpoint.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Element type of the KV cache of <c>infer</c> and <c>bench</c> (<c>--kv-dtype</c>, through
    /// <c>EngineInference.ForOneRequest</c>); null = the backend's default (<see cref="KvCacheDTypes.DefaultFor"/>: bf16 on
    /// CUDA, fp32 on the CPU). Default: null.
    /// </summary>
    public KvCacheDType? KvDType { get; set; }

    /// <inheritdoc />
    public void Dispose()
    {
        Vision?.Dispose();
        _ownedDispatcher?.Dispose();
        _weights.Dispose();
        _checkpoint.Dispose();
    }
}
