using System.Runtime.InteropServices;
using SkiaSharp;

namespace Distributed.Coordinator.Serving.Images;

/// <summary>An image that cannot be used: undecodable, unsupported, too large, or failed to fetch. The message says why.</summary>
public sealed class ImageInputException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>A decoded 8-bit RGB image.</summary>
/// <param name="Width">Pixels per row.</param>
/// <param name="Height">Rows.</param>
/// <param name="Rgb"><c>[Height, Width, 3]</c> row-major, 8 bits per channel.</param>
/// <param name="Format">The encoded format (<c>png</c>, <c>jpeg</c>, <c>webp</c>, <c>gif</c>).</param>
public sealed record DecodedImage(int Width, int Height, byte[] Rgb, string Format);

/// <summary>
/// Decodes PNG, JPEG, WebP and GIF (first frame) with SkiaSharp's codecs — decoding only; resizing is Llama 4's own
/// (<see cref="Llama4ImageProcessor"/>). The dimensions are read from the header and checked against the limits before
/// any pixel is decoded (a small file that claims a huge canvas is refused without allocating it). Pixels are returned
/// as stored (no EXIF rotation, no colour management), as Hugging Face's PIL-based loading does; transparent pixels
/// are composited over white, as transformers' <c>convert_to_rgb</c> does.
/// </summary>
public static class ImageDecoder
{
    /// <summary>Decodes <paramref name="data"/>.</summary>
    /// <param name="maxPixels">Largest accepted width × height.</param>
    /// <exception cref="ImageInputException">Not one of the supported formats, corrupt or truncated data, or more pixels than allowed.</exception>
    public static DecodedImage Decode(ReadOnlySpan<byte> data, long maxPixels)
    {
        if (data.IsEmpty)
        {
            throw new ImageInputException("the image is empty (0 bytes)");
        }
        using var skData = SKData.CreateCopy(data);
        using var codec = SKCodec.Create(skData)
            ?? throw new ImageInputException("the data is not an image in a supported format (PNG, JPEG, WebP or GIF), or its header is corrupt");
        string format = codec.EncodedFormat switch
        {
            SKEncodedImageFormat.Png => "png",
            SKEncodedImageFormat.Jpeg => "jpeg",
            SKEncodedImageFormat.Webp => "webp",
            SKEncodedImageFormat.Gif => "gif",
            var other => throw new ImageInputException($"{other} images are not supported (PNG, JPEG, WebP or GIF)"),
        };
        int width = codec.Info.Width, height = codec.Info.Height;
        if (width <= 0 || height <= 0)
        {
            throw new ImageInputException($"the {format} header declares an empty image ({width}x{height})");
        }
        long pixels = (long)width * height;
        if (pixels > maxPixels)
        {
            throw new ImageInputException($"the {format} image is {width}x{height} = {pixels} pixels; the limit is {maxPixels}");
        }
        var info = new SKImageInfo(width, height, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        var rgba = new byte[checked(pixels * 4)];
        var handle = GCHandle.Alloc(rgba, GCHandleType.Pinned);
        SKCodecResult result;
        try
        {
            result = codec.GetPixels(info, handle.AddrOfPinnedObject());
        }
        finally
        {
            handle.Free();
        }
        if (result != SKCodecResult.Success)
        {
            throw new ImageInputException($"the {format} image could not be decoded: {Describe(result)}");
        }
        var rgb = new byte[pixels * 3];
        for (long i = 0; i < pixels; i++)
        {
            int a = rgba[(4 * i) + 3];
            for (int c = 0; c < 3; c++)
            {
                int v = rgba[(4 * i) + c];
                // Over an opaque white background: v·a/255 + 255·(1 − a/255), rounded.
                rgb[(3 * i) + c] = a == 255 ? (byte)v : (byte)(((v * a) + (255 * (255 - a)) + 127) / 255);
            }
        }
        return new DecodedImage(width, height, rgb, format);
    }

    private static string Describe(SKCodecResult result) => result switch
    {
        SKCodecResult.IncompleteInput or SKCodecResult.ErrorInInput => "the data is truncated or corrupt",
        SKCodecResult.InvalidInput => "the data is invalid",
        SKCodecResult.Unimplemented => "this variant of the format is not implemented",
        SKCodecResult.InvalidConversion => "the pixels cannot be converted to 8-bit RGBA",
        _ => result.ToString(),
    };
}
