using Microsoft.Extensions.Options;

namespace Distributed.Coordinator.Serving.Images;

/// <summary>Limits and sources of image input (chat <c>image_url</c> parts, <c>infer --image</c>).</summary>
public sealed class ImageOptions
{
    /// <summary>Configuration section name.</summary>
    public const string SectionName = "Images";

    /// <summary>Most images in one request (<c>--max-images</c>). Default: 8.</summary>
    public int MaxImagesPerRequest { get; set; } = 8;

    /// <summary>
    /// Largest encoded image in bytes, after base64 decoding or as downloaded (<c>--max-image-bytes</c>). A data URL also
    /// counts against the request-body limit (<c>--max-request-bytes</c>), at 4/3 of this size. Default: 20 MiB.
    /// </summary>
    public long MaxImageBytes { get; set; } = 20L << 20;

    /// <summary>
    /// Most pixels (width × height) one image may decode to (<c>--max-image-pixels</c>), checked against the header before
    /// any pixel is decoded. Default: 40,000,000 (e.g. 8000 × 5000; 160 MB of RGBA while decoding).
    /// </summary>
    public long MaxImagePixels { get; set; } = 40_000_000;

    /// <summary>
    /// Most tiles of one image's canvas (<c>--max-image-tiles</c>; HF <c>max_patches</c>); a multi-tile image adds one
    /// global tile. Each tile is <c>(image_size / patch_size)² / 4</c> prompt tokens (144 for the releases). Default: 16.
    /// </summary>
    public int MaxImageTiles { get; set; } = 16;

    /// <summary>
    /// Remote images allowed (<c>--image-url-allow</c>, comma-separated): each entry either a host name (any http or
    /// https URL on that host, default port or not) or a URL prefix starting with <c>http://</c> or <c>https://</c>.
    /// Empty (the default): only <c>data:</c> URLs; a remote URL is refused without any connection. Redirects are not
    /// followed.
    /// </summary>
    public IList<string> UrlAllowList { get; set; } = [];

    /// <summary>Time limit for fetching one remote image, connection to last byte (<c>--image-fetch-timeout</c>). Default: 10 s.</summary>
    public TimeSpan FetchTimeout { get; set; } = TimeSpan.FromSeconds(10);
}

/// <summary>Checks every <see cref="ImageOptions"/> field; each failure names the option and its flag.</summary>
public sealed class ImageOptionsValidator : IValidateOptions<ImageOptions>
{
    /// <inheritdoc />
    public ValidateOptionsResult Validate(string? name, ImageOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var failures = new List<string>();
        if (options.MaxImagesPerRequest is < 0 or > 256)
        {
            failures.Add($"MaxImagesPerRequest (--max-images) must be in [0, 256] (0 refuses images), got {options.MaxImagesPerRequest}.");
        }
        if (options.MaxImageBytes is < 1024 or > 1L << 30)
        {
            failures.Add($"MaxImageBytes (--max-image-bytes) must be in [1024, {1L << 30}], got {options.MaxImageBytes}.");
        }
        if (options.MaxImagePixels is < 1 or > 1L << 30)
        {
            failures.Add($"MaxImagePixels (--max-image-pixels) must be in [1, {1L << 30}], got {options.MaxImagePixels}.");
        }
        if (options.MaxImageTiles is < 1 or > 64)
        {
            failures.Add($"MaxImageTiles (--max-image-tiles) must be in [1, 64], got {options.MaxImageTiles}.");
        }
        if (options.FetchTimeout <= TimeSpan.Zero || options.FetchTimeout > TimeSpan.FromMinutes(10))
        {
            failures.Add($"FetchTimeout (--image-fetch-timeout) must be more than 0 and at most 10 minutes, got {options.FetchTimeout}.");
        }
        foreach (string entry in options.UrlAllowList ?? [])
        {
            if (ImageSources.ParseAllowEntry(entry) is null)
            {
                failures.Add($"UrlAllowList (--image-url-allow) entry '{entry}' must be a host name or a URL prefix starting with http:// or https://.");
            }
        }
        return failures.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(failures);
    }
}
