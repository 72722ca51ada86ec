using Distributed.Checkpoint;
using Distributed.Kernels;

namespace Distributed.Coordinator.Model.Llama4.Vision;

/// <summary>
/// The Llama 4 vision tower and multimodal projector (HF <c>Llama4VisionModel</c> + <c>Llama4MultiModalProjector</c>),
/// transcribed from modeling_llama4.py. Per tile: the unfold-convolution patch embedding (patch vector in Unfold order
/// channel, row, column), the class token appended after the patches, positional embeddings, <c>layernorm_pre</c>; per
/// encoder layer <c>h += o_proj(attn(rope2d(q), rope2d(k), v))</c> over the LayerNormed input with bidirectional
/// attention inside the tile, then <c>h += fc2(gelu(fc1(LayerNorm(h))))</c>; <c>layernorm_post</c>; the class token dropped;
/// pixel shuffle; the adapter MLP <c>gelu(fc2(gelu(fc1(x))))</c>; the projector. Every numeric op goes through
/// <see cref="IKernelBackend"/>; reshapes (patch extraction, token layout, pixel shuffle) are copies here.
/// Tiles are independent, so any grouping of tiles into batches gives the same rows (kernel batch invariance).
/// </summary>
public sealed class Llama4VisionModel : IDisposable
{
    private readonly Llama4VisionWeights _w;
    private readonly IKernelBackend _backend;
    private readonly Llama4VisionConfig _c;
    private readonly float[] _cosSin;
    private readonly float _scale;

    /// <summary>Creates the model over loaded weights (which it owns and disposes).</summary>
    public Llama4VisionModel(Llama4VisionWeights weights, IKernelBackend backend)
    {
        _w = weights ?? throw new ArgumentNullException(nameof(weights));
        _backend = backend ?? throw new ArgumentNullException(nameof(backend));
        _c = weights.Config;
        _cosSin = RopeAngles(_c);
        // HF Llama4VisionAttention: self.scaling = head_dim ** -0.5.
        _scale = (float)Math.Pow(_c.HeadDim, -0.5);
    }

    /// <summary>The vision config.</summary>
    public Llama4VisionConfig Config => _c;

    /// <summary>Backend memory held by the weights.</summary>
    public long ResidentBytes => _w.ResidentBytes;

    /// <summary>
    /// Tiles encoded per pass (bounds activation memory: the MLP of one 336-pixel tile is 577 × 5632 floats, 13 MB).
    /// Results do not depend on it. Default: 4.
    /// </summary>
    public int TilesPerPass
    {
        get => _tilesPerPass;
        set => _tilesPerPass = value > 0 ? value : throw new ArgumentOutOfRangeException(nameof(value), value, "must be positive");
    }

    private int _tilesPerPass = 4;

    /// <summary>
    /// Debug hook for named intermediates (per pass, <c>[rows, cols]</c>): <c>vision.layernorm_pre</c> and
    /// <c>vision.L{il}.out</c> (<c>[tiles · (patches + 1), hidden]</c>, class token last in each tile),
    /// <c>vision.layernorm_post</c> (<c>[tiles · patches, hidden]</c>, class token dropped), <c>vision.pixel_shuffled</c>,
    /// <c>vision.features</c> and <c>vision.projected</c> (<c>[tiles · tokens per tile, width]</c>).
    /// </summary>
    public IActivationObserver? Observer { get; set; }

    /// <summary>
    /// Encodes <paramref name="tiles"/> preprocessed tiles into the rows that replace the <c>&lt;|patch|&gt;</c> token
    /// embeddings, tile after tile, each tile's <see cref="Llama4VisionConfig.OutputTokensPerTile"/> rows in row-major
    /// order of the pixel-shuffled grid.
    /// </summary>
    /// <param name="pixelValues"><c>[tiles, channels, image_size, image_size]</c>, normalised as the image processor leaves them.</param>
    /// <returns><c>[tiles · OutputTokensPerTile, text hidden]</c>.</returns>
    /// <exception cref="ArgumentException"><paramref name="pixelValues"/> does not hold <paramref name="tiles"/> tiles.</exception>
    public float[] Encode(ReadOnlySpan<float> pixelValues, int tiles, CancellationToken cancellationToken)
    {
        var c = _c;
        ArgumentOutOfRangeException.ThrowIfNegative(tiles);
        long tileFloats = (long)c.NumChannels * c.ImageSize * c.ImageSize;
        if (pixelValues.Length != tiles * tileFloats)
        {
            throw new ArgumentException($"pixel values hold {pixelValues.Length} floats, expected {tiles} tiles × {tileFloats}", nameof(pixelValues));
        }
        int outRows = c.OutputTokensPerTile;
        var projected = new float[(long)tiles * outRows * c.TextHiddenSize];
        for (int t0 = 0; t0 < tiles; t0 += _tilesPerPass)
        {
            int n = Math.Min(_tilesPerPass, tiles - t0);
            EncodePass(pixelValues.Slice((int)(t0 * tileFloats), (int)(n * tileFloats)), n,
                projected.AsSpan(t0 * outRows * c.TextHiddenSize, n * outRows * c.TextHiddenSize), cancellationToken);
        }
        return projected;
    }

    /// <summary>
    /// Encodes every image of <paramref name="prompt"/> (once) and pairs the rows with its <c>&lt;|patch|&gt;</c> positions.
    /// </summary>
    /// <exception cref="ArgumentException">An image's pixel values do not match its tile count, or the images give another
    /// number of rows than the prompt has positions.</exception>
    public Llama4ImageEmbeddings EncodePrompt(Llama4ImagePrompt prompt, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(prompt);
        long tileFloats = (long)_c.NumChannels * _c.ImageSize * _c.ImageSize;
        var pixels = new float[prompt.TotalTiles * tileFloats];
        long offset = 0;
        foreach (var image in prompt.Images)
        {
            if (image.PixelValues.Length != image.Tiles * tileFloats)
            {
                throw new ArgumentException($"an image holds {image.PixelValues.Length} pixel values for {image.Tiles} tiles of {tileFloats}", nameof(prompt));
            }
            image.PixelValues.CopyTo(pixels, offset);
            offset += image.PixelValues.Length;
        }
        float[] rows = Encode(pixels, prompt.TotalTiles, cancellationToken);
        return new Llama4ImageEmbeddings(prompt.PatchPositions, rows, _c.TextHiddenSize);
    }

    private void EncodePass(ReadOnlySpan<float> pixels, int n, Span<float> projected, CancellationToken cancellationToken)
    {
        var c = _c;
        var b = _backend;
        int h = c.HiddenSize, tokens = c.TokensPerTile, patches = c.PatchesPerTile, inter = c.IntermediateSize;
        int rows = n * tokens;

        // --- patch embedding (Llama4UnfoldConvolution), class token appended, positional embedding, layernorm_pre ---
        var unfolded = new float[(long)n * patches * c.PatchInputs];
        Unfold(pixels, n, unfolded);
        var embedded = new float[(long)n * patches * h];
        b.MatMul(unfolded, n * patches, _w.PatchEmbedding, embedded);
        var hidden = new float[(long)rows * h];
        for (int t = 0; t < n; t++)
        {
            embedded.AsSpan(t * patches * h, patches * h).CopyTo(hidden.AsSpan(t * tokens * h));
            _w.ClassEmbedding.CopyTo(hidden.AsSpan(((t * tokens) + patches) * h, h));
            b.Add(hidden.AsSpan(t * tokens * h, tokens * h), _w.PositionalEmbedding);
        }
        b.LayerNorm(hidden, rows, h, _w.PreNorm.Weight, _w.PreNorm.Bias, (float)c.NormEps, hidden);
        Observer?.OnTensor("vision.layernorm_pre", hidden, rows, h);

        // The 2-D RoPE angles of one tile, repeated for every tile of the pass.
        var cosSin = new float[(long)rows * c.HeadDim];
        for (int t = 0; t < n; t++)
        {
            _cosSin.CopyTo(cosSin, t * _cosSin.Length);
        }
        var x = new float[(long)rows * h];
        var qkv = new float[(long)rows * 3 * h];
        var q = new float[(long)rows * h];
        var k = new float[(long)rows * h];
        var v = new float[(long)rows * h];
        var attn = new float[(long)rows * h];
        var tmp = new float[(long)rows * h];
        var mlp = new float[(long)rows * inter];
        for (int il = 0; il < c.NumLayers; il++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var lw = _w.Layers[il];
            // --- self-attention block (Llama4VisionEncoderLayer) ---
            b.LayerNorm(hidden, rows, h, lw.InputNorm.Weight, lw.InputNorm.Bias, (float)c.NormEps, x);
            b.MatMul(x, rows, lw.Qkv, qkv);
            b.AddBias(qkv, rows, lw.QkvBias);
            for (int r = 0; r < rows; r++)
            {
                var src = qkv.AsSpan(r * 3 * h, 3 * h);
                src[..h].CopyTo(q.AsSpan(r * h, h));
                src.Slice(h, h).CopyTo(k.AsSpan(r * h, h));
                src.Slice(2 * h, h).CopyTo(v.AsSpan(r * h, h));
            }
            b.RotatePairs(q, rows, c.NumHeads, c.HeadDim, cosSin);
            b.RotatePairs(k, rows, c.NumHeads, c.HeadDim, cosSin);
            b.BidirectionalAttention(q, k, v, n, tokens, c.NumHeads, c.HeadDim, _scale, attn);
            b.MatMul(attn, rows, lw.O, tmp);
            b.AddBias(tmp, rows, lw.OBias);
            b.Add(hidden, tmp);
            // --- MLP block (Llama4VisionMLP: fc1 -> GELU -> fc2, with biases) ---
            b.LayerNorm(hidden, rows, h, lw.PostAttentionNorm.Weight, lw.PostAttentionNorm.Bias, (float)c.NormEps, x);
            b.MatMul(x, rows, lw.Fc1, mlp);
            b.AddBias(mlp, rows, lw.Fc1Bias);
            b.Gelu(mlp, mlp);
            b.MatMul(mlp, rows, lw.Fc2, tmp);
            b.AddBias(tmp, rows, lw.Fc2Bias);
            b.Add(hidden, tmp);
            Observer?.OnTensor($"vision.L{il}.out", hidden, rows, h);
        }

        // --- layernorm_post, class token dropped ---
        b.LayerNorm(hidden, rows, h, _w.PostNorm.Weight, _w.PostNorm.Bias, (float)c.NormEps, hidden);
        var patchRows = new float[(long)n * patches * h];
        for (int t = 0; t < n; t++)
        {
            hidden.AsSpan(t * tokens * h, patches * h).CopyTo(patchRows.AsSpan(t * patches * h));
        }
        Observer?.OnTensor("vision.layernorm_post", patchRows, n * patches, h);

        // --- vision adapter (Llama4VisionPixelShuffleMLP): pixel shuffle, fc1 -> GELU -> fc2 -> GELU ---
        int outRows = n * c.OutputTokensPerTile;
        var shuffled = new float[(long)outRows * inter];
        PixelShuffle(patchRows, n, shuffled);
        Observer?.OnTensor("vision.pixel_shuffled", shuffled, outRows, inter);
        var adapter = new float[(long)outRows * c.ProjectorInputDim];
        b.MatMul(shuffled, outRows, _w.AdapterFc1, adapter);
        b.Gelu(adapter, adapter);
        var features = new float[(long)outRows * c.VisionOutputDim];
        b.MatMul(adapter, outRows, _w.AdapterFc2, features);
        b.Gelu(features, features);
        Observer?.OnTensor("vision.features", features, outRows, c.VisionOutputDim);

        // --- multi_modal_projector.linear_1 ---
        b.MatMul(features, outRows, _w.Projector, projected);
        Observer?.OnTensor("vision.projected", projected, outRows, c.TextHiddenSize);
    }

    /// <summary>
    /// <c>nn.Unfold(kernel = stride = patch)</c> then <c>permute(0, 2, 1)</c>: row <c>py · side + px</c> of each tile holds
    /// patch (py, px) as the vector <c>[channel][kh][kw]</c>.
    /// </summary>
    private void Unfold(ReadOnlySpan<float> pixels, int n, Span<float> unfolded)
    {
        int s = _c.ImageSize, p = _c.PatchSize, side = _c.PatchesPerSide, ch = _c.NumChannels, k = _c.PatchInputs;
        for (int t = 0; t < n; t++)
        {
            var tile = pixels.Slice(t * ch * s * s, ch * s * s);
            for (int py = 0; py < side; py++)
            {
                for (int px = 0; px < side; px++)
                {
                    var dst = unfolded.Slice(((t * side * side) + (py * side) + px) * k, k);
                    int i = 0;
                    for (int cc = 0; cc < ch; cc++)
                    {
                        for (int kh = 0; kh < p; kh++)
                        {
                            tile.Slice((cc * s * s) + (((py * p) + kh) * s) + (px * p), p).CopyTo(dst.Slice(i, p));
                            i += p;
                        }
                    }
                }
            }
        }
    }

    /// <summary>
    /// HF <c>pixel_shuffle</c> with ratio 1/f: output token (y, x) of a tile is the concatenation of patches
    /// <c>(f·y + dy, f·x + dx)</c> for dy = 0..f−1 (outer), dx = 0..f−1 (inner), tokens in row-major order of (y, x).
    /// </summary>
    private void PixelShuffle(ReadOnlySpan<float> patchRows, int n, Span<float> shuffled)
    {
        int h = _c.HiddenSize, side = _c.PatchesPerSide, f = _c.ShuffleFactor, outSide = side / f;
        int width = h * f * f;
        for (int t = 0; t < n; t++)
        {
            for (int y = 0; y < outSide; y++)
            {
                for (int x = 0; x < outSide; x++)
                {
                    var dst = shuffled.Slice(((t * outSide * outSide) + (y * outSide) + x) * width, width);
                    int i = 0;
                    for (int dy = 0; dy < f; dy++)
                    {
                        for (int dx = 0; dx < f; dx++)
                        {
                            int patch = (((f * y) + dy) * side) + (f * x) + dx;
                            patchRows.Slice(((t * side * side) + patch) * h, h).CopyTo(dst.Slice(i, h));
                            i += h;
                        }
                    }
                }
            }
        }
    }

    /// <summary>
    /// HF <c>Llama4VisionRotaryEmbedding</c> for one tile: <c>[tokens, head_dim / 2, 2]</c> (cos, sin). Patch j at
    /// (row, col) = (j / side, j % side) rotates pair i by <c>(col + 1) · f_i</c> for the first head_dim/4 pairs and by
    /// <c>(row + 1) · f_(i − head_dim/4)</c> for the rest, <c>f_k = 1 / theta^(2k / (head_dim / 2))</c>, each in float32; the
    /// class token (last) has angle 0.
    /// </summary>
    internal static float[] RopeAngles(Llama4VisionConfig c)
    {
        int pairs = c.HeadDim / 2, quarter = pairs / 2, side = c.PatchesPerSide;
        // HF: freq_dim = head_dim // 2; rope_freq = 1.0 / (theta ** (arange(0, freq_dim, 2)[: freq_dim // 2].float() / freq_dim)).
        var freq = new float[quarter];
        for (int k = 0; k < quarter; k++)
        {
            float exponent = (float)(2 * k) / pairs;
            freq[k] = 1.0f / (float)Math.Pow(c.RopeTheta, exponent);
        }
        var table = new float[c.TokensPerTile * pairs * 2];
        for (int j = 0; j < c.TokensPerTile; j++)
        {
            bool cls = j == c.PatchesPerTile;
            for (int i = 0; i < pairs; i++)
            {
                float angle = 0f;
                if (!cls)
                {
                    int coordinate = i < quarter ? j % side : j / side;
                    angle = (coordinate + 1) * freq[i % quarter];
                }
                table[((j * pairs) + i) * 2] = (float)Math.Cos(angle);
                table[(((j * pairs) + i) * 2) + 1] = (float)Math.Sin(angle);
            }
        }
        return table;
    }

    /// <inheritdoc />
    public void Dispose() => _w.Dispose();
}
