using System.Net;
using Distributed.Coordinator.Serving.Images;

namespace Distributed.Coordinator.Tests.Serving.Images;

/// <summary>Data URLs, the remote-URL allow-list, and the size and time limits of fetching.</summary>
[Trait("Category", "Unit")]
public sealed class ImageSourcesTests
{
    [Fact]
    public async Task DataUrl_DecodesBase64_AndRefusesMalformedOrOversized()
    {
        using var sources = new ImageSources(new ImageOptions { MaxImageBytes = 1024 });
        Assert.Equal(new byte[] { 1, 2, 3 }, await sources.LoadAsync("data:image/png;base64,AQID", CancellationToken.None));
        Assert.Contains("base64 data is malformed", (await Assert.ThrowsAsync<ImageInputException>(() => sources.LoadAsync("data:image/png;base64,@@@", CancellationToken.None))).Message);
        Assert.Contains("data:image/<type>;base64", (await Assert.ThrowsAsync<ImageInputException>(() => sources.LoadAsync("data:text/plain,hi", CancellationToken.None))).Message);
        string big = "data:image/png;base64," + Convert.ToBase64String(new byte[2000]);
        Assert.Contains("1024", (await Assert.ThrowsAsync<ImageInputException>(() => sources.LoadAsync(big, CancellationToken.None))).Message);
        Assert.Contains("data:image", (await Assert.ThrowsAsync<ImageInputException>(() => sources.LoadAsync("file:///etc/passwd", CancellationToken.None))).Message);
    }

    [Fact]
    public async Task RemoteUrl_WithoutAllowList_IsRefusedWithoutAnyConnection()
    {
        var handler = new StubHandler(_ => throw new InvalidOperationException("no connection may be made"));
        using var sources = new ImageSources(new ImageOptions(), handler);
        var e = await Assert.ThrowsAsync<ImageInputException>(() => sources.LoadAsync("http://127.0.0.1/x.png", CancellationToken.None));
        Assert.Contains("--image-url-allow", e.Message);
    }

    [Theory]
    [InlineData("images.example", "https://images.example/a.png", true)]
    [InlineData("images.example", "http://IMAGES.example:8080/a.png", true)]
    [InlineData("images.example", "https://images.example.evil/a.png", false)]
    [InlineData("https://cdn.example/pub/", "https://cdn.example/pub/x.png", true)]
    [InlineData("https://cdn.example/pub/", "https://cdn.example/private/x.png", false)]
    [InlineData("https://cdn.example", "https://cdn.example.evil/x.png", false)]
    public void AllowListRules_MatchHostsAndPrefixes(string entry, string url, bool allowed) =>
        Assert.Equal(allowed, ImageSources.ParseAllowEntry(entry)!.Allows(new Uri(url)));

    [Theory]
    [InlineData("")]
    [InlineData(" x.example")]
    [InlineData("ftp://x.example/")]
    [InlineData("https://x.example/?q=1")]
    [InlineData("not a host")]
    public void AllowListEntries_Malformed_AreRejected(string entry) => Assert.Null(ImageSources.ParseAllowEntry(entry));

    [Fact]
    public async Task AllowedFetch_ReturnsTheBytes_AndEnforcesStatusRedirectAndSize()
    {
        var handler = new StubHandler(request => request.RequestUri!.AbsolutePath switch
        {
            "/ok.png" => new HttpResponseMessage(HttpStatusCode.OK) { Content = new ByteArrayContent([9, 8, 7]) },
            "/moved.png" => new HttpResponseMessage(HttpStatusCode.Found) { Headers = { Location = new Uri("http://elsewhere/x.png") } },
            "/big.png" => new HttpResponseMessage(HttpStatusCode.OK) { Content = new ByteArrayContent(new byte[4096]) },
            _ => new HttpResponseMessage(HttpStatusCode.NotFound),
        });
        using var sources = new ImageSources(new ImageOptions { UrlAllowList = ["img.test"], MaxImageBytes = 1024 }, handler);
        Assert.Equal(new byte[] { 9, 8, 7 }, await sources.LoadAsync("http://img.test/ok.png", CancellationToken.None));
        Assert.Contains("HTTP 302 (redirects are not followed)", (await Assert.ThrowsAsync<ImageInputException>(() => sources.LoadAsync("http://img.test/moved.png", CancellationToken.None))).Message);
        Assert.Contains("HTTP 404", (await Assert.ThrowsAsync<ImageInputException>(() => sources.LoadAsync("http://img.test/none.png", CancellationToken.None))).Message);
        Assert.Contains("limit is 1024", (await Assert.ThrowsAsync<ImageInputException>(() => sources.LoadAsync("http://img.test/big.png", CancellationToken.None))).Message);
        Assert.Contains("not on this server's image URL allow-list",
            (await Assert.ThrowsAsync<ImageInputException>(() => sources.LoadAsync("http://other.test/ok.png", CancellationToken.None))).Message);
    }

    [Fact]
    public async Task SlowFetch_StopsAtTheTimeLimit()
    {
        var handler = new StubHandler(async (_, ct) =>
        {
            await Task.Delay(Timeout.Infinite, ct);
            return new HttpResponseMessage(HttpStatusCode.OK);
        });
        using var sources = new ImageSources(new ImageOptions { UrlAllowList = ["img.test"], FetchTimeout = TimeSpan.FromMilliseconds(200) }, handler);
        var e = await Assert.ThrowsAsync<ImageInputException>(() => sources.LoadAsync("http://img.test/slow.png", CancellationToken.None));
        Assert.Contains("longer than 0.2 s", e.Message);
    }

    [Fact]
    public void Options_DefaultsShouldNotChange_AndInvalidValuesAreNamed()
    {
        var o = new ImageOptions();
        Assert.Equal((8, 20L << 20, 40_000_000L, 16, TimeSpan.FromSeconds(10)), (o.MaxImagesPerRequest, o.MaxImageBytes, o.MaxImagePixels, o.MaxImageTiles, o.FetchTimeout));
        Assert.Empty(o.UrlAllowList);
        var validator = new ImageOptionsValidator();
        Assert.True(validator.Validate(null, o).Succeeded);
        foreach (var (bad, flag) in new (ImageOptions, string)[]
        {
            (new ImageOptions { MaxImagesPerRequest = -1 }, "--max-images"),
            (new ImageOptions { MaxImageBytes = 10 }, "--max-image-bytes"),
            (new ImageOptions { MaxImagePixels = 0 }, "--max-image-pixels"),
            (new ImageOptions { MaxImageTiles = 0 }, "--max-image-tiles"),
            (new ImageOptions { FetchTimeout = TimeSpan.Zero }, "--image-fetch-timeout"),
            (new ImageOptions { UrlAllowList = ["gopher://x"] }, "--image-url-allow"),
        })
        {
            var result = validator.Validate(null, bad);
            Assert.True(result.Failed);
            Assert.Contains(flag, result.FailureMessage, StringComparison.Ordinal);
        }
    }

    private sealed class StubHandler : HttpMessageHandler
    {
        private readonly Func<HttpRequestMessage, CancellationToken, Task<HttpResponseMessage>> _send;

        public StubHandler(Func<HttpRequestMessage, HttpResponseMessage> send) => _send = (r, _) => Task.FromResult(send(r));

        public StubHandler(Func<HttpRequestMessage, CancellationToken, Task<HttpResponseMessage>> send) => _send = send;

        protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken) => _send(request, cancellationToken);
    }
}
