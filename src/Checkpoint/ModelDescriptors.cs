using Distributed.Protocol.Contracts;

namespace Distributed.Checkpoint;

/// <summary>Builds the <see cref="ModelDescriptor"/> that coordinator, workers and the placement grain compare.</summary>
public static class ModelDescriptors
{
    /// <summary>The descriptor of an opened checkpoint.</summary>
    public static ModelDescriptor FromCheckpoint(CheckpointReader checkpoint)
    {
        ArgumentNullException.ThrowIfNull(checkpoint);
        var c = checkpoint.Config;
        return new ModelDescriptor(checkpoint.Fingerprint, c.HiddenSize, c.IntermediateSize, c.NumLayers, c.NumExperts, [.. c.MoeLayerIndices]);
    }
}
