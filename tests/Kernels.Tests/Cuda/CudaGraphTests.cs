using Distributed.Kernels.Cuda;
using Distributed.Kernels.Cuda.Interop;

namespace Distributed.Kernels.Tests.Cuda;

/// <summary>
/// Stream capture and CUDA graphs: the driver's capture rules as the emulator enforces them (a misused capture fails),
/// kernel arguments captured by value while pointers are read at replay, and the graph segments of a
/// <see cref="CudaDeviceStep"/> (warm-up, capture, replay; eager fallback when a capture fails) against eager execution,
/// bitwise. Needs a device or the emulator (see <see cref="CudaKernelBackendTests"/>); the misuse tests need the emulator
/// or a real driver alike (both refuse).
/// </summary>
[Collection(CudaTestEnvironment.Name)]
[Trait("Category", "Gpu")]
public sealed unsafe class CudaGraphTests : IDisposable
{
    private readonly Lazy<CudaKernelBackend> _gpu = new(() => new CudaKernelBackend(0, new CudaBackendOptions { CudaGraphs = true }));

    private CudaKernelBackend Gpu => _gpu.Value;

    public void Dispose()
    {
        if (_gpu.IsValueCreated)
        {
            _gpu.Value.Dispose();
        }
    }

    private static float[] Read(DeviceBuffer b, StreamHandle stream, int n)
    {
        var host = new float[n];
        using var pinned = PinnedBuffer.Allocate(0, n * 4L);
        CuDriver.Check(CuDriver.cuMemcpyDtoHAsync((void*)pinned.Pointer, b.Pointer, (nuint)(n * 4), stream.Value), "d2h");
        stream.Synchronize();
        new ReadOnlySpan<float>((void*)pinned.Pointer, n).CopyTo(host);
        return host;
    }

    private static void Write(DeviceBuffer b, StreamHandle stream, float[] values)
    {
        using var pinned = PinnedBuffer.Allocate(0, values.Length * 4L);
        values.CopyTo(new Span<float>((void*)pinned.Pointer, values.Length));
        CuDriver.Check(CuDriver.cuMemcpyHtoDAsync(b.Pointer, (void*)pinned.Pointer, (nuint)(values.Length * 4), stream.Value), "h2d");
        stream.Synchronize();
    }

    [GpuFact]
    public void Replay_KeepsScalarArgumentsFromTheCapture_AndReadsBuffersAsTheyAreAtTheLaunch()
    {
        nint ctx = Gpu.ContextHandle;
        using var stream = StreamHandle.Create(ctx);
        using var dst = DeviceBuffer.Allocate(ctx, 8 * 4);
        using var src = DeviceBuffer.Allocate(ctx, 8 * 4);
        Write(dst, stream, [.. Enumerable.Repeat(0f, 8)]);
        Write(src, stream, [1, 2, 3, 4, 5, 6, 7, 8]);
        long n = 4;
        using var graph = GraphExecHandle.Capture(ctx, stream, () => Gpu.Module.AddInPlace(stream.Value, dst.Pointer, src.Pointer, n));
        // Captured, not run.
        Assert.Equal(new float[8], Read(dst, stream, 8));
        n = 8;
        Write(src, stream, [10, 20, 30, 40, 50, 60, 70, 80]);
        graph.Launch(stream);
        graph.Launch(stream);
        // Two replays of dst[0..4) += src[0..4) with the new contents of src; n = 8 after the capture changes nothing.
        Assert.Equal(new float[] { 20, 40, 60, 80, 0, 0, 0, 0 }, Read(dst, stream, 8));
    }

    [GpuFact]
    public void Capture_RefusesSynchronizationAllocationAndPageableCopies_AndTheStreamWorksAfterwards()
    {
        nint ctx = Gpu.ContextHandle;
        using var stream = StreamHandle.Create(ctx);
        using var buffer = DeviceBuffer.Allocate(ctx, 64);
        var pageable = new float[16];

        var sync = Assert.Throws<CudaException>(() => GraphExecHandle.Capture(ctx, stream, stream.Synchronize));
        Assert.Equal(CuDriver.ErrorStreamCaptureUnsupported, sync.Status);

        var alloc = Assert.Throws<CudaException>(() => GraphExecHandle.Capture(ctx, stream, () => DeviceBuffer.Allocate(ctx, 64).Dispose()));
        Assert.Equal(CuDriver.ErrorStreamCaptureUnsupported, alloc.Status);

        var copy = Assert.Throws<CudaException>(() => GraphExecHandle.Capture(ctx, stream, () =>
        {
            fixed (float* p = pageable)
            {
                CuDriver.Check(CuDriver.cuMemcpyHtoDAsync(buffer.Pointer, p, 64, stream.Value), "cuMemcpyHtoDAsync_v2");
            }
        }));
        Assert.Equal(CuDriver.ErrorStreamCaptureUnsupported, copy.Status);

        // A capture invalidated by a refused call yields no graph: cuStreamEndCapture reports the invalidation.
        CuDriver.Check(CuDriver.cuStreamBeginCapture(stream.Value, CuDriver.CaptureModeThreadLocal), "begin");
        Assert.Equal(CuDriver.ErrorStreamCaptureUnsupported, CuDriver.cuStreamSynchronize(stream.Value));
        Assert.Equal(CuDriver.ErrorStreamCaptureInvalidated, CuDriver.cuMemsetD32Async(buffer.Pointer, 0, 16, stream.Value));
        Assert.Equal(CuDriver.ErrorStreamCaptureInvalidated, CuDriver.cuStreamEndCapture(stream.Value, out nint none));
        Assert.Equal(0, none);

        // The stream runs work again.
        Write(buffer, stream, [.. Enumerable.Range(0, 16).Select(i => (float)i)]);
        Assert.Equal(15f, Read(buffer, stream, 16)[15]);
    }

    [GpuFact]
    public void Capture_ThreadLocalMode_LeavesOtherThreadsFreeToAllocate()
    {
        nint ctx = Gpu.ContextHandle;
        using var stream = StreamHandle.Create(ctx);
        using var buffer = DeviceBuffer.Allocate(ctx, 64);
        using var graph = GraphExecHandle.Capture(ctx, stream, () =>
        {
            // Another thread allocating during this capture (another backend, a worker) is legal in thread-local mode.
            Exception? failure = null;
            var other = new Thread(() =>
            {
                try
                {
                    CuDriver.Check(CuDriver.cuCtxSetCurrent(ctx), "cuCtxSetCurrent");
                    DeviceBuffer.Allocate(ctx, 64).Dispose();
                }
                catch (CudaException e)
                {
                    failure = e;
                }
            });
            other.Start();
            other.Join();
            Assert.Null(failure);
            CuDriver.Check(CuDriver.cuMemsetD32Async(buffer.Pointer, 0x3F800000, 16, stream.Value), "memset");
        });
        graph.Launch(stream);
        Assert.All(Read(buffer, stream, 16), v => Assert.Equal(1f, v));
    }

    /// <summary>
    /// A device step's segments: the first step of a graph set runs them eagerly, the second captures and launches, the
    /// third replays; results equal the eager ops bitwise at every step, with new data each step, and a capture that
    /// fails (a segment that outgrows the arena) runs eagerly and is counted.
    /// </summary>
    [GpuFact]
    public void Segments_WarmUpCaptureReplay_EqualEagerBitwise_AndAFailedCaptureRunsEagerly()
    {
        const int rows = 3, cols = 64;
        float[] weight = TestData.Floats(cols, 1, 1f);
        using var store = Gpu.CreateKvBlockStore(4, 4, cols);
        var owner = new object();
        for (int s = 0; s < 4; s++)
        {
            float[] a = TestData.Floats(rows * cols, 10 + s, 2f), b = TestData.Floats(rows * cols, 20 + s, 1f);
            float[] expected;
            using (var eager = Gpu.BeginDeviceStep())
            {
                DeviceTensor ea = eager.Upload(a), eb = eager.Upload(b), ey = eager.Allocate(rows * cols);
                eager.Add(ea, eb);
                eager.RmsNorm(ea, rows, cols, weight, 1e-5f, ey);
                expected = new float[rows * cols];
                eager.Download(ey, expected);
                eager.Complete();
            }
            using var step = Gpu.TryBeginGraphStep(rows) ?? throw new InvalidOperationException("no graph step");
            Assert.Equal(4, step.GraphBucket);
            int bucket = step.GraphBucket;
            DeviceTensor da = step.Allocate(bucket * cols), db = step.Allocate(bucket * cols), dy = step.Allocate(bucket * cols);
            step.UploadInto<float>(a, da);
            step.UploadInto<float>(b, db);
            step.BeginGraphs(owner, store, 1, 1);
            step.Segment(() =>
            {
                step.Add(da, db);
                step.RmsNorm(da, bucket, cols, weight, 1e-5f, dy);
            });
            if (s == 3)
            {
                // Outgrows the arena during its capture: refused, run eagerly instead.
                step.Segment(() => step.Allocate(64L << 20));
            }
            var actual = new float[bucket * cols];
            step.Download(dy, actual);
            step.Complete();
            TestData.AssertBitwiseEqual(expected, actual.AsSpan(0, rows * cols), $"step {s}");
            Assert.Equal(s == 0 ? 0 : 1, step.GraphLaunches);
        }
        var counters = Gpu.GraphCounters;
        Assert.Equal(3, counters.Launches);
        Assert.Equal(1, counters.Captures);
        Assert.Equal(1, counters.CaptureFailures);
        Assert.Contains("during a CUDA graph capture", counters.LastFailure, StringComparison.Ordinal);
    }

    /// <summary>
    /// A step that outgrows the graph context's arena outside its segments makes the next step's arena merge its chunks
    /// (every address moves): the graph set is dropped and captured again, and results stay bitwise equal.
    /// </summary>
    [GpuFact]
    public void ArenaReallocation_DropsTheGraphs_AndTheyAreCapturedAgain()
    {
        const int rows = 2, cols = 32;
        float[] weight = TestData.Floats(cols, 2, 1f);
        using var store = Gpu.CreateKvBlockStore(4, 4, cols);
        var owner = new object();
        var launches = new List<int>();
        for (int s = 0; s < 4; s++)
        {
            float[] a = TestData.Floats(rows * cols, 30 + s, 2f);
            float[] expected = new float[rows * cols];
            using (var eager = Gpu.BeginDeviceStep())
            {
                DeviceTensor ea = eager.Upload(a), ey = eager.Allocate(rows * cols);
                eager.RmsNorm(ea, rows, cols, weight, 1e-5f, ey);
                eager.Download(ey, expected);
                eager.Complete();
            }
            using var step = Gpu.TryBeginGraphStep(rows) ?? throw new InvalidOperationException("no graph step");
            int bucket = step.GraphBucket;
            DeviceTensor da = step.Allocate(bucket * cols), dy = step.Allocate(bucket * cols);
            step.UploadInto<float>(a, da);
            step.BeginGraphs(owner, store, 1, 1);
            step.Segment(() => step.RmsNorm(da, bucket, cols, weight, 1e-5f, dy));
            if (s == 1)
            {
                // Eager work after the segments that needs a second chunk: the next step's reset merges the chunks.
                step.Zero(step.Allocate(16L << 20));
            }
            var actual = new float[bucket * cols];
            step.Download(dy, actual);
            step.Complete();
            TestData.AssertBitwiseEqual(expected, actual.AsSpan(0, rows * cols), $"step {s}");
            launches.Add(step.GraphLaunches);
        }
        var counters = Gpu.GraphCounters;
        Assert.Equal([0, 1, 1, 1], launches);
        Assert.Equal(1, counters.Invalidations);
        Assert.Equal(2, counters.Captures);
        Assert.Equal(0, counters.CaptureFailures);
    }

    [GpuFact]
    public void KvWrite_NegativeSlotWritesNothing()
    {
        const int width = 8;
        using var store = Gpu.CreateKvBlockStore(2, 4, width);
        float[] zeros = new float[2 * width];
        store.Write([0, 1], zeros, zeros);
        using var step = Gpu.BeginDeviceStep();
        DeviceTensor k = step.Upload(TestData.Floats(2 * width, 3, 1f)), v = step.Upload(TestData.Floats(2 * width, 4, 1f));
        DeviceTensor slots = step.Allocate(2);
        step.UploadInto<int>([1, -1], slots);
        step.KvWrite(store, slots, 2, k, v);
        step.Complete();
        step.Dispose();
        var q = TestData.Floats(width, 5, 1f);
        var output = new float[width];
        // Slot 0 still holds zeros: attention over key 0 alone returns value row 0, which is zero.
        store.Attention(q, 1, [0], [0], 0, 1, 0, new AttentionParams(1, 1, width, 1f, 0), output);
        Assert.All(output, o => Assert.Equal(0f, o));
    }

    [GpuFact]
    public void TryBeginGraphStep_NullWhenOffTooLargeOrBusy()
    {
        using var off = new CudaKernelBackend();
        Assert.Null(off.TryBeginGraphStep(1));
        Assert.Null(Gpu.TryBeginGraphStep(CudaKernelBackend.GraphBuckets[^1] + 1));
        using var first = Gpu.TryBeginGraphStep(1);
        Assert.NotNull(first);
        Assert.Null(Gpu.TryBeginGraphStep(1));
        first!.Complete();
    }
}
