using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Distributed.Integration.Tests.Serving;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Vision;

/// <summary>
/// A real <c>serve</c> process on tiny-maverick-mm with images: data URLs, a remote URL on the allow-list (a loopback
/// image server), refusals that name the part while other requests go on, image tokens in usage, and the official
/// <c>openai</c> npm client streaming an answer about a PNG.
/// </summary>
[Trait("Category", "Integration")]
public sealed class VisionServeTests(VisionServeTests.Fixture fixture, ITestOutputHelper output) : IClassFixture<VisionServeTests.Fixture>
{
    private static readonly string ClientDirectory = NodeScript.OpenAiClientDirectory;
    private static readonly string Images = Path.Combine(TestPaths.Fixture(VisionGolden.FixtureName), "images");

    private static string DataUrl(string file) => "data:image/png;base64," + Convert.ToBase64String(File.ReadAllBytes(Path.Combine(Images, file)));

    private static string Chat(params string[] parts) =>
        """{"model":"tiny-maverick-mm","max_tokens":4,"temperature":0,"return_token_ids":true,"messages":[{"role":"user","content":["""
        + string.Join(",", parts) + "]}]}";

    private static string Text(string text) => """{"type":"text","text":""" + JsonSerializer.Serialize(text) + "}";

    private static string Image(string url) => """{"type":"image_url","image_url":{"url":""" + JsonSerializer.Serialize(url) + "}}";

    [Fact]
    public async Task DataUrlPng_IsExpandedIntoItsImageBlock_AndCountedInUsage()
    {
        fixture.Serve.Output = output;
        var (status, body, _) = await SseClient.PostAsync(fixture.Client, "/v1/chat/completions", Chat(Text("Look: "), Image(DataUrl("b.png"))));
        Assert.Equal(HttpStatusCode.OK, status);
        int[] prompt = SseClient.Ints(body.GetProperty("choices")[0].GetProperty("prompt_token_ids"));
        // b.png (112x56): 1 x 2 tiles + global tile, 4 <|patch|> per tile.
        int[] block = [502, 504, 504, 504, 504, 505, 504, 504, 504, 504, 506, 508, 504, 504, 504, 504, 503];
        Assert.True(Contains(prompt, block), $"prompt [{string.Join(",", prompt)}] lacks the image block");
        Assert.Equal(prompt.Length, body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());

        var (_, plain, _) = await SseClient.PostAsync(fixture.Client, "/v1/chat/completions", Chat(Text("Look: ")));
        Assert.Equal(plain.GetProperty("usage").GetProperty("prompt_tokens").GetInt32() + block.Length, prompt.Length);
    }

    [Fact]
    public async Task RemoteUrl_OnTheAllowList_IsFetched_OthersAreRefused()
    {
        fixture.Serve.Output = output;
        var (ok, body, _) = await SseClient.PostAsync(fixture.Client, "/v1/chat/completions", Chat(Image($"{fixture.ImageServer}/images/a.png")));
        Assert.Equal(HttpStatusCode.OK, ok);
        Assert.True(Contains(SseClient.Ints(body.GetProperty("choices")[0].GetProperty("prompt_token_ids")), [502, 508, 504, 504, 504, 504, 503]));

        var (denied, error, _) = await SseClient.PostAsync(fixture.Client, "/v1/chat/completions", Chat(Text("x"), Image($"{fixture.ImageServer}/private/a.png")));
        Assert.Equal(HttpStatusCode.BadRequest, denied);
        Assert.Equal("messages[0].content[1]", error.GetProperty("error").GetProperty("param").GetString());
        Assert.Contains("allow-list", error.GetProperty("error").GetProperty("message").GetString());
        Assert.Equal(0, fixture.PrivateHits);

        var (missing, error404, _) = await SseClient.PostAsync(fixture.Client, "/v1/chat/completions", Chat(Image($"{fixture.ImageServer}/images/none.png")));
        Assert.Equal(HttpStatusCode.BadRequest, missing);
        Assert.Contains("HTTP 404", error404.GetProperty("error").GetProperty("message").GetString());
    }

    [Fact]
    public async Task BadImages_Get400NamingThePart_WhileAnotherRequestCompletes()
    {
        fixture.Serve.Output = output;
        var good = SseClient.StreamAsync(fixture.Client, "/v1/chat/completions",
            Chat(Image(DataUrl("c.png"))).Replace("\"max_tokens\":4", "\"max_tokens\":8,\"stream\":true", StringComparison.Ordinal));
        string truncated = "data:image/png;base64," + Convert.ToBase64String(File.ReadAllBytes(Path.Combine(Images, "a.png")).AsSpan(0, 200));
        foreach (var (request, param, text) in new[]
        {
            (Chat(Text("a"), Image("data:image/png;base64,bm90IGFuIGltYWdl")), "messages[0].content[1]", "not an image in a supported format"),
            (Chat(Image(truncated)), "messages[0].content[0]", "could not be decoded"),
            (Chat(Image("data:text/plain;base64,AAAA")), "messages[0].content[0]", "data:image/<type>;base64"),
            (Chat(Image(DataUrl("a.png")), Image(DataUrl("a.png")), Image(DataUrl("a.png"))), "messages[0].content[2]", "the limit is 2"),
        })
        {
            var (status, error, _) = await SseClient.PostAsync(fixture.Client, "/v1/chat/completions", request);
            Assert.Equal(HttpStatusCode.BadRequest, status);
            Assert.Equal(param, error.GetProperty("error").GetProperty("param").GetString());
            Assert.Contains(text, error.GetProperty("error").GetProperty("message").GetString());
        }
        var events = await good;
        Assert.Equal("length", events.Last(e => e.GetProperty("choices").GetArrayLength() > 0).GetProperty("choices")[0].GetProperty("finish_reason").GetString());
    }

    [OpenAiClientFact]
    public async Task OfficialOpenAiClient_SendsAPngDataUrl_AndStreamsAnAnswer()
    {
        ToolFactAttribute.Require(OpenAiClientFactAttribute.Missing());
        fixture.Serve.Output = output;
        var (code, stdout) = await NodeScript.RunAsync(ClientDirectory,
            ["chat-image.test.mjs", "--url", fixture.Serve.BaseAddress, "--model", "tiny-maverick-mm", "--image", Path.Combine(Images, "b.png")],
            TimeSpan.FromMinutes(2), output);
        Assert.Equal(0, code);
        using var report = JsonDocument.Parse(stdout.Trim().Split('\n')[^1]);
        Assert.Equal("length", report.RootElement.GetProperty("finish").GetString());
        Assert.Equal(6, report.RootElement.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    private static bool Contains(int[] haystack, int[] needle)
    {
        for (int i = 0; i + needle.Length <= haystack.Length; i++)
        {
            if (haystack.AsSpan(i, needle.Length).SequenceEqual(needle))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>Node and the openai package installed (<c>npm ci --prefix tests/Integration.Tests/Serving/openai-client</c>; .ci/run does it).</summary>
    public sealed class OpenAiClientFactAttribute : ToolFactAttribute
    {
        public OpenAiClientFactAttribute()
            : base(Missing())
        {
        }

        public static string? Missing() => NodeScript.OpenAiClientMissing("openai client image test");
    }

    /// <summary>
    /// A loopback image server (<c>/images/*.png</c> from the fixture, <c>/private/*</c> counted: it must never be hit)
    /// and one <c>serve</c> on tiny-maverick-mm allowing only <c>{server}/images/</c>, at most 2 images a request.
    /// </summary>
    public sealed class Fixture : IAsyncLifetime
    {
        private readonly HttpListener _listener = new();
        private readonly CancellationTokenSource _stop = new();
        private Task? _serving;
        private int _privateHits;

        internal ServeProcess Serve { get; private set; } = null!;

        internal HttpClient Client { get; private set; } = null!;

        public string ImageServer { get; private set; } = "";

        public int PrivateHits => Volatile.Read(ref _privateHits);

        public async Task InitializeAsync()
        {
            var probe = new TcpListener(IPAddress.Loopback, 0);
            probe.Start();
            int port = ((IPEndPoint)probe.LocalEndpoint).Port;
            probe.Stop();
            ImageServer = $"http://127.0.0.1:{port}";
            _listener.Prefixes.Add(ImageServer + "/");
            _listener.Start();
            _serving = Task.Run(ServeImagesAsync);
            Serve = await ServeProcess.StartAsync(TestPaths.Fixture(VisionGolden.FixtureName),
                ["--threads", "1", "--telemetry", "off", "--max-images", "2", "--image-url-allow", $"{ImageServer}/images/", "--image-fetch-timeout", "20"]);
            Client = new HttpClient { BaseAddress = new Uri(Serve.BaseAddress), Timeout = TimeSpan.FromMinutes(2) };
        }

        private async Task ServeImagesAsync()
        {
            while (!_stop.IsCancellationRequested)
            {
                HttpListenerContext context;
                try
                {
                    context = await _listener.GetContextAsync();
                }
                catch (Exception) when (_stop.IsCancellationRequested)
                {
                    return;
                }
                string path = context.Request.Url!.AbsolutePath;
                string file = Path.Combine(Images, Path.GetFileName(path));
                if (path.StartsWith("/private/", StringComparison.Ordinal))
                {
                    Interlocked.Increment(ref _privateHits);
                }
                if (path.StartsWith("/images/", StringComparison.Ordinal) && File.Exists(file))
                {
                    byte[] bytes = await File.ReadAllBytesAsync(file);
                    context.Response.ContentType = "image/png";
                    context.Response.ContentLength64 = bytes.Length;
                    await context.Response.OutputStream.WriteAsync(bytes);
                }
                else
                {
                    context.Response.StatusCode = 404;
                }
                context.Response.Close();
            }
        }

        public async Task DisposeAsync()
        {
            Client?.Dispose();
            if (Serve is not null)
            {
                await Serve.DisposeAsync();
            }
            await _stop.CancelAsync();
            _listener.Stop();
            if (_serving is not null)
            {
                await _serving.WaitAsync(TimeSpan.FromSeconds(10));
            }
            _listener.Close();
            _stop.Dispose();
        }
    }
}
