using System.Net;
using System.Text;
using System.Text.Json;

namespace Distributed.Integration.Tests.Serving;

/// <summary>Minimal OpenAI client for the tests: JSON posts and server-sent-event streams parsed per the SSE rules.</summary>
internal static class SseClient
{
    public static StringContent Json(string json) => new(json, Encoding.UTF8, "application/json");

    public static async Task<(HttpStatusCode Status, JsonElement Body, HttpResponseMessage Response)> PostAsync(HttpClient client, string path, string json, CancellationToken ct = default)
    {
        var response = await client.PostAsync(path, Json(json), ct);
        string text = await response.Content.ReadAsStringAsync(ct);
        using var doc = JsonDocument.Parse(text);
        return (response.StatusCode, doc.RootElement.Clone(), response);
    }

    /// <summary>Posts a streaming request and returns the JSON events before <c>[DONE]</c> (asserting it came last).</summary>
    public static async Task<List<JsonElement>> StreamAsync(HttpClient client, string path, string json, CancellationToken ct = default)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, path)
        {
            Content = Json(json),
            Version = client.DefaultRequestVersion,
            VersionPolicy = client.DefaultVersionPolicy,
        };
        using var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct);
        Assert.Equal(client.DefaultRequestVersion, response.Version);
        if (response.StatusCode != HttpStatusCode.OK)
        {
            throw new HttpRequestException($"stream request failed: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync(ct)}", null, response.StatusCode);
        }
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType!.MediaType);
        var events = new List<string>();
        await foreach (var e in ReadEventsAsync(await response.Content.ReadAsStreamAsync(ct), ct))
        {
            events.Add(e);
        }
        Assert.Equal("[DONE]", events[^1]);
        return events.SkipLast(1).Select(e =>
        {
            using var doc = JsonDocument.Parse(e);
            return doc.RootElement.Clone();
        }).ToList();
    }

    /// <summary>The shared SSE parser (also used by the unit tests).</summary>
    public static IAsyncEnumerable<string> ReadEventsAsync(Stream body, CancellationToken ct = default) => SseTestReader.ReadEventsAsync(body, ct);

    public static int[] Ints(JsonElement array) => array.EnumerateArray().Select(e => e.GetInt32()).ToArray();
}
