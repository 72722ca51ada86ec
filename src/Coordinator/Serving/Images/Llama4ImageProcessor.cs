using System.Buffers.Binary;
using System.Security.Cryptography;
using Distributed.Coordinator.Model.Llama4.Vision;
using Distributed.Kernels;

namespace Distributed.Coordinator.Serving.Images;

/// <summary>One image after <see cref="Llama4ImageProcessor.Process"/>: its tiles and how they were cut.</summary>
/// <param name="Width">Decoded width in pixels.</param>
/// <param name="Height">Decoded height in pixels.</param>
/// <param name="CanvasHeight">The chosen canvas (a grid of tiles) height in pixels.</param>
/// <param name="CanvasWidth">The chosen canvas width in pixels.</param>
/// <param name="ResizedHeight">Height of the aspect-preserving resize placed at the canvas's top left.</param>
/// <param name="ResizedWidth">Width of that resize.</param>
/// <param name="TileRows">Tile rows of the canvas (<c>aspect_ratio[0]</c>).</param>
/// <param name="TileColumns">Tile columns of the canvas (<c>aspect_ratio[1]</c>).</param>
/// <param name="Tiles">The model input: the canvas tiles row-major, then the global tile when there is more than one.</param>
public sealed record PreprocessedImage(int Width, int Height, int CanvasHeight, int CanvasWidth, int ResizedHeight, int ResizedWidth,
    int TileRows, int TileColumns, Llama4ImageTiles Tiles)
{
    /// <summary>True when a global tile (the whole image squashed to one tile) follows the canvas tiles.</summary>
    public bool HasGlobalTile => TileRows * TileColumns > 1;
}

/// <summary>
/// Hugging Face's <c>Llama4ImageProcessorFast</c> (image_processing_llama4_fast.py at e1b5516), reproduced step by step
/// because every step changes the pixels the model sees (tests/fixtures/tiny-maverick-mm/README_vision.md):
/// <list type="number">
/// <item>the best-fit canvas: among the (rows × columns) tile grids with at most <see cref="MaxTiles"/> tiles, in HF's order,
/// the smallest float32 scale <c>min(canvas_h / h, canvas_w / w)</c> that is ≥ 1, else the largest below 1; ties to the
/// smallest area, then the first;</item>
/// <item>the resize target <c>min(max(h, tile), canvas_h) × min(max(w, tile), canvas_w)</c> (never enlarged beyond one tile),
/// then the largest aspect-preserving size inside it, floored — in float32 on a side where the canvas was the limit, as
/// HF computes it with a tensor;</item>
/// <item>torchvision's bilinear resize with antialias (triangle filter widened by the downscale factor, align_corners
/// false) on the 8-bit image, in double, both passes before one round half to even (the "float path"); an unchanged
/// size is a no-op;</item>
/// <item>padding to the canvas with raw 0 at the bottom and right (−1.0 after normalising: black);</item>
/// <item>rescale and normalise in bfloat16: <c>bf16(bf16(fl32(v) · fl32(1/255)) − 0.5) / 0.5</c>;</item>
/// <item>tiles row-major; when there is more than one, the global tile (the original resized to tile × tile, aspect
/// ratio not kept, no padding) last.</item>
/// </list>
/// </summary>
public sealed class Llama4ImageProcessor
{
    private readonly float[] _normalize = NormalizeTable();

    /// <summary>A processor for square tiles of <paramref name="tileSize"/> pixels and canvases of at most <paramref name="maxTiles"/> tiles.</summary>
    /// <exception cref="ArgumentOutOfRangeException">A non-positive size.</exception>
    public Llama4ImageProcessor(int tileSize, int maxTiles)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(tileSize);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(maxTiles);
        TileSize = tileSize;
        MaxTiles = maxTiles;
        Canvases = SupportedCanvases(maxTiles);
    }

    /// <summary>Tile side in pixels (<c>size</c>; the vision config's <c>image_size</c>).</summary>
    public int TileSize { get; }

    /// <summary>Most tiles of one canvas (<c>max_patches</c>), not counting the global tile.</summary>
    public int MaxTiles { get; }

    /// <summary>HF's <c>find_supported_resolutions</c> as (tile rows, tile columns), in its order.</summary>
    public IReadOnlyList<(int Rows, int Columns)> Canvases { get; }

    /// <summary>The 256 normalised values, indexed by the 8-bit input (HF's bf16 rescale and normalise).</summary>
    public ReadOnlySpan<float> NormalizeLut => _normalize;

    /// <summary>Preprocesses one decoded image.</summary>
    public PreprocessedImage Process(DecodedImage image)
    {
        ArgumentNullException.ThrowIfNull(image);
        int h = image.Height, w = image.Width, s = TileSize;
        var (canvasH, canvasW) = BestCanvas(h, w);
        var (newH, newW) = ResizeTarget(h, w, canvasH, canvasW);
        byte[] planar = ToPlanar(image.Rgb, h, w);
        byte[] resized = Resize(planar, h, w, newH, newW);
        int rows = canvasH / s, cols = canvasW / s;
        int tiles = (rows * cols) + (rows * cols > 1 ? 1 : 0);
        var pixels = new float[(long)tiles * 3 * s * s];
        // Canvas tiles, row-major; pixels outside the resized image are raw 0 (padding).
        for (int ty = 0; ty < rows; ty++)
        {
            for (int tx = 0; tx < cols; tx++)
            {
                var tile = pixels.AsSpan(((ty * cols) + tx) * 3 * s * s, 3 * s * s);
                for (int c = 0; c < 3; c++)
                {
                    for (int y = 0; y < s; y++)
                    {
                        int sy = (ty * s) + y;
                        for (int x = 0; x < s; x++)
                        {
                            int sx = (tx * s) + x;
                            byte v = sy < newH && sx < newW ? resized[(((long)c * newH) + sy) * newW + sx] : (byte)0;
                            tile[(((c * s) + y) * s) + x] = _normalize[v];
                        }
                    }
                }
            }
        }
        if (rows * cols > 1)
        {
            byte[] global = Resize(planar, h, w, s, s);
            var tile = pixels.AsSpan(rows * cols * 3 * s * s, 3 * s * s);
            for (int i = 0; i < tile.Length; i++)
            {
                tile[i] = _normalize[global[i]];
            }
        }
        return new PreprocessedImage(w, h, canvasH, canvasW, newH, newW, rows, cols, new Llama4ImageTiles(pixels, tiles, ContentHash(pixels)));
    }

    /// <summary>
    /// SHA-256 (lower-case hex) of the tiles' bf16 values, little-endian, in tile order: a stable identity of what the
    /// vision encoder sees (equal hashes, equal features), for caches keyed by image content.
    /// </summary>
    public static string ContentHash(ReadOnlySpan<float> pixelValues)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        Span<byte> buffer = stackalloc byte[2048];
        int n = 0;
        foreach (float v in pixelValues)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(buffer.Slice(n, 2), DTypeInfo.FloatToBf16(v));
            n += 2;
            if (n == buffer.Length)
            {
                hash.AppendData(buffer);
                n = 0;
            }
        }
        hash.AppendData(buffer[..n]);
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    /// <summary>HF <c>get_best_fit</c>: the canvas (height, width) in pixels for an image of <paramref name="h"/> × <paramref name="w"/>.</summary>
    public (int Height, int Width) BestCanvas(int h, int w)
    {
        int s = TileSize;
        float best = float.NaN;
        bool upscale = false;
        // scale = min(canvas_h / h, canvas_w / w), float32 (torch true division of int64 tensors).
        var scales = new float[Canvases.Count];
        for (int i = 0; i < Canvases.Count; i++)
        {
            float scaleH = (float)(Canvases[i].Rows * s) / h;
            float scaleW = (float)(Canvases[i].Columns * s) / w;
            scales[i] = scaleH > scaleW ? scaleW : scaleH;
            upscale |= scales[i] >= 1f;
        }
        for (int i = 0; i < scales.Length; i++)
        {
            float v = scales[i];
            if (upscale ? v >= 1f && (float.IsNaN(best) || v < best) : v < 1f && (float.IsNaN(best) || v > best))
            {
                best = v;
            }
        }
        int chosen = -1;
        long area = long.MaxValue;
        for (int i = 0; i < scales.Length; i++)
        {
            long a = (long)Canvases[i].Rows * Canvases[i].Columns;
            if (scales[i] == best && a < area)
            {
                chosen = i;
                area = a;
            }
        }
        return (Canvases[chosen].Rows * s, Canvases[chosen].Columns * s);
    }

    /// <summary>
    /// The aspect-preserving resize of an <paramref name="h"/> × <paramref name="w"/> image for a canvas: HF's
    /// <c>min(max(side, tile), canvas_side)</c> target, then <c>get_max_res_without_distortion</c>, at least 1 × 1.
    /// </summary>
    public (int Height, int Width) ResizeTarget(int h, int w, int canvasH, int canvasW)
    {
        int s = TileSize;
        // Python's min(a, b) keeps a unless b < a; b is the canvas side, a 0-d int64 tensor, so a side limited by the
        // canvas divides in float32 below, an unlimited one in double (Python floats).
        bool tensorH = canvasH < Math.Max(h, s);
        bool tensorW = canvasW < Math.Max(w, s);
        return MaxResolutionWithoutDistortion(h, w, tensorH ? canvasH : Math.Max(h, s), tensorW ? canvasW : Math.Max(w, s), tensorH, tensorW);
    }

    /// <summary>
    /// HF <c>get_max_res_without_distortion</c>: the largest (height, width) of the image's aspect ratio inside
    /// <paramref name="th"/> × <paramref name="tw"/> (floored, at least 1 × 1); a side flagged f32 divides in float32.
    /// </summary>
    internal static (int Height, int Width) MaxResolutionWithoutDistortion(int h, int w, int th, int tw, bool tensorH, bool tensorW)
    {
        double scaleW = tensorW ? (float)tw / w : (double)tw / w;
        double scaleH = tensorH ? (float)th / h : (double)th / h;
        bool f32 = tensorW || tensorH;
        bool widthLimits = f32 ? (float)scaleW < (float)scaleH : scaleW < scaleH;
        int newH, newW;
        if (widthLimits)
        {
            newW = tw;
            newH = Math.Min(FloorProduct(h, scaleW, tensorW), th);
        }
        else
        {
            newH = th;
            newW = Math.Min(FloorProduct(w, scaleH, tensorH), tw);
        }
        return (Math.Max(newH, 1), Math.Max(newW, 1));
    }

    // math.floor(side * scale): a float32 product when scale is a float32 tensor, else a double one.
    private static int FloorProduct(int side, double scale, bool f32) =>
        f32 ? (int)MathF.Floor(side * (float)scale) : (int)Math.Floor(side * scale);

    /// <summary>
    /// torchvision <c>resize(..., BILINEAR, antialias=True)</c> of planar 8-bit <c>[3, h, w]</c> to <c>[3, newH, newW]</c>:
    /// separable passes (only along a side that changes) in double, then one round half to even and clamp — PyTorch's
    /// float path. Channel by channel, and the pass that leaves the smaller intermediate first (horizontal first unless
    /// the vertical pass shrinks more): the intermediate is at most one channel of min(h × newW, newH × w) doubles (54 MB
    /// for an 8000 × 5000 image), and the result is the same either way to far below the fixture's 0.005 margin from a
    /// rounding boundary.
    /// </summary>
    public static byte[] Resize(byte[] planar, int h, int w, int newH, int newW)
    {
        if (h == newH && w == newW)
        {
            return planar;
        }
        var horizontal = newW != w ? AntialiasWeights(w, newW) : default;
        var vertical = newH != h ? AntialiasWeights(h, newH) : default;
        bool horizontalFirst = (long)h * newW <= (long)newH * w;
        var result = new byte[3L * newH * newW];
        for (int c = 0; c < 3; c++)
        {
            ReadOnlySpan<byte> source = planar.AsSpan((int)((long)c * h * w), h * w);
            double[] plane;
            if (newW == w)
            {
                plane = Pass(source, h, w, vertical, vertically: true);
            }
            else if (newH == h)
            {
                plane = Pass(source, h, w, horizontal, vertically: false);
            }
            else if (horizontalFirst)
            {
                plane = Pass(Pass(source, h, w, horizontal, vertically: false), h, newW, vertical, vertically: true);
            }
            else
            {
                plane = Pass(Pass(source, h, w, vertical, vertically: true), newH, w, horizontal, vertically: false);
            }
            var dst = result.AsSpan((int)((long)c * newH * newW), newH * newW);
            for (int i = 0; i < dst.Length; i++)
            {
                dst[i] = (byte)Math.Clamp(Math.Round(plane[i], MidpointRounding.ToEven), 0, 255);
            }
        }
        return result;
    }

    // One separable pass over a [rows, cols] plane (bytes or doubles), along its columns (vertically) or its rows.
    private static double[] Pass<T>(ReadOnlySpan<T> source, int rows, int cols, (int[] Start, double[] Weights, int Taps) filter, bool vertically)
        where T : unmanaged, System.Numerics.INumberBase<T>
    {
        var (start, weights, taps) = filter;
        int outRows = vertically ? start.Length : rows;
        int outCols = vertically ? cols : start.Length;
        var output = new double[(long)outRows * outCols];
        for (int y = 0; y < outRows; y++)
        {
            for (int x = 0; x < outCols; x++)
            {
                int o = vertically ? y : x;
                double acc = 0;
                for (int j = 0; j < taps; j++)
                {
                    double wt = weights[(o * taps) + j];
                    if (wt != 0)
                    {
                        long index = vertically ? ((long)(start[o] + j) * cols) + x : ((long)y * cols) + start[o] + j;
                        acc += wt * double.CreateTruncating(source[(int)index]);
                    }
                }
                output[((long)y * outCols) + x] = acc;
            }
        }
        return output;
    }

    private static double[] Pass(double[] source, int rows, int cols, (int[] Start, double[] Weights, int Taps) filter, bool vertically) =>
        Pass<double>(source, rows, cols, filter, vertically);

    /// <summary>
    /// PyTorch's antialiased interpolation weights (UpSampleKernel <c>_compute_index_ranges_weights</c>, bilinear):
    /// <c>scale = in / out</c>, support = scale (downscale) or 1, <c>center = scale · (i + 0.5)</c>, taps from
    /// <c>trunc(center − support + 0.5)</c> (at least 0) to <c>trunc(center + support + 0.5)</c> (at most in),
    /// triangle filter <c>max(0, 1 − |(j + xmin − center + 0.5) / max(scale, 1)|)</c>, normalised to sum 1.
    /// </summary>
    private static (int[] Start, double[] Weights, int Taps) AntialiasWeights(int input, int output)
    {
        double scale = (double)input / output;
        double support = scale >= 1.0 ? scale : 1.0;
        double invScale = scale >= 1.0 ? 1.0 / scale : 1.0;
        int taps = (int)Math.Ceiling(support) * 2 + 1;
        var start = new int[output];
        var weights = new double[output * taps];
        for (int i = 0; i < output; i++)
        {
            double center = scale * (i + 0.5);
            int xmin = Math.Max((int)(center - support + 0.5), 0);
            int xsize = Math.Min((int)(center + support + 0.5), input) - xmin;
            xsize = Math.Min(xsize, taps);
            start[i] = xmin;
            double total = 0;
            for (int j = 0; j < xsize; j++)
            {
                double x = Math.Abs((j + xmin - center + 0.5) * invScale);
                double wt = x < 1.0 ? 1.0 - x : 0.0;
                weights[(i * taps) + j] = wt;
                total += wt;
            }
            if (total != 0)
            {
                for (int j = 0; j < xsize; j++)
                {
                    weights[(i * taps) + j] /= total;
                }
            }
        }
        return (start, weights, taps);
    }

    /// <summary>HF <c>find_supported_resolutions</c>: grids grouped by aspect ratio in first-seen order, tile counts from max down.</summary>
    internal static (int Rows, int Columns)[] SupportedCanvases(int maxTiles)
    {
        var groups = new List<(double Ratio, List<(int, int)> Grids)>();
        for (int chunks = maxTiles; chunks >= 1; chunks--)
        {
            for (int f = 1; f <= chunks; f++)
            {
                if (chunks % f != 0)
                {
                    continue;
                }
                (int rows, int cols) = (f, chunks / f);
                double ratio = (double)rows / cols;
                int g = groups.FindIndex(x => x.Ratio == ratio);
                if (g < 0)
                {
                    groups.Add((ratio, [(rows, cols)]));
                }
                else
                {
                    groups[g].Grids.Add((rows, cols));
                }
            }
        }
        return [.. groups.SelectMany(g => g.Grids)];
    }

    private static byte[] ToPlanar(byte[] rgb, int h, int w)
    {
        var planar = new byte[rgb.Length];
        long plane = (long)h * w;
        for (long i = 0; i < plane; i++)
        {
            planar[i] = rgb[3 * i];
            planar[plane + i] = rgb[(3 * i) + 1];
            planar[(2 * plane) + i] = rgb[(3 * i) + 2];
        }
        return planar;
    }

    // HF rescale_and_normalize in bfloat16: images.to(bf16) * rescale_factor, then (x - 0.5) / 0.5, each op rounding to bf16.
    private static float[] NormalizeTable()
    {
        var table = new float[256];
        float rescale = (float)(1.0 / 255.0);
        for (int v = 0; v < 256; v++)
        {
            float scaled = RoundBf16(v * rescale);
            float centred = RoundBf16(scaled - 0.5f);
            table[v] = RoundBf16(centred / 0.5f);
        }
        return table;
    }

    private static float RoundBf16(float v) => DTypeInfo.Bf16ToFloat(DTypeInfo.FloatToBf16(v));
}
