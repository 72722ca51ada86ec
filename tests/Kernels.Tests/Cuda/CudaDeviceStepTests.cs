using Distributed.Kernels.Cuda;

namespace Distributed.Kernels.Tests.Cuda;

/// <summary>
/// <see cref="CudaDeviceStep"/> (the device-resident path) op by op against the host-span ops of the same backend: the
/// same kernels, so the results are bitwise equal; plus its own ops (column slices, row gathers, row scaling) against
/// plain host arithmetic, and its argument checks. Needs a device or the emulator (see <see cref="CudaKernelBackendTests"/>).
/// </summary>
[Collection(CudaTestEnvironment.Name)]
[Trait("Category", "Gpu")]
public sealed class CudaDeviceStepTests : IDisposable
{
    private readonly Lazy<CudaKernelBackend> _gpu = new(() => new CudaKernelBackend());

    private CudaKernelBackend Gpu => _gpu.Value;

    public void Dispose()
    {
        if (_gpu.IsValueCreated)
        {
            _gpu.Value.Dispose();
        }
    }

    private static float[] Get(CudaDeviceStep step, DeviceTensor t)
    {
        var host = new float[t.Length];
        step.Download(t, host);
        return host;
    }

    [GpuFact]
    public void MatMulAndFfn_Bf16AndFp8_EqualTheHostSpanOpsBitwise()
    {
        const int k = 96, n = 80, rows = 5, I = 48;
        float[] x = TestData.Floats(rows * k, 2, 2f);
        using var w = Gpu.CreateWeight(TestData.Bf16(k * n, 1, 0.2f), k, n, WeightLayout.OutIn);
        using var w8 = Gpu.CreateFp8Weight(Cpu.CpuFp8MatMulTests.Codes(k * n, 3, false), Cpu.CpuFp8MatMulTests.Scales(n, 4), k, n, WeightLayout.OutIn,
            Fp8ActivationMode.PerTokenFp8);
        using var gu = Gpu.CreateWeight(TestData.Bf16(k * 2 * I, 5, 0.1f), k, 2 * I, WeightLayout.InOut);
        using var dn = Gpu.CreateWeight(TestData.Bf16(I * k, 6, 0.1f), I, k, WeightLayout.InOut);
        using var gu8 = Gpu.CreateFp8Weight(Cpu.CpuFp8MatMulTests.Codes(2 * I * k, 7, false), Cpu.CpuFp8MatMulTests.Scales(2 * I, 8), k, 2 * I,
            WeightLayout.OutIn, Fp8ActivationMode.WeightOnly);
        using var dn8 = Gpu.CreateFp8Weight(Cpu.CpuFp8MatMulTests.Codes(I * k, 9, false), Cpu.CpuFp8MatMulTests.Scales(k, 10), I, k, WeightLayout.OutIn,
            Fp8ActivationMode.WeightOnly);

        using var step = Gpu.BeginDeviceStep();
        DeviceTensor dx = step.Upload(x);
        foreach (IWeightMatrix m in new[] { w, w8 })
        {
            var expected = new float[rows * n];
            Gpu.MatMul(x, rows, m, expected);
            DeviceTensor dy = step.Allocate(rows * n);
            step.MatMul(dx, rows, m, dy);
            TestData.AssertBitwiseEqual(expected, Get(step, dy), $"MatMul {m.GetType().Name}");
        }
        foreach (var (g, d) in new[] { (gu, dn), ((IWeightMatrix)gu8, (IWeightMatrix)dn8) })
        {
            var expected = new float[rows * k];
            Gpu.SwiGluFfn(x, rows, g, d, expected);
            DeviceTensor dy = step.Allocate(rows * k);
            step.SwiGluFfn(dx, rows, g, d, dy);
            TestData.AssertBitwiseEqual(expected, Get(step, dy), $"SwiGluFfn {g.GetType().Name}");
        }
        Assert.Throws<ArgumentException>(() => step.MatMul(dx, rows + 1, w, step.Allocate((rows + 1) * n)));
        Assert.Throws<ArgumentException>(() => step.SwiGluFfn(dx, rows, gu, dn8, step.Allocate(rows * k)));
        using var cpu = new Kernels.Cpu.CpuKernelBackend(1);
        using var foreign = cpu.CreateWeight(TestData.Bf16(k * n, 1), k, n, WeightLayout.OutIn);
        Assert.Throws<ArgumentException>(() => step.MatMul(dx, rows, foreign, step.Allocate(rows * n)));
        step.Complete();
    }

    [GpuFact]
    public void ElementwiseAndRowOps_EqualTheHostSpanOpsBitwise()
    {
        const int rows = 6, heads = 4, hd = 16, cols = heads * hd;
        float[] x = TestData.Floats(rows * cols, 11, 3f);
        float[] other = TestData.Floats(rows * cols, 12, 1f);
        float[] weight = TestData.Floats(cols, 13, 1f);
        int[] positions = [0, 5, 9, 100, 3, 7];
        var table = RopeTable.Create(hd, 500000, null);
        using var step = Gpu.BeginDeviceStep();
        DeviceTensor dx = step.Upload(x);
        DevicePositions pos = step.UploadPositions(positions);

        var expected = new float[x.Length];
        Gpu.RmsNorm(x, rows, cols, weight, 1e-5f, expected);
        DeviceTensor y = step.Allocate(x.Length);
        step.RmsNorm(dx, rows, cols, weight, 1e-5f, y);
        TestData.AssertBitwiseEqual(expected, Get(step, y), "RmsNorm");
        Gpu.RmsNorm(x, rows * heads, hd, [], 1e-5f, expected);
        step.RmsNorm(dx, rows * heads, hd, [], 1e-5f, y);
        TestData.AssertBitwiseEqual(expected, Get(step, y), "RmsNorm without weight");

        x.CopyTo(expected, 0);
        Gpu.Rope(expected, rows, heads, positions, table);
        step.Copy(dx, y);
        step.Rope(y, rows, heads, pos, table);
        TestData.AssertBitwiseEqual(expected, Get(step, y), "Rope");

        x.CopyTo(expected, 0);
        Gpu.Add(expected, other);
        step.Copy(dx, y);
        step.Add(y, step.Upload(other));
        TestData.AssertBitwiseEqual(expected, Get(step, y), "Add");

        var ids = new int[rows * 3];
        var values = new float[rows * 3];
        Gpu.TopK(x, rows, cols, 3, ids, values);
        var dIds = new int[rows * 3];
        var dValues = new float[rows * 3];
        step.TopK(dx, rows, cols, 3, dIds, dValues);
        Assert.Equal(ids, dIds);
        TestData.AssertBitwiseEqual(values, dValues, "TopK values");
        // With rows brought back alongside: the same ids and values and the rows, in one wait.
        int waits = step.Synchronizations;
        var rowsBack = new float[other.Length];
        DeviceTensor dOther = step.Upload(other);
        step.TopK(dx, rows, cols, 3, dIds, dValues, dOther, rowsBack);
        Assert.Equal(waits + 1, step.Synchronizations);
        Assert.Equal(ids, dIds);
        TestData.AssertBitwiseEqual(other, rowsBack, "TopK alongside rows");
        Assert.Throws<ArgumentException>(() => step.TopK(dx, rows, cols, 3, dIds, dValues, dOther, new float[3]));

        // Own ops against host arithmetic: columns [8, 40) of each row, rows 4, 5, 1 (a run and a jump), per-row factors.
        DeviceTensor slice = step.Allocate(rows * 32);
        step.CopyColumns(dx, rows, cols, 8, 32, slice);
        float[] got = Get(step, slice);
        for (int r = 0; r < rows; r++)
        {
            TestData.AssertBitwiseEqual(x.AsSpan(r * cols + 8, 32), got.AsSpan(r * 32, 32), $"CopyColumns row {r}");
        }
        DeviceTensor gathered = step.Allocate(3 * cols);
        step.GatherRows(dx, cols, [4, 5, 1], gathered);
        TestData.AssertBitwiseEqual([.. x.AsSpan(4 * cols, 2 * cols), .. x.AsSpan(1 * cols, cols)], Get(step, gathered), "GatherRows");
        float[] factors = [1.5f, 0.25f, 3f, 1f, 0.1f, 7f];
        step.Copy(dx, y);
        step.ScaleRows(y, rows, cols, step.Upload(factors));
        for (int i = 0; i < x.Length; i++)
        {
            expected[i] = x[i] * factors[i / cols];
        }
        TestData.AssertBitwiseEqual(expected, Get(step, y), "ScaleRows");

        Assert.Throws<ArgumentException>(() => step.CopyColumns(dx, rows, cols, 40, 32, slice));
        Assert.Throws<ArgumentException>(() => step.GatherRows(dx, cols, [rows], step.Allocate(cols)));
        Assert.Throws<ArgumentException>(() => step.Rope(y, rows, heads, step.UploadPositions([1, 2]), table));
        Assert.Throws<ArgumentException>(() => step.UploadPositions([0, -1]));
        Assert.Throws<ArgumentOutOfRangeException>(() => dx.Slice(x.Length - 1, 2));
        step.Complete();
    }

    [GpuFact]
    public void KvWriteAndAttention_EqualTheStoreHostCalls_InEveryElementType()
    {
        var p = new AttentionParams(4, 2, 16, 0.25f, 0);
        int width = p.KvHeads * p.HeadDim, qWidth = p.Heads * p.HeadDim;
        foreach (KvCacheDType dtype in Enum.GetValues<KvCacheDType>())
        {
            using var hostStore = KvBlockStores.Create(Gpu, 8, 4, width, dtype: dtype);
            using var deviceStore = KvBlockStores.Create(Gpu, 8, 4, width, dtype: dtype);
            int[] slots = [0, 1, 2, 3, 8, 9, 10];
            float[] k = TestData.Floats(slots.Length * width, 21, 1f);
            float[] v = TestData.Floats(slots.Length * width, 22, 1f);
            float[] q = TestData.Floats(3 * qWidth, 23, 1f);
            int[] positions = [6, 2, 3];
            KvSequenceView[] sequences = [new(1, new[] { 0, 2 }, 0, 7, 0), new(2, new[] { 0 }, 0, 4, 0)];
            hostStore.Write(slots, k, v);
            var expected = new float[q.Length];
            hostStore.AttentionBatch(q, positions, sequences, p, expected);

            using var step = Gpu.BeginDeviceStep();
            step.KvWrite(deviceStore, slots, step.Upload(k), step.Upload(v));
            DeviceTensor output = step.Allocate(q.Length);
            step.Attention(deviceStore, step.Upload(q), step.UploadPositions(positions), sequences, p, output);
            TestData.AssertBitwiseEqual(expected, Get(step, output), $"{dtype} paged attention");

            Assert.Throws<ArgumentException>(() => step.KvWrite(deviceStore, [32], step.Upload(k[..width]), step.Upload(v[..width])));
            Assert.Throws<ArgumentException>(() => step.Attention(deviceStore, step.Upload(q), step.UploadPositions(positions),
                [new(3, new[] { 9 }, 0, 4, 0)], p, output));
            using var cpu = new Kernels.Cpu.CpuKernelBackend(1);
            using var hostMemory = KvBlockStores.Create(cpu, 8, 4, width);
            Assert.False(Gpu.OwnsStore(hostMemory));
            Assert.True(Gpu.OwnsStore(deviceStore));
            Assert.Throws<ArgumentException>(() => step.KvWrite(hostMemory, slots, step.Upload(k), step.Upload(v)));
            step.Complete();
        }
    }

    [GpuFact]
    public void AFailedStep_DropsItsContext_AndTheNextStepWorks()
    {
        using (var step = Gpu.BeginDeviceStep())
        {
            Assert.Throws<ArgumentException>(() => step.Download(step.Allocate(4), new float[3]));
        }
        using var next = Gpu.BeginDeviceStep();
        float[] x = [1, 2, 3, 4];
        Assert.Equal(x, Get(next, next.Upload(x)));
        next.Complete();
        Assert.Throws<ObjectDisposedException>(() => DisposedUpload(Gpu));
    }

    private static void DisposedUpload(CudaKernelBackend gpu)
    {
        var step = gpu.BeginDeviceStep();
        step.Dispose();
        step.Upload([1f]);
    }
}
