using System.Text.Json;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving;
using Distributed.Kernels.Cpu;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Serving;

/// <summary>
/// The official <c>openai</c> npm client against <c>serve</c> on tiny-maverick with 2 workers (fp32 wire, so the logits
/// are bit-identical to the in-process engine's): <c>openai.test.mjs</c> exercises every parameter of issue #14,
/// stream and non-stream, and checks what a client can (stream = non-stream, n choices = separately seeded requests,
/// finish reasons, 400s); this test then checks every returned logprob against the engine: the log-softmax of the
/// engine's logits after the penalties, bias and min-tokens mask as vLLM defines them, over the temperature.
/// </summary>
[Trait("Category", "Integration")]
public sealed class OpenAiClientTests(OpenAiClientTests.TwoWorkerServer server, ITestOutputHelper output) : IClassFixture<OpenAiClientTests.TwoWorkerServer>
{
    internal const int DefaultMaxTokens = 24;
    private static readonly string ClientDirectory = NodeScript.OpenAiClientDirectory;

    [NodeClientFact]
    public async Task OfficialClient_EveryParameter_StreamAndNot_MatchesTheEngine()
    {
        ToolFactAttribute.Require(NodeClientFactAttribute.Missing());
        server.Serve.Output = output;
        string results = Path.Combine(Path.GetTempPath(), $"openai-client-{Guid.NewGuid():N}.json");
        try
        {
            var (code, _) = await NodeScript.RunAsync(ClientDirectory, ["openai.test.mjs", "--url", server.Serve.BaseAddress, "--model", ServeFixture.ModelId, "--out", results,
                "--default-max-tokens", DefaultMaxTokens.ToString(System.Globalization.CultureInfo.InvariantCulture)], TimeSpan.FromMinutes(5), output);
            Assert.True(code == 0, $"the openai client script failed (exit {code}); see its output above");
            using var doc = JsonDocument.Parse(await File.ReadAllBytesAsync(results));
            await CheckLogprobsAgainstEngineAsync(doc.RootElement.GetProperty("cases"));
        }
        finally
        {
            File.Delete(results);
        }
    }

    private async Task CheckLogprobsAgainstEngineAsync(JsonElement cases)
    {
        using var backend = new CpuKernelBackend();
        using var engine = Llama4Engine.Load(TestPaths.Fixture(ServeFixture.ModelId), backend);
        int vocab = engine.Config.VocabSize, checkedTokens = 0, checkedCases = 0;
        foreach (var c in cases.EnumerateArray())
        {
            var request = c.GetProperty("request");
            bool chat = c.GetProperty("kind").GetString() == "chat";
            int? top = chat
                ? request.TryGetProperty("logprobs", out var l) && l.GetBoolean() ? (request.TryGetProperty("top_logprobs", out var t) ? t.GetInt32() : 0) : null
                : request.TryGetProperty("logprobs", out var k) ? k.GetInt32() : null;
            if (top is null)
            {
                continue;
            }
            Assert.False(request.TryGetProperty("top_k", out _) || request.TryGetProperty("top_p", out _), "logprob cases use the full distribution");
            var sampling = Sampling(request);
            var stopIds = new HashSet<int>(request.TryGetProperty("stop_token_ids", out var s) ? s.EnumerateArray().Select(e => e.GetInt32()) : []);
            if (!(request.TryGetProperty("ignore_eos", out var ie) && ie.GetBoolean()))
            {
                stopIds.UnionWith(ServeFixture.Tokenizer.EosTokenIds);
                if (chat)
                {
                    stopIds.Add(ServeFixture.Tokenizer.EndOfTurnTokenId);
                }
            }
            var response = c.GetProperty("response");
            int[] prompt = SseClient.Ints(response.GetProperty("prompt_token_ids"));
            foreach (var choice in response.GetProperty("choices").EnumerateArray())
            {
                int[] tokens = SseClient.Ints(choice.GetProperty("token_ids"));
                var logprobs = choice.GetProperty("logprobs").EnumerateArray().ToArray();
                Assert.Equal(tokens.Length, logprobs.Length);
                float[] rows = await ReferenceLogits.AllRowsAsync(engine, [.. prompt, .. tokens]);
                for (int i = 0; i < tokens.Length; i++)
                {
                    var z = ReferenceLogits.Process(rows.AsSpan((prompt.Length - 1 + i) * vocab, vocab), sampling, prompt, tokens[..i], stopIds);
                    var expected = ReferenceLogits.LogSoftmax(z, sampling.Temperature);
                    string where = $"{c.GetProperty("name").GetString()} (stream {c.GetProperty("stream").GetBoolean()}) choice {choice.GetProperty("index").GetInt32()} token {i}";
                    double got = logprobs[i].GetProperty("logprob").GetDouble();
                    Assert.True(Math.Abs(expected[tokens[i]] - got) < 1e-4, $"{where}: logprob {got}, engine {expected[tokens[i]]}");
                    var expectedTop = expected.OrderByDescending(v => v).Take(top.Value).ToArray();
                    var gotTop = logprobs[i].GetProperty("top").EnumerateArray().Select(e => e.GetDouble()).ToArray();
                    if (chat)
                    {
                        Assert.Equal(expectedTop.Length, gotTop.Length);
                    }
                    else
                    {
                        // Legacy completions map token text → logprob: ids that decode to the same text (partial UTF-8
                        // characters) keep only the first, so the list is an in-order subsequence of the top k.
                        Assert.InRange(gotTop.Length, 1, expectedTop.Length);
                        expectedTop = [.. Subsequence(expectedTop, gotTop)];
                    }
                    for (int j = 0; j < gotTop.Length; j++)
                    {
                        Assert.True(Math.Abs(expectedTop[j] - gotTop[j]) < 1e-4, $"{where}: top logprob {j} is {gotTop[j]}, engine {expectedTop[j]}");
                    }
                    if (sampling.Temperature == 0)
                    {
                        Assert.Equal(Array.IndexOf(expected, expected.Max()), tokens[i]);
                    }
                    if (i < sampling.MinTokens)
                    {
                        Assert.DoesNotContain(tokens[i], stopIds);
                    }
                    checkedTokens++;
                }
            }
            checkedCases++;
        }
        output.WriteLine($"{checkedTokens} tokens of {checkedCases} responses checked against the engine's logits");
        Assert.True(checkedCases >= 10, $"only {checkedCases} responses carried logprobs");
    }

    /// <summary>The entries of <paramref name="expected"/> matched in order by <paramref name="got"/> (within 1e-4).</summary>
    private static IEnumerable<double> Subsequence(double[] expected, double[] got)
    {
        int e = 0;
        foreach (double g in got)
        {
            while (e < expected.Length && Math.Abs(expected[e] - g) >= 1e-4)
            {
                e++;
            }
            yield return e < expected.Length ? expected[e++] : double.NaN;
        }
    }

    private static SamplingParams Sampling(JsonElement r)
    {
        float F(string name, float fallback) => r.TryGetProperty(name, out var v) ? v.GetSingle() : fallback;
        var bias = r.TryGetProperty("logit_bias", out var b)
            ? b.EnumerateObject().ToDictionary(p => int.Parse(p.Name, System.Globalization.CultureInfo.InvariantCulture), p => p.Value.GetSingle())
            : null;
        return new SamplingParams(F("temperature", 1f))
        {
            PresencePenalty = F("presence_penalty", 0),
            FrequencyPenalty = F("frequency_penalty", 0),
            RepetitionPenalty = F("repetition_penalty", 1),
            LogitBias = bias,
            MinTokens = r.TryGetProperty("min_tokens", out var m) ? m.GetInt32() : 0,
        };
    }

    /// <summary>Runs where the client test can: node on PATH and the <c>openai</c> package installed (<c>npm ci</c>).</summary>
    public sealed class NodeClientFactAttribute : ToolFactAttribute
    {
        public NodeClientFactAttribute()
            : base(Missing())
        {
        }

        /// <summary>What the client test lacks here, or null.</summary>
        public static string? Missing() => NodeScript.OpenAiClientMissing("openai client test");
    }

    /// <summary><c>serve --local-workers 2 --wire fp32</c> on tiny-maverick with a small <c>--default-max-tokens</c>.</summary>
    public sealed class TwoWorkerServer : IAsyncLifetime
    {
        internal ServeProcess Serve { get; private set; } = null!;

        public async Task InitializeAsync() =>
            Serve = await ServeProcess.StartAsync(TestPaths.Fixture(ServeFixture.ModelId),
                ["--local-workers", "2", "--wire", "fp32", "--default-max-tokens", DefaultMaxTokens.ToString(System.Globalization.CultureInfo.InvariantCulture)]);

        public async Task DisposeAsync()
        {
            if (Serve is not null)
            {
                await Serve.DisposeAsync();
            }
        }
    }
}
