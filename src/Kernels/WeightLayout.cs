namespace Distributed.Kernels;

/// <summary>How a bf16 weight matrix is laid out in its source (checkpoint) memory.</summary>
public enum WeightLayout
{
    /// <summary>
    /// <c>[outFeatures, inFeatures]</c> row-major, the layout of a Hugging Face <c>nn.Linear.weight</c>:
    /// <c>y = x · Wᵀ</c>.
    /// </summary>
    OutIn = 0,

    /// <summary>
    /// <c>[inFeatures, outFeatures]</c> row-major, the layout of Llama 4's fused expert tensors
    /// (<c>experts.gate_up_proj[e]</c> is <c>[hidden, 2·intermediate]</c>, used as <c>x @ W</c>).
    /// </summary>
    InOut = 1,
}
