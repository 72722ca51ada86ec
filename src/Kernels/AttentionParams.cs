namespace Distributed.Kernels;

/// <summary>
/// Shape and mask of one attention call. Keys are contiguous in position: key <c>j</c> has absolute position
/// <c>KeyPositionStart + j</c>. A query at absolute position <c>p</c> sees key position <c>q</c> iff <c>q ≤ p</c> and,
/// when <see cref="ChunkSize"/> &gt; 0, <c>q / ChunkSize == p / ChunkSize</c> (Llama 4 chunked attention: fixed blocks,
/// not a sliding window).
/// </summary>
/// <param name="Heads">Query heads.</param>
/// <param name="KvHeads">Key/value heads; query head <c>h</c> reads kv head <c>h / (Heads / KvHeads)</c> (GQA).</param>
/// <param name="HeadDim">Per-head width.</param>
/// <param name="Scale">Multiplies q·k before the softmax (normally <c>1/sqrt(HeadDim)</c>).</param>
/// <param name="ChunkSize">0 for full causal attention, else the Llama 4 <c>attention_chunk_size</c>.</param>
public readonly record struct AttentionParams(int Heads, int KvHeads, int HeadDim, float Scale, int ChunkSize)
{
    /// <summary>Throws if the shape is inconsistent.</summary>
    /// <exception cref="ArgumentException">Non-positive sizes, or <see cref="Heads"/> not a multiple of <see cref="KvHeads"/>.</exception>
    public void Validate()
    {
        if (Heads <= 0 || KvHeads <= 0 || HeadDim <= 0 || Heads % KvHeads != 0 || ChunkSize < 0 || !float.IsFinite(Scale))
        {
            throw new ArgumentException($"invalid attention params {this}");
        }
    }
}
