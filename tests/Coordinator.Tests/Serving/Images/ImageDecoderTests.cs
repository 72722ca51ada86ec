using System.Buffers.Binary;
using Distributed.Coordinator.Serving.Images;
using SkiaSharp;

namespace Distributed.Coordinator.Tests.Serving.Images;

/// <summary>Decoding guards and formats: dimensions checked before pixels, clear errors, PNG/JPEG/WebP/GIF, alpha over white.</summary>
[Trait("Category", "Unit")]
public sealed class ImageDecoderTests
{
    // A 1x1 GIF whose only pixel is palette entry 0 = red.
    private static readonly byte[] RedGif =
    [
        0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0xFF, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x21, 0xF9, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x2C, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3B,
    ];

    [Fact]
    public void Png_FromTheFixture_DecodesToItsRgbBytes()
    {
        var image = ImageDecoder.Decode(File.ReadAllBytes(Path.Combine(TestPaths.Fixture("tiny-maverick-mm"), "images", "c.png")), 1 << 20);
        Assert.Equal((73, 41, "png"), (image.Width, image.Height, image.Format));
        Assert.Equal(73 * 41 * 3, image.Rgb.Length);
    }

    [Theory]
    [InlineData(SKEncodedImageFormat.Png, "png", 0)]
    [InlineData(SKEncodedImageFormat.Webp, "webp", 0)]
    [InlineData(SKEncodedImageFormat.Jpeg, "jpeg", 24)]
    public void EncodedBySkia_DecodesBack(SKEncodedImageFormat format, string name, int tolerance)
    {
        using var bitmap = new SKBitmap(new SKImageInfo(16, 8, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        for (int y = 0; y < 8; y++)
        {
            for (int x = 0; x < 16; x++)
            {
                bitmap.SetPixel(x, y, new SKColor((byte)(x * 16), (byte)(y * 32), 128));
            }
        }
        using var data = bitmap.Encode(format, 100);

        var image = ImageDecoder.Decode(data.ToArray(), 1 << 20);

        Assert.Equal((16, 8, name), (image.Width, image.Height, image.Format));
        for (int y = 0; y < 8; y++)
        {
            for (int x = 0; x < 16; x++)
            {
                int i = ((y * 16) + x) * 3;
                Assert.InRange(image.Rgb[i], x * 16 - tolerance, x * 16 + tolerance);
                Assert.InRange(image.Rgb[i + 1], y * 32 - tolerance, y * 32 + tolerance);
                Assert.InRange(image.Rgb[i + 2], 128 - tolerance, 128 + tolerance);
            }
        }
    }

    [Fact]
    public void Gif_FirstFrame_Decodes()
    {
        var image = ImageDecoder.Decode(RedGif, 16);
        Assert.Equal((1, 1, "gif"), (image.Width, image.Height, image.Format));
        Assert.Equal(new byte[] { 255, 0, 0 }, image.Rgb);
    }

    [Fact]
    public void TransparentPixels_AreCompositedOverWhite()
    {
        using var bitmap = new SKBitmap(new SKImageInfo(2, 1, SKColorType.Rgba8888, SKAlphaType.Unpremul));
        bitmap.SetPixel(0, 0, new SKColor(0, 0, 0, 0));
        bitmap.SetPixel(1, 0, new SKColor(0, 0, 0, 255));
        using var data = bitmap.Encode(SKEncodedImageFormat.Png, 100);

        var image = ImageDecoder.Decode(data.ToArray(), 16);

        Assert.Equal(new byte[] { 255, 255, 255, 0, 0, 0 }, image.Rgb);
    }

    [Fact]
    public void HugeDeclaredCanvas_IsRefusedFromTheHeaderBeforeDecoding()
    {
        // 100000 x 100000 RGB declared in a ~60-byte file: decoding it would need 40 GB.
        byte[] bomb = Png(100_000, 100_000, [0x78, 0x9C, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]);

        var e = Assert.Throws<ImageInputException>(() => ImageDecoder.Decode(bomb, 40_000_000));

        Assert.Contains("100000x100000 = 10000000000 pixels; the limit is 40000000", e.Message);
    }

    [Fact]
    public void NotAnImage_Truncated_Empty_AreClearErrors()
    {
        Assert.Contains("not an image in a supported format", Assert.Throws<ImageInputException>(() => ImageDecoder.Decode("hello"u8, 16)).Message);
        Assert.Contains("empty", Assert.Throws<ImageInputException>(() => ImageDecoder.Decode([], 16)).Message);
        byte[] png = File.ReadAllBytes(Path.Combine(TestPaths.Fixture("tiny-maverick-mm"), "images", "a.png"));
        var e = Assert.Throws<ImageInputException>(() => ImageDecoder.Decode(png.AsSpan(0, png.Length / 2), 1 << 20));
        Assert.Contains("could not be decoded", e.Message);
    }

    [Fact]
    public void UnsupportedFormat_IsNamed()
    {
        byte[] bmp = Bmp(2, 2);
        var e = Assert.Throws<ImageInputException>(() => ImageDecoder.Decode(bmp, 16));
        Assert.Contains("not supported", e.Message);
    }

    private static byte[] Png(int width, int height, byte[] idat)
    {
        using var ms = new MemoryStream();
        ms.Write([0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]);
        var ihdr = new byte[13];
        BinaryPrimitives.WriteInt32BigEndian(ihdr, width);
        BinaryPrimitives.WriteInt32BigEndian(ihdr.AsSpan(4), height);
        ihdr[8] = 8;
        ihdr[9] = 2;
        Chunk(ms, "IHDR", ihdr);
        Chunk(ms, "IDAT", idat);
        Chunk(ms, "IEND", []);
        return ms.ToArray();
    }

    private static void Chunk(Stream s, string type, byte[] data)
    {
        Span<byte> len = stackalloc byte[4];
        BinaryPrimitives.WriteInt32BigEndian(len, data.Length);
        s.Write(len);
        byte[] typed = [.. System.Text.Encoding.ASCII.GetBytes(type), .. data];
        s.Write(typed);
        Span<byte> crc = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(crc, Crc32(typed));
        s.Write(crc);
    }

    private static uint Crc32(byte[] data)
    {
        uint crc = 0xFFFFFFFFu;
        foreach (byte b in data)
        {
            crc ^= b;
            for (int k = 0; k < 8; k++)
            {
                crc = (crc & 1) != 0 ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
            }
        }
        return ~crc;
    }

    // A 24-bit BMP: a format Skia decodes but the Llama 4 path does not accept.
    private static byte[] Bmp(int width, int height)
    {
        int row = ((width * 3) + 3) & ~3;
        var b = new byte[54 + (row * height)];
        b[0] = (byte)'B';
        b[1] = (byte)'M';
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(2), b.Length);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(10), 54);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(14), 40);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(18), width);
        BinaryPrimitives.WriteInt32LittleEndian(b.AsSpan(22), height);
        BinaryPrimitives.WriteInt16LittleEndian(b.AsSpan(26), 1);
        BinaryPrimitives.WriteInt16LittleEndian(b.AsSpan(28), 24);
        return b;
    }
}
