using Distributed.Coordinator.Serving;
using Distributed.Coordinator.Serving.Hosting;
using Distributed.Coordinator.Serving.Tokenization;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;

namespace Distributed.Coordinator.Tests.Serving.Api;

/// <summary>The real serve host (Kestrel on a loopback port chosen by the OS) over a scripted scheduler.</summary>
internal sealed class ApiTestServer : IAsyncDisposable
{
    private static readonly Lazy<Llama4Tokenizer> SharedTokenizer = new(() => Llama4Tokenizer.Load(TestPaths.Fixture("tiny-maverick")));
    private readonly WebApplication _app;

    private ApiTestServer(WebApplication app, IGenerationScheduler scheduler, HttpClient client)
    {
        _app = app;
        Scheduler = scheduler;
        Client = client;
    }

    public static Llama4Tokenizer Tokenizer => SharedTokenizer.Value;

    public IGenerationScheduler Scheduler { get; }

    public HttpClient Client { get; }

    public string BaseAddress => Client.BaseAddress!.ToString().TrimEnd('/');

    public string? Http2Address => ServeHost.Http2ListeningAddress(_app);

    public static async Task<ApiTestServer> StartAsync(IGenerationScheduler scheduler, Action<ServeOptions>? configure = null)
    {
        var options = new ServeOptions { ModelDirectory = TestPaths.Fixture("tiny-maverick"), Port = 0 };
        configure?.Invoke(options);
        var app = ServeHost.Build(options, Tokenizer, _ => scheduler, logging => logging.SetMinimumLevel(LogLevel.Warning));
        await app.StartAsync();
        var client = new HttpClient { BaseAddress = new Uri(ServeHost.ListeningAddress(app)), Timeout = TimeSpan.FromSeconds(60) };
        return new ApiTestServer(app, scheduler, client);
    }

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
