namespace Distributed.Kernels;

/// <summary>
/// The compute backend of the runtime: every numeric op of the Llama 4 model (text decoder and vision encoder) goes through one of these.
/// Activations are fp32 host memory (row-major, layouts named per parameter); weights are bf16 prepared once through
/// <see cref="CreateWeight"/>. Implementations: <c>Cpu.CpuKernelBackend</c> (SIMD, multithreaded, always available)
/// and <c>Cuda.CudaKernelBackend</c> (cuBLAS + NVRTC).
/// </summary>
/// <remarks>
/// <para><b>Batch invariance.</b> A row's result must not depend on which other rows share the call or on the row
/// count: every reduction has a fixed order per row (per output element of a matmul: k = 0..K-1 into one fp32
/// accumulator; never split-K, never a row-count-dependent blocking of k).</para>
/// <para>Every method validates shapes once at entry and throws <see cref="ArgumentException"/> on a mismatch.
/// Methods are thread-safe for concurrent calls on distinct output buffers unless stated otherwise.</para>
/// </remarks>
public interface IKernelBackend : IDisposable
{
    /// <summary>Short name for logs, e.g. <c>cpu-avx512x2</c> or <c>cuda:0 (NVIDIA H100)</c>.</summary>
    string Name { get; }

    /// <summary>What this backend supports.</summary>
    KernelCapabilities Capabilities { get; }

    /// <summary>
    /// Device memory free right now, bytes: <c>cuMemGetInfo</c> on the backend's device (everything this and every other
    /// process holds there is already subtracted); 0 for the CPU backend, which has no device memory. Sizes a worker's
    /// placement capacity (<see cref="DeviceMemoryBudget"/>).
    /// </summary>
    long DeviceFreeBytes();

    /// <summary>
    /// Prepares a bf16 weight (raw bf16 bits) for <see cref="MatMul"/>. The source is only read during the call
    /// (it may be a memory-mapped checkpoint slice); the backend keeps its own copy.
    /// </summary>
    /// <param name="bf16">Source bits, <c>inFeatures × outFeatures</c> elements in <paramref name="layout"/>.</param>
    IWeightMatrix CreateWeight(ReadOnlySpan<ushort> bf16, int inFeatures, int outFeatures, WeightLayout layout);

    /// <summary>
    /// Prepares an FP8 E4M3 weight with one scale per output feature (the compressed-tensors per-channel format of the
    /// FP8 Llama 4 release): logically <c>W[k, n] = e4m3(codes[k, n]) · scales[n]</c>. The backend keeps one byte per
    /// weight (plus the scales) and dequantizes while it multiplies; <paramref name="activations"/> fixes what
    /// <see cref="MatMul"/> and the FFNs multiply it with. FP8 and bf16 weights mix freely in one grouped FFN call.
    /// </summary>
    /// <param name="e4m3">Codes, <c>inFeatures × outFeatures</c> in <paramref name="layout"/>; only read during the call.</param>
    /// <param name="scales">One per output feature, finite and positive.</param>
    /// <param name="inFeatures">Reduction length K.</param>
    /// <param name="outFeatures">Output width N.</param>
    /// <param name="layout">Source layout of <paramref name="e4m3"/> (a checkpoint's <c>[out, in]</c> is <see cref="WeightLayout.OutIn"/>).</param>
    /// <param name="activations">Weight-only or per-token W8A8.</param>
    /// <exception cref="ArgumentException">Non-positive sizes, an unknown layout or mode, wrong lengths, a NaN code
    /// (<c>0x7F</c>/<c>0xFF</c>) or a scale that is not finite and positive; the message names the index.</exception>
    IWeightMatrix CreateFp8Weight(ReadOnlySpan<byte> e4m3, ReadOnlySpan<float> scales, int inFeatures, int outFeatures, WeightLayout layout,
        Fp8ActivationMode activations);

    /// <summary><c>y[rows, N] = x[rows, K] · W[K, N]</c>, fp32 accumulation in a fixed k order per output element.</summary>
    void MatMul(ReadOnlySpan<float> x, int rows, IWeightMatrix w, Span<float> y);

    /// <summary>
    /// SwiGLU feed-forward <c>y = (silu(x·Wg) ⊙ (x·Wu)) · Wd</c> where <paramref name="gateUp"/> is
    /// <c>[H, 2I]</c> (gate = the first I output columns, up = the last I) and <paramref name="down"/> is <c>[I, H]</c>.
    /// Used for dense MLP layers, the shared expert and routed experts.
    /// </summary>
    /// <param name="x"><c>[rows, H]</c>.</param>
    /// <param name="y"><c>[rows, H]</c>, overwritten.</param>
    void SwiGluFfn(ReadOnlySpan<float> x, int rows, IWeightMatrix gateUp, IWeightMatrix down, Span<float> y);

    /// <summary>
    /// Runs several SwiGLU experts over consecutive row groups in one call: rows
    /// <c>[offset_g, offset_g + rowCounts[g])</c> of <paramref name="x"/> go through expert g
    /// (<paramref name="gateUp"/>[g], <paramref name="down"/>[g]). Each row's result equals what
    /// <see cref="SwiGluFfn"/> gives for that row alone (bitwise on the CPU backend). Groups with 0 rows are skipped.
    /// </summary>
    void SwiGluFfnGrouped(ReadOnlySpan<float> x, ReadOnlySpan<int> rowCounts, IReadOnlyList<IWeightMatrix> gateUp,
        IReadOnlyList<IWeightMatrix> down, Span<float> y);

    /// <summary>
    /// RMSNorm per row: <c>y = x · rsqrt(mean(x²) + eps) · weight</c> (eps inside the square root, HF <c>Llama4TextRMSNorm</c>).
    /// An empty <paramref name="weight"/> means no weight (Llama 4's L2 qk-norm, <c>Llama4TextL2Norm</c>).
    /// <paramref name="x"/> and <paramref name="y"/> may be the same buffer.
    /// </summary>
    /// <param name="x"><c>[rows, cols]</c>.</param>
    /// <param name="weight"><c>[cols]</c> or empty.</param>
    void RmsNorm(ReadOnlySpan<float> x, int rows, int cols, ReadOnlySpan<float> weight, float eps, Span<float> y);

    /// <summary><c>dst[i] = silu(gate[i]) · up[i]</c>, <c>silu(v) = v / (1 + e^-v)</c>.</summary>
    void SiluMul(ReadOnlySpan<float> gate, ReadOnlySpan<float> up, Span<float> dst);

    /// <summary>
    /// Rotates, in place, every head of every row by the interleaved (complex-pair) RoPE of Llama 4:
    /// <c>(x[2i], x[2i+1]) ← (x₀·cos θ − x₁·sin θ, x₀·sin θ + x₁·cos θ)</c>, <c>θ = fl32(positions[row] · InvFreq[i])</c>.
    /// </summary>
    /// <param name="x"><c>[rows, heads, table.HeadDim]</c>.</param>
    void Rope(Span<float> x, int rows, int heads, ReadOnlySpan<int> positions, RopeTable table);

    /// <summary>
    /// Scaled dot-product attention with the mask of <paramref name="p"/> (causal, optionally chunked) and GQA.
    /// Per query row and head: scores over the visible keys, a max-subtracting softmax, then the weighted sum of V.
    /// A query that sees no key yields zeros.
    /// </summary>
    /// <param name="q"><c>[rows, Heads, HeadDim]</c>.</param>
    /// <param name="queryPositions">Absolute position of each query row.</param>
    /// <param name="k"><c>[keys, KvHeads, HeadDim]</c>; key j has position <paramref name="keyPositionStart"/> + j.</param>
    /// <param name="v"><c>[keys, KvHeads, HeadDim]</c>.</param>
    /// <param name="output"><c>[rows, Heads, HeadDim]</c>, overwritten.</param>
    void Attention(ReadOnlySpan<float> q, int rows, ReadOnlySpan<int> queryPositions, ReadOnlySpan<float> k,
        ReadOnlySpan<float> v, int keys, int keyPositionStart, in AttentionParams p, Span<float> output);

    /// <summary>Row-wise softmax that subtracts the row max first (finite for logits of ±1000).</summary>
    /// <param name="x"><c>[rows, cols]</c>, in place.</param>
    void SoftmaxStable(Span<float> x, int rows, int cols);

    /// <summary>
    /// Per row, the <paramref name="k"/> largest values in descending order with their column ids (ties: lower id first).
    /// NaN never wins.
    /// </summary>
    /// <param name="scores"><c>[rows, cols]</c>.</param>
    /// <param name="ids"><c>[rows, k]</c>.</param>
    /// <param name="values"><c>[rows, k]</c>.</param>
    void TopK(ReadOnlySpan<float> scores, int rows, int cols, int k, Span<int> ids, Span<float> values);

    /// <summary>Per row, the column of the largest value (lowest id on ties; NaN never wins).</summary>
    /// <param name="x"><c>[rows, cols]</c>.</param>
    /// <param name="ids"><c>[rows]</c>.</param>
    void Argmax(ReadOnlySpan<float> x, int rows, int cols, Span<int> ids);

    /// <summary><c>dst[i] += src[i]</c>.</summary>
    void Add(Span<float> dst, ReadOnlySpan<float> src);

    /// <summary>
    /// LayerNorm per row (PyTorch <c>nn.LayerNorm</c>, biased variance): <c>y = (x − mean) / sqrt(var + eps) · weight + bias</c>
    /// with <c>mean = Σx / cols</c> and <c>var = Σ(x − mean)² / cols</c>. <paramref name="x"/> and <paramref name="y"/> may be
    /// the same buffer. Used by the Llama 4 vision encoder (<c>layernorm_pre/post</c>, each layer's two norms).
    /// </summary>
    /// <param name="x"><c>[rows, cols]</c>.</param>
    /// <param name="weight"><c>[cols]</c>.</param>
    /// <param name="bias"><c>[cols]</c>.</param>
    /// <param name="y"><c>[rows, cols]</c>, overwritten.</param>
    void LayerNorm(ReadOnlySpan<float> x, int rows, int cols, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias, float eps, Span<float> y);

    /// <summary>
    /// The exact (erf) GELU of PyTorch's <c>nn.GELU()</c>: <c>dst[i] = x[i] / 2 · (1 + erf(x[i] / √2))</c>, not the tanh
    /// approximation. <paramref name="dst"/> may alias <paramref name="x"/>.
    /// </summary>
    void Gelu(ReadOnlySpan<float> x, Span<float> dst);

    /// <summary>Adds a bias row to every row: <c>x[r, c] += bias[c]</c> (a linear layer's bias after <see cref="MatMul"/>).</summary>
    /// <param name="x"><c>[rows, bias.Length]</c>, in place.</param>
    void AddBias(Span<float> x, int rows, ReadOnlySpan<float> bias);

    /// <summary>
    /// Rotates, in place, the adjacent pairs of every head by a per-row, per-pair angle given as its cosine and sine:
    /// <c>(x[2i], x[2i+1]) ← (x₀·c − x₁·s, x₀·s + x₁·c)</c> with <c>c = cosSin[row, i, 0]</c>, <c>s = cosSin[row, i, 1]</c>.
    /// The Llama 4 vision encoder's 2-D RoPE (<c>vision_apply_rotary_emb</c>), whose angles depend on the patch's row and
    /// column rather than on one position.
    /// </summary>
    /// <param name="x"><c>[rows, heads, headDim]</c>.</param>
    /// <param name="cosSin"><c>[rows, headDim / 2, 2]</c>.</param>
    void RotatePairs(Span<float> x, int rows, int heads, int headDim, ReadOnlySpan<float> cosSin);

    /// <summary>
    /// Bidirectional (unmasked) multi-head attention within each of <paramref name="sequences"/> consecutive blocks of
    /// <paramref name="tokens"/> rows: every query sees every key of its own block and none of the others; a max-subtracting
    /// softmax of <c>scale · q·k</c>, then the weighted sum of V. One key/value head per query head (no GQA). The Llama 4
    /// vision encoder's attention, one block per image tile.
    /// </summary>
    /// <param name="q"><c>[sequences · tokens, heads, headDim]</c>.</param>
    /// <param name="k"><c>[sequences · tokens, heads, headDim]</c>.</param>
    /// <param name="v"><c>[sequences · tokens, heads, headDim]</c>.</param>
    /// <param name="output"><c>[sequences · tokens, heads, headDim]</c>, overwritten.</param>
    void BidirectionalAttention(ReadOnlySpan<float> q, ReadOnlySpan<float> k, ReadOnlySpan<float> v, int sequences, int tokens, int heads,
        int headDim, float scale, Span<float> output);
}
