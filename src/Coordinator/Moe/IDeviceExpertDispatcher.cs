using Distributed.Kernels.Cuda;

namespace Distributed.Coordinator.Moe;

/// <summary>
/// A dispatcher whose routed experts can run on the device rows of a <see cref="CudaDeviceStep"/> (the in-process
/// dispatcher on the CUDA backend): the model's device path then keeps the MoE block's rows on the device instead of
/// taking them to the host for <see cref="IExpertDispatcher.DispatchAsync"/> and bringing the combined rows back.
/// </summary>
public interface IDeviceExpertDispatcher
{
    /// <summary>True when <see cref="RunOnDevice"/> can run on <paramref name="step"/> (same backend, a rounding it supports).</summary>
    bool CanRunOnDevice(CudaDeviceStep step);

    /// <summary>
    /// Writes <c>output[t] = Σ_s expert_{ids[t,s]}(score[t,s] · hidden[t])</c> on the device: bitwise what
    /// <see cref="IExpertDispatcher.DispatchAsync"/> then <see cref="IExpertDispatcher.CombineAsync"/> give for the same
    /// rows. Queued on the step's stream; nothing is downloaded.
    /// </summary>
    /// <param name="step">A step <see cref="CanRunOnDevice"/> accepted.</param>
    /// <param name="layer">MoE layer index.</param>
    /// <param name="hidden"><c>[tokens, hidden size]</c> device rows: the MoE block input.</param>
    /// <param name="routing">The router's top-k ids and scores.</param>
    /// <param name="output"><c>[tokens, hidden size]</c>, overwritten.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="layer"/> is not a MoE layer.</exception>
    /// <exception cref="ArgumentException">Routing or sizes are inconsistent.</exception>
    void RunOnDevice(CudaDeviceStep step, int layer, DeviceTensor hidden, RoutingResult routing, DeviceTensor output);
}
