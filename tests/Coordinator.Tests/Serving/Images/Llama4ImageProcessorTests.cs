using Distributed.Coordinator.Serving.Images;

namespace Distributed.Coordinator.Tests.Serving.Images;

/// <summary>The HF image processor's decisions on the examples of its own docstrings, and the resize's invariants.</summary>
[Trait("Category", "Unit")]
public sealed class Llama4ImageProcessorTests
{
    [Fact]
    public void SupportedCanvases_AreHfsOrder()
    {
        // find_supported_resolutions(4, 224): {0.25: [(1, 4)], 1.0: [(2, 2), (1, 1)], 4.0: [(4, 1)], 0.33: [(1, 3)], 3.0: [(3, 1)], 0.5: [(1, 2)], 2.0: [(2, 1)]}
        Assert.Equal([(1, 4), (2, 2), (1, 1), (4, 1), (1, 3), (3, 1), (1, 2), (2, 1)], Llama4ImageProcessor.SupportedCanvases(4));
        Assert.Equal(new Llama4ImageProcessor(336, 16).Canvases.Count, Llama4ImageProcessor.SupportedCanvases(16).Length);
    }

    [Fact]
    public void BestCanvas_SmallestUpscaleThenSmallestArea()
    {
        // get_best_fit((200, 300)) over 224-pixel tiles: scales 1.12 for (224, 448) and (672, 224) ... -> (224, 448).
        var p = new Llama4ImageProcessor(224, 3);
        Assert.Equal((224, 448), p.BestCanvas(200, 300));
        // Larger than every canvas: the largest downscale (least shrinking) wins.
        var small = new Llama4ImageProcessor(56, 2);
        Assert.Equal((56, 112), small.BestCanvas(500, 1000));
    }

    // HF's docstring examples say (134, 200) and (450, 338), but its code floors: floor(200 · 200/300) = 133 and
    // floor(600 · 450/800) = 337. The code is what ran for the goldens.
    [Theory]
    [InlineData(200, 300, 450, 200, 133, 200)]
    [InlineData(800, 600, 450, 1300, 450, 337)]
    public void MaxResolutionWithoutDistortion_FloorsAsHfCodeDoes(int h, int w, int th, int tw, int eh, int ew) =>
        Assert.Equal((eh, ew), Llama4ImageProcessor.MaxResolutionWithoutDistortion(h, w, th, tw, false, false));

    [Fact]
    public void ResizeTarget_NeverEnlargesBeyondOneTile_AndDownscalesToTheCanvas()
    {
        var p = new Llama4ImageProcessor(56, 16);
        Assert.Equal((41, 73), p.ResizeTarget(41, 73, 56, 112));
        Assert.Equal((56, 56), p.ResizeTarget(20, 20, 56, 56));
        var (h, w) = p.BestCanvas(1000, 3000);
        var (rh, rw) = p.ResizeTarget(1000, 3000, h, w);
        Assert.True(rh <= h && rw <= w && (rh == h || rw == w), $"{rh}x{rw} inside {h}x{w}");
    }

    [Fact]
    public void Resize_UnchangedSizeIsANoOp_AndAConstantImageStaysConstant()
    {
        byte[] planar = [.. Enumerable.Range(0, 3 * 5 * 7).Select(i => (byte)(i * 7))];
        Assert.Same(planar, Llama4ImageProcessor.Resize(planar, 5, 7, 5, 7));
        byte[] flat = [.. Enumerable.Repeat((byte)77, 3 * 40 * 30)];
        Assert.All(Llama4ImageProcessor.Resize(flat, 40, 30, 13, 57), v => Assert.Equal(77, v));
    }

    /// <summary>
    /// The vertical-first order (taken when it leaves the smaller intermediate) computes, on a transposed image, exactly
    /// what the horizontal-first order computes on the original: the transposed fixture image c.png (41 wide, 73 tall)
    /// resized to 56 x 56 is the transpose of c.png's golden-checked global tile.
    /// </summary>
    [Fact]
    public void Resize_VerticalFirst_IsTheTransposeOfHorizontalFirst()
    {
        var c = ImageDecoder.Decode(File.ReadAllBytes(Path.Combine(TestPaths.Fixture("tiny-maverick-mm"), "images", "c.png")), 1 << 20);
        byte[] planar = new byte[3 * 41 * 73];
        byte[] transposed = new byte[3 * 41 * 73];
        for (int ch = 0; ch < 3; ch++)
        {
            for (int y = 0; y < 41; y++)
            {
                for (int x = 0; x < 73; x++)
                {
                    byte v = c.Rgb[(((y * 73) + x) * 3) + ch];
                    planar[(ch * 41 * 73) + (y * 73) + x] = v;
                    transposed[(ch * 41 * 73) + (x * 41) + y] = v;
                }
            }
        }
        byte[] a = Llama4ImageProcessor.Resize(planar, 41, 73, 56, 56);
        byte[] b = Llama4ImageProcessor.Resize(transposed, 73, 41, 56, 56);
        for (int ch = 0; ch < 3; ch++)
        {
            for (int y = 0; y < 56; y++)
            {
                for (int x = 0; x < 56; x++)
                {
                    Assert.Equal(a[(ch * 56 * 56) + (y * 56) + x], b[(ch * 56 * 56) + (x * 56) + y]);
                }
            }
        }
    }

    [Fact]
    public void Process_SmallImage_PadsWithBlackAndHashesItsTiles()
    {
        var p = new Llama4ImageProcessor(56, 16);
        var image = new DecodedImage(10, 10, [.. Enumerable.Repeat((byte)255, 300)], "png");

        var result = p.Process(image);

        Assert.Equal((1, 1, 1), (result.TileRows, result.TileColumns, result.Tiles.Tiles));
        Assert.Equal((56, 56), (result.ResizedHeight, result.ResizedWidth));
        Assert.All(result.Tiles.PixelValues, v => Assert.Equal(1f, v));
        Assert.Equal(Llama4ImageProcessor.ContentHash(result.Tiles.PixelValues), result.Tiles.ContentHash);
        Assert.NotEqual(result.Tiles.ContentHash, p.Process(image with { Rgb = [.. Enumerable.Repeat((byte)254, 300)] }).Tiles.ContentHash);

        var wide = p.Process(new DecodedImage(60, 10, [.. Enumerable.Repeat((byte)255, 1800)], "png"));
        Assert.True(wide.HasGlobalTile);
        Assert.Equal(-1f, wide.Tiles.PixelValues[(55 * 56) + 0]);
    }
}
