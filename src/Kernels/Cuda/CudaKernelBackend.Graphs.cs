namespace Distributed.Kernels.Cuda;

/// <summary>CUDA graphs for the device-resident step (<see cref="CudaBackendOptions.CudaGraphs"/>).</summary>
public sealed partial class CudaKernelBackend
{
    private readonly Lock _graphsLock = new();
    private CudaGraphCache? _graphs;

    /// <summary>The row buckets graph steps are captured for (a step's rows are padded up to the next one).</summary>
    public static IReadOnlyList<int> GraphBuckets => CudaGraphCache.Buckets;

    /// <summary>Counters of the graphs this backend captured and launched (all zero while graphs were never used).</summary>
    public CudaGraphCounters GraphCounters
    {
        get
        {
            lock (_graphsLock)
            {
                return _graphs?.Counters ?? default;
            }
        }
    }

    /// <summary>
    /// Starts a device step that runs its segments as CUDA graphs captured for <paramref name="rows"/> padded up to a
    /// bucket of <see cref="GraphBuckets"/>, on the backend's dedicated graph context; null when
    /// <see cref="CudaBackendOptions.CudaGraphs"/> is off, <paramref name="rows"/> exceeds the largest bucket, or another
    /// graph step is running (the caller then runs an ordinary <see cref="BeginDeviceStep"/>).
    /// </summary>
    public CudaDeviceStep? TryBeginGraphStep(int rows)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(rows);
        if (!Options.CudaGraphs || CudaGraphCache.BucketOf(rows) == 0)
        {
            return null;
        }
        CudaGraphCache cache;
        lock (_graphsLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            cache = _graphs ??= new CudaGraphCache(_context.DangerousGetHandle());
        }
        if (!cache.TryEnter())
        {
            return null;
        }
        try
        {
            _context.SetCurrent();
            // A merge of the arena's chunks moves every address: the graph sets notice through the arena's generation.
            cache.Context.Reset();
            return new CudaDeviceStep(this, cache.Context, cache, CudaGraphCache.BucketOf(rows));
        }
        catch
        {
            cache.Exit(ok: false);
            throw;
        }
    }

    /// <summary>
    /// Drops every captured graph before the next graph step (a step running now finishes with its graphs); they are
    /// captured again. Call when weights change in place (new weights at new addresses get new graph sets anyway).
    /// </summary>
    public void DropGraphs()
    {
        lock (_graphsLock)
        {
            _graphs?.RequestDrop();
        }
    }

    private void DisposeGraphs()
    {
        lock (_graphsLock)
        {
            _graphs?.Dispose();
            _graphs = null;
        }
    }
}
