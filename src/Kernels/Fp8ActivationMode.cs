namespace Distributed.Kernels;

/// <summary>
/// What an FP8 weight's matmuls multiply it with (<see cref="IKernelBackend.CreateFp8Weight"/>). Values are persisted
/// in configuration: never reuse one.
/// </summary>
public enum Fp8ActivationMode
{
    /// <summary>
    /// Weight-only: the activations as the backend computes them (fp32; bf16-rounded on a CPU backend at
    /// <see cref="CpuMatMulPrecision.Bf16"/>) times the dequantized weights, <c>y[r, n] = (Σ_k x[r, k] · q[k, n]) · s[n]</c>
    /// with q the E4M3 values and s the per-output-channel scale. The default, and the semantics of
    /// <c>tiny-maverick-fp8/golden.json</c>.
    /// </summary>
    WeightOnly = 0,

    /// <summary>
    /// W8A8 as the FP8 release's <c>input_activations</c> group and vLLM compute it: each input row is first quantized
    /// per token to E4M3 (<see cref="Fp8E4M3.QuantizeRowToValues"/>: <c>s_x = max(max|x| / 448, 1/(448·512))</c>), then
    /// <c>y[r, n] = (Σ_k q_x[r, k] · q[k, n]) · s[n] · s_x[r]</c>. Still batch invariant (the quantization is per row).
    /// The semantics of <c>tiny-maverick-fp8/golden_fp8_act.json</c>.
    /// </summary>
    PerTokenFp8 = 1,
}
