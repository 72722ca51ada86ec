using Distributed.Kernels;
using Distributed.Checkpoint;

namespace Distributed.ExpertWorker.Weights;

/// <summary>Loads one routed expert's weights onto the worker's backend.</summary>
public interface IExpertLoader
{
    /// <summary>The backend experts run on.</summary>
    IKernelBackend Backend { get; }

    /// <summary>Loads expert <paramref name="expert"/> of MoE layer <paramref name="layer"/> (touching only its slices).</summary>
    ExpertWeights Load(int layer, int expert);
}

/// <summary>
/// Loads experts from an opened checkpoint by memory map (<see cref="ExpertWeights.Load"/>), as stored or as
/// <paramref name="options"/> say (FP8 quantization, W8A8).
/// </summary>
public sealed class CheckpointExpertLoader(Checkpoint.CheckpointReader checkpoint, IKernelBackend backend, ExpertLoadOptions? options = null) : IExpertLoader
{
    /// <inheritdoc />
    public IKernelBackend Backend => backend;

    /// <inheritdoc />
    public ExpertWeights Load(int layer, int expert) => ExpertWeights.Load(checkpoint, backend, layer, expert, options);
}
