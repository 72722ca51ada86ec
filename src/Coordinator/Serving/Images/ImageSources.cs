using System.Net;
using System.Net.Http.Headers;

namespace Distributed.Coordinator.Serving.Images;

/// <summary>One entry of <see cref="ImageOptions.UrlAllowList"/>: a host (any http/https URL on it) or a URL prefix.</summary>
/// <param name="Host">The host, lower case, when the entry is a host name.</param>
/// <param name="Prefix">The absolute URL prefix when the entry is one.</param>
public sealed record ImageUrlRule(string? Host, string? Prefix)
{
    /// <summary>True when <paramref name="url"/> (absolute http or https) is allowed by this rule.</summary>
    public bool Allows(Uri url) => Host is not null
        ? string.Equals(url.IdnHost, Host, StringComparison.OrdinalIgnoreCase)
        : url.AbsoluteUri.StartsWith(Prefix!, StringComparison.OrdinalIgnoreCase);
}

/// <summary>
/// Turns an image URL of a request into its encoded bytes: <c>data:image/...;base64,...</c> URLs are decoded in place;
/// <c>http(s)</c> URLs are fetched only when <see cref="ImageOptions.UrlAllowList"/> allows them, without following
/// redirects, within <see cref="ImageOptions.FetchTimeout"/> and <see cref="ImageOptions.MaxImageBytes"/>. Every failure
/// is an <see cref="ImageInputException"/> saying why; nothing else is affected. Thread-safe.
/// </summary>
public sealed class ImageSources : IDisposable
{
    private readonly ImageOptions _options;
    private readonly ImageUrlRule[] _rules;
    private readonly HttpClient? _http;
    private readonly TimeProvider _time;

    /// <summary>Creates the loader; <paramref name="handler"/> replaces the HTTP handler (tests).</summary>
    /// <exception cref="ArgumentException">An allow-list entry is neither a host name nor an http(s) URL prefix.</exception>
    public ImageSources(ImageOptions options, HttpMessageHandler? handler = null, TimeProvider? time = null)
    {
        _options = options ?? throw new ArgumentNullException(nameof(options));
        _time = time ?? TimeProvider.System;
        _rules = [.. (options.UrlAllowList ?? []).Select(e => ParseAllowEntry(e)
            ?? throw new ArgumentException($"Images:UrlAllowList entry '{e}' must be a host name or a URL prefix starting with http:// or https://"))];
        if (_rules.Length > 0)
        {
            _http = new HttpClient(handler ?? new SocketsHttpHandler { AllowAutoRedirect = false, UseCookies = false, AutomaticDecompression = DecompressionMethods.None },
                disposeHandler: true)
            {
                Timeout = Timeout.InfiniteTimeSpan,
                MaxResponseContentBufferSize = Math.Max(1, options.MaxImageBytes),
            };
        }
    }

    /// <summary>Parses one allow-list entry, or returns null when it is neither a host name nor an http(s) URL prefix.</summary>
    public static ImageUrlRule? ParseAllowEntry(string? entry)
    {
        if (string.IsNullOrWhiteSpace(entry) || entry.Trim() != entry)
        {
            return null;
        }
        if (entry.StartsWith("http://", StringComparison.OrdinalIgnoreCase) || entry.StartsWith("https://", StringComparison.OrdinalIgnoreCase))
        {
            return Uri.TryCreate(entry, UriKind.Absolute, out var prefix) && prefix.Host.Length > 0 && prefix.Query.Length == 0 && prefix.Fragment.Length == 0
                ? new ImageUrlRule(null, prefix.AbsoluteUri)
                : null;
        }
        return Uri.CheckHostName(entry) is UriHostNameType.Dns or UriHostNameType.IPv4 or UriHostNameType.IPv6
            ? new ImageUrlRule(entry.ToLowerInvariant(), null)
            : null;
    }

    /// <summary>The encoded image named by <paramref name="url"/>.</summary>
    /// <exception cref="ImageInputException">Malformed or unsupported URL, a remote URL not allowed, a failed or slow fetch, or too many bytes.</exception>
    public async Task<byte[]> LoadAsync(string url, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(url);
        if (url.StartsWith("data:", StringComparison.OrdinalIgnoreCase))
        {
            return DecodeDataUrl(url);
        }
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
        {
            throw new ImageInputException("the url must be a data:image/...;base64 URL, or an http(s) URL the server allows");
        }
        if (_http is null || !_rules.Any(r => r.Allows(uri)))
        {
            throw new ImageInputException(_rules.Length == 0
                ? "remote image URLs are not enabled on this server (--image-url-allow); send the image as a data: URL"
                : $"the host or URL {uri.GetLeftPart(UriPartial.Path)} is not on this server's image URL allow-list");
        }
        return await FetchAsync(uri, cancellationToken).ConfigureAwait(false);
    }

    private byte[] DecodeDataUrl(string url)
    {
        int comma = url.IndexOf(',', StringComparison.Ordinal);
        if (comma < 0)
        {
            throw new ImageInputException("the data URL has no ',' before its data");
        }
        string header = url[5..comma];
        if (!header.StartsWith("image/", StringComparison.OrdinalIgnoreCase) || !header.EndsWith(";base64", StringComparison.OrdinalIgnoreCase))
        {
            throw new ImageInputException($"the data URL must be data:image/<type>;base64,<data>, got 'data:{Truncate(header)}'");
        }
        var payload = url.AsSpan(comma + 1);
        long maxChars = ((_options.MaxImageBytes + 2) / 3 * 4) + 4;
        if (payload.Length > maxChars)
        {
            throw new ImageInputException($"the image is larger than the {_options.MaxImageBytes}-byte limit (--max-image-bytes)");
        }
        var bytes = new byte[(payload.Length / 4 * 3) + 3];
        if (!Convert.TryFromBase64Chars(payload, bytes, out int written))
        {
            throw new ImageInputException("the data URL's base64 data is malformed");
        }
        if (written > _options.MaxImageBytes)
        {
            throw new ImageInputException($"the image is {written} bytes; the limit is {_options.MaxImageBytes} (--max-image-bytes)");
        }
        return bytes.AsSpan(0, written).ToArray();
    }

    private async Task<byte[]> FetchAsync(Uri uri, CancellationToken cancellationToken)
    {
        using var timeout = new CancellationTokenSource(_options.FetchTimeout, _time);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, timeout.Token);
        try
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, uri);
            request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("image/*"));
            using var response = await _http!.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, linked.Token).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                throw new ImageInputException($"fetching the image returned HTTP {(int)response.StatusCode}{((int)response.StatusCode is >= 300 and < 400 ? " (redirects are not followed)" : "")}");
            }
            if (response.Content.Headers.ContentLength is long declared && declared > _options.MaxImageBytes)
            {
                throw new ImageInputException($"the image is {declared} bytes; the limit is {_options.MaxImageBytes} (--max-image-bytes)");
            }
            await using var stream = await response.Content.ReadAsStreamAsync(linked.Token).ConfigureAwait(false);
            using var buffer = new MemoryStream();
            var chunk = new byte[81920];
            int read;
            while ((read = await stream.ReadAsync(chunk, linked.Token).ConfigureAwait(false)) > 0)
            {
                if (buffer.Length + read > _options.MaxImageBytes)
                {
                    throw new ImageInputException($"the image is larger than the {_options.MaxImageBytes}-byte limit (--max-image-bytes)");
                }
                buffer.Write(chunk, 0, read);
            }
            return buffer.ToArray();
        }
        catch (OperationCanceledException) when (timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            throw new ImageInputException($"fetching the image took longer than {_options.FetchTimeout.TotalSeconds:0.###} s (--image-fetch-timeout)");
        }
        catch (HttpRequestException ex)
        {
            throw new ImageInputException($"fetching the image failed: {ex.Message}", ex);
        }
    }

    private static string Truncate(string s) => s.Length <= 40 ? s : s[..40] + "...";

    /// <inheritdoc />
    public void Dispose() => _http?.Dispose();
}
