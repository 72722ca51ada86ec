namespace Distributed.Coordinator.Model.Llama4.Vision;

/// <summary>One image as the vision encoder takes it.</summary>
/// <param name="PixelValues"><c>[Tiles, channels, image_size, image_size]</c>, normalised (bf16 values held as floats).</param>
/// <param name="Tiles">Tiles, the global tile (when present) last.</param>
/// <param name="ContentHash">
/// SHA-256 (hex) of the tiles' bf16 values: equal hashes mean equal encoder input, hence equal features. Prefix caches
/// must key image positions by it, never by the prompt's placeholder token ids alone.
/// </param>
public sealed record Llama4ImageTiles(float[] PixelValues, int Tiles, string ContentHash);

/// <summary>
/// The images of one prompt and where their features go: the k-th projected row (tiles of the images in order, each
/// tile's rows in order) replaces the embedding of the token at <see cref="PatchPositions"/>[k] of the expanded prompt.
/// </summary>
public sealed class Llama4ImagePrompt
{
    /// <summary>Creates the input; <paramref name="patchPositions"/> must be strictly ascending and non-negative.</summary>
    /// <exception cref="ArgumentException">No image, or positions that are not strictly ascending.</exception>
    public Llama4ImagePrompt(IReadOnlyList<Llama4ImageTiles> images, int[] patchPositions)
    {
        ArgumentNullException.ThrowIfNull(images);
        ArgumentNullException.ThrowIfNull(patchPositions);
        if (images.Count == 0)
        {
            throw new ArgumentException("an image prompt needs at least one image", nameof(images));
        }
        for (int i = 0; i < patchPositions.Length; i++)
        {
            if (patchPositions[i] < 0 || (i > 0 && patchPositions[i] <= patchPositions[i - 1]))
            {
                throw new ArgumentException($"patch positions must be non-negative and strictly ascending (entry {i} is {patchPositions[i]})", nameof(patchPositions));
            }
        }
        Images = images;
        PatchPositions = patchPositions;
    }

    /// <summary>The images, in prompt order.</summary>
    public IReadOnlyList<Llama4ImageTiles> Images { get; }

    /// <summary>Positions of the <c>&lt;|patch|&gt;</c> tokens in the expanded prompt, ascending.</summary>
    public int[] PatchPositions { get; }

    /// <summary>Tiles over all images.</summary>
    public int TotalTiles => Images.Sum(i => i.Tiles);

    /// <summary>
    /// Checks that the <c>&lt;|patch|&gt;</c> tokens of <paramref name="promptIds"/> are exactly <see cref="PatchPositions"/>
    /// (HF scatters the features into every <c>image_token_index</c> position and requires the counts to match).
    /// </summary>
    /// <exception cref="ArgumentException">A position outside the prompt or not holding the patch token, or a patch token no image covers.</exception>
    public void Validate(ReadOnlySpan<int> promptIds, int patchTokenId)
    {
        int k = 0;
        for (int i = 0; i < promptIds.Length; i++)
        {
            bool isPatch = promptIds[i] == patchTokenId;
            bool expected = k < PatchPositions.Length && PatchPositions[k] == i;
            if (isPatch != expected)
            {
                throw new ArgumentException(isPatch
                    ? $"prompt position {i} holds the image patch token {patchTokenId} but no image feature goes there"
                    : $"image feature {k} goes to prompt position {i}, which holds token {promptIds[i]}, not the image patch token {patchTokenId}");
            }
            k += expected ? 1 : 0;
        }
        if (k != PatchPositions.Length)
        {
            throw new ArgumentException($"image feature position {PatchPositions[k]} is outside the {promptIds.Length}-token prompt");
        }
    }
}

/// <summary>The projected rows of one prompt's images, placed by prompt position (see <see cref="Llama4ImagePrompt"/>).</summary>
public sealed class Llama4ImageEmbeddings
{
    private readonly int[] _positions;
    private readonly float[] _rows;
    private readonly int _width;

    /// <summary>Pairs <paramref name="rows"/> (<c>[positions.Length, width]</c>) with <paramref name="positions"/> (ascending).</summary>
    /// <exception cref="ArgumentException">The row count differs from the position count.</exception>
    public Llama4ImageEmbeddings(int[] positions, float[] rows, int width)
    {
        ArgumentNullException.ThrowIfNull(positions);
        ArgumentNullException.ThrowIfNull(rows);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(width);
        if ((long)positions.Length * width != rows.Length)
        {
            throw new ArgumentException(
                $"the images give {rows.Length / width} feature rows but the prompt has {positions.Length} <|patch|> positions", nameof(rows));
        }
        _positions = positions;
        _rows = rows;
        _width = width;
    }

    /// <summary>Number of rows (= <c>&lt;|patch|&gt;</c> tokens).</summary>
    public int Count => _positions.Length;

    /// <summary>
    /// The overrides for the prompt tokens <c>[start, start + count)</c> (one prefill chunk), offsets relative to
    /// <paramref name="start"/>; null when none of those tokens is an image position.
    /// </summary>
    public EmbeddingOverrides? ForRange(int start, int count)
    {
        int lo = LowerBound(start);
        int hi = LowerBound(start + count);
        if (hi == lo)
        {
            return null;
        }
        var offsets = new int[hi - lo];
        for (int i = lo; i < hi; i++)
        {
            offsets[i - lo] = _positions[i] - start;
        }
        return new EmbeddingOverrides(offsets, _rows.AsMemory(lo * _width, (hi - lo) * _width));
    }

    private int LowerBound(int position)
    {
        int i = Array.BinarySearch(_positions, position);
        return i >= 0 ? i : ~i;
    }
}
