namespace Distributed.Kernels;

/// <summary>
/// A bf16 weight matrix prepared for (and owned by) one <see cref="IKernelBackend"/>: packed into panels on the
/// CPU, uploaded once to device memory on CUDA. Logically <c>W</c> is <c>[InFeatures, OutFeatures]</c> and the
/// backend computes <c>y = x · W</c> whatever the source layout was.
/// </summary>
public interface IWeightMatrix : IDisposable
{
    /// <summary>Reduction length K (columns of x).</summary>
    int InFeatures { get; }

    /// <summary>Output width N (columns of y).</summary>
    int OutFeatures { get; }

    /// <summary>Bytes this matrix occupies in the backend's memory (host for CPU, device for CUDA).</summary>
    long ResidentBytes { get; }
}
