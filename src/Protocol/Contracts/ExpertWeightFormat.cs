namespace Distributed.Protocol.Contracts;

/// <summary>
/// How a model's routed experts are held in memory (which decides their size and arithmetic). Values are persisted
/// (placement plans, Orleans messages): never reuse one.
/// </summary>
[GenerateSerializer]
public enum ExpertWeightFormat
{
    /// <summary>bf16: <c>gate_up [H, 2I]</c> and <c>down [I, H]</c>, 2 bytes per weight (the HF release).</summary>
    Bf16 = 0,

    /// <summary>
    /// FP8 E4M3 with one fp32 scale per output channel, 1 byte per weight: the compressed-tensors FP8 release, or a
    /// bf16 checkpoint quantized at load (<c>--quantize fp8</c>).
    /// </summary>
    Fp8E4M3 = 1,
}
