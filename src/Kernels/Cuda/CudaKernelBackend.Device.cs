using Distributed.Kernels.Cuda.Interop;

namespace Distributed.Kernels.Cuda;

/// <summary>The device-resident path (<see cref="CudaDeviceStep"/>): device-pointer cores shared with the host-span ops.</summary>
public sealed unsafe partial class CudaKernelBackend
{
    private readonly Dictionary<float[], DeviceBuffer> _constants = new(ReferenceEqualityComparer.Instance);
    private readonly Lock _constantsLock = new();

    /// <summary>
    /// Starts a forward step on the device: a pooled stream, cuBLAS handle and scratch arena held until the step is
    /// disposed. Scratch grows to the step's high-water mark and is reused by the next step.
    /// </summary>
    public CudaDeviceStep BeginDeviceStep() => new(this, Rent());

    /// <summary>True when <paramref name="store"/> is a KV store of this backend (device memory), which a <see cref="CudaDeviceStep"/> reads and writes in place.</summary>
    public bool OwnsStore(IKvBlockStore? store) => store is CudaKvBlockStore s && ReferenceEquals(s.Owner, this);

    internal CudaKvBlockStore OwnStore(IKvBlockStore store)
    {
        ArgumentNullException.ThrowIfNull(store);
        return OwnsStore(store) ? (CudaKvBlockStore)store : throw new ArgumentException($"the KV store ({store.Location}) is not a device store of {Name}", nameof(store));
    }

    /// <summary>
    /// A device copy of a constant fp32 array (norm weights, RoPE frequencies), uploaded on first use and kept until the
    /// backend is disposed. Keyed by the array instance: the caller must not change the array afterwards (model weights never do).
    /// </summary>
    internal ulong Constant(float[] values)
    {
        lock (_constantsLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_constants.TryGetValue(values, out DeviceBuffer? buffer))
            {
                _context.SetCurrent();
                buffer = DeviceBuffer.Allocate(_context.DangerousGetHandle(), Math.Max(1, (long)values.Length * sizeof(float)));
                try
                {
                    UploadChunked(buffer, (ReadOnlySpan<float>)values);
                }
                catch
                {
                    buffer.Dispose();
                    throw;
                }
                _constants.Add(values, buffer);
            }
            return buffer.Pointer;
        }
    }

    private void DisposeConstants()
    {
        lock (_constantsLock)
        {
            foreach (DeviceBuffer b in _constants.Values)
            {
                b.Dispose();
            }
            _constants.Clear();
        }
    }

    /// <summary>Queues <c>y = x · W</c> (bf16 or FP8 weight of this backend) on device rows.</summary>
    internal void MatMulOnDevice(CudaCallContext ctx, IWeightMatrix w, ulong dx, int rows, ulong dy)
    {
        if (w is CudaFp8WeightMatrix)
        {
            Fp8Stage(ctx, OwnFp8(w, nameof(w)), dx, rows, dy);
        }
        else
        {
            MatMulOnDevice(ctx, Own(w, nameof(w)), dx, rows, dy);
        }
    }

    /// <summary>H of a SwiGLU pair of this backend (both bf16 or both FP8, shapes [H, 2I] and [I, H]).</summary>
    internal int FfnHiddenOf(IWeightMatrix gateUp, IWeightMatrix down) => FfnHidden(gateUp, down, 0);

    /// <summary>
    /// Queues the SwiGLU FFN of <see cref="SwiGluFfn"/> on device rows: the same single-group path (bf16: split, GEMM,
    /// SwiGLU, GEMM, combine; FP8: its two stages) the host call takes.
    /// </summary>
    internal void SwiGluFfnOnDevice(CudaCallContext ctx, ulong dx, int rows, IWeightMatrix gateUp, IWeightMatrix down, ulong dy)
    {
        if (gateUp is CudaFp8WeightMatrix gu)
        {
            RunFfnFp8OnDevice(ctx, dx, rows, gu, OwnFp8(down, nameof(down)), dy);
            return;
        }
        CudaWeightMatrix bgu = Own(gateUp, nameof(gateUp));
        CudaWeightMatrix bdn = Own(down, nameof(down));
        var groups = new List<FfnGroup>(1) { new(bgu, bdn, 0, rows) };
        RunFfnOnDevice(ctx, ChooseMode(groups, rows), dx, groups, rows, bgu.InFeatures, bgu.OutFeatures / 2, dy);
    }
}
