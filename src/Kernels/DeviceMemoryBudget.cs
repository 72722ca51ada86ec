namespace Distributed.Kernels;

/// <summary>
/// How much GPU memory an expert worker offers the placement for expert weights (its capacity), from the device's free
/// memory: what is left after the non-expert weights held there, the workspace the CUDA backend's expert calls need,
/// and a headroom. One formula for the worker (measured free memory) and the sizing planner (the device's total).
/// </summary>
/// <remarks>
/// capacity = max(0, free − nonExpertWeights − workspace − headroom), where
/// workspace = concurrentCalls × (2 × <see cref="ExpertScratchBytes"/>(maxRows) + <see cref="CublasWorkspaceBytes"/>).
/// </remarks>
public static class DeviceMemoryBudget
{
    /// <summary>
    /// cuBLAS workspace per handle (one handle per concurrent call): 32 MiB, cuBLAS's default on Hopper (sm_90; 4 MiB on
    /// older GPUs), assumed for every device.
    /// </summary>
    public const long CublasWorkspaceBytes = 32L << 20;

    /// <summary>
    /// Default headroom, bytes: 2 GiB for what grows after the measurement and is not weights or call scratch (the
    /// CUDA context's own allocations, the loaded kernel module, the allocator's 2 MiB rounding and fragmentation). An
    /// assumption, not a measurement of this project; <c>ExpertWorker:DeviceHeadroomBytes</c> changes it.
    /// </summary>
    public const long DefaultHeadroomBytes = 2L << 30;

    /// <summary>
    /// Device scratch of one expert FFN call over <paramref name="rows"/> rows in this build's CUDA backend, bytes, as a
    /// worker runs it (<c>CudaWireBatch</c>: the wire rows, at most fp32 (4·H per row), the decoded fp32 input (4·H), the
    /// fp32 output (4·H) and the reply region, at most bf16 reply plus verdict (2·H + 8, the fp32 reply is the output
    /// itself): 14·H + 8 per row, of which the FFN's own input and output are 8·H).
    /// bf16 experts (<c>SwiGluFfnGrouped</c>, split precision, the worst case): those rows, a row map (4), and over the
    /// padded layout of L = max(2·rows, rows + 512) rows (the padded-batched path pads to at most that) the split bf16
    /// input (2·2·H), the gate/up output (2·2I·4), the bf16 activations (2·I·2) and the down output (2·H·4):
    /// rows·(14·H + 12) + L·(12·H + 20·I).
    /// FP8 experts (<c>fp8_gemm</c>, one call per expert, W8A8 the worst case): those rows, the quantized input fp32
    /// (4·H), gate/up output (8·I), activations and their quantized copy (2·4·I), two row-scale vectors (8):
    /// rows·(18·H + 16·I + 16).
    /// </summary>
    /// <param name="rows">Rows of one call (a worker: <c>ExpertWorker:MaxRowsPerDispatch</c>).</param>
    /// <param name="hidden">H, the model's hidden size.</param>
    /// <param name="intermediate">I, the routed experts' intermediate size.</param>
    /// <param name="fp8Experts">The experts are FP8 (stored or quantized at load).</param>
    /// <exception cref="ArgumentOutOfRangeException">A negative size.</exception>
    public static long ExpertScratchBytes(long rows, long hidden, long intermediate, bool fp8Experts)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(hidden);
        ArgumentOutOfRangeException.ThrowIfNegative(intermediate);
        if (rows == 0)
        {
            return 0;
        }
        if (fp8Experts)
        {
            return checked(rows * ((18 * hidden) + (16 * intermediate) + 16));
        }
        long padded = Math.Max(2 * rows, rows + 512);
        return checked((rows * ((14 * hidden) + 12)) + (padded * ((12 * hidden) + (20 * intermediate))));
    }

    /// <summary>
    /// Device workspace of an expert worker, bytes: per concurrent call, twice the scratch of a full dispatch (a call
    /// that outgrows its scratch chunk adds one at least as large as what it holds, so the arena can briefly hold 2×)
    /// plus one cuBLAS workspace.
    /// </summary>
    /// <param name="maxRowsPerDispatch">Largest rows of one call (<c>ExpertWorker:MaxRowsPerDispatch</c>).</param>
    /// <param name="concurrentCalls">Expert calls in flight at once (<c>ExpertWorker:MaxConcurrentRequestsPerStream</c>, one coordinator).</param>
    /// <param name="hidden">H.</param>
    /// <param name="intermediate">I of the routed experts.</param>
    /// <param name="fp8Experts">The experts are FP8.</param>
    /// <exception cref="ArgumentOutOfRangeException">A negative size or fewer than one concurrent call.</exception>
    public static long WorkerWorkspaceBytes(int maxRowsPerDispatch, int concurrentCalls, long hidden, long intermediate, bool fp8Experts)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(concurrentCalls, 1);
        return checked(concurrentCalls * ((2 * ExpertScratchBytes(maxRowsPerDispatch, hidden, intermediate, fp8Experts)) + CublasWorkspaceBytes));
    }

    /// <summary>
    /// The capacity for expert weights: <c>max(0, free − nonExpertWeights − workspace − headroom)</c>, bytes.
    /// </summary>
    /// <param name="freeBytes">Free device memory, measured after the backend was created (or the device's total, when planning).</param>
    /// <param name="nonExpertWeightBytes">Weights that will be resident on the device besides the experts and are not
    /// yet allocated at the measurement (0 on a worker that has the device to itself).</param>
    /// <param name="workspaceBytes">Call scratch (<see cref="WorkerWorkspaceBytes"/>).</param>
    /// <param name="headroomBytes">Memory kept free (<see cref="DefaultHeadroomBytes"/>).</param>
    /// <exception cref="ArgumentOutOfRangeException">A negative argument.</exception>
    public static long Capacity(long freeBytes, long nonExpertWeightBytes, long workspaceBytes, long headroomBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(freeBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(nonExpertWeightBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(workspaceBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(headroomBytes);
        long left = freeBytes - nonExpertWeightBytes - workspaceBytes - headroomBytes;
        return Math.Max(0, left);
    }
}
