using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace Distributed.Benchmarks.Load;

/// <summary>
/// The shared-system-prompt workload of issue #14 against two <c>serve</c> processes started in the same run, one with
/// the prefix cache off (the baseline) and one with it on: per round, a fresh random prefix (the "system prompt") and
/// N requests = that prefix + their own suffix, sent by C concurrent streaming clients, greedy. Rounds alternate which
/// server goes first. Prints TTFT and throughput of both and their ratio per round and as the median, the prefix-cache
/// hit rate the server reports in <c>/metrics</c>, and checks every request's tokens are identical with the cache on
/// and off (exit 1 otherwise).
/// </summary>
internal static partial class PrefixCacheBenchmark
{
    private const string UsageText = """
        usage: Distributed.Benchmarks prefix-cache [--model DIR] [--requests 32] [--prefix-tokens 200] [--suffix-tokens 16] [--max-tokens 32]
                                                   [--clients 8] [--rounds 5] [--serve-args "ARGS"]
        """;

    public static int Run(string[] args) => RunAsync(args).GetAwaiter().GetResult();

    private static async Task<int> RunAsync(string[] args)
    {
        var o = new Dictionary<string, string>(StringComparer.Ordinal);
        for (int i = 1; i < args.Length; i++)
        {
            if (!args[i].StartsWith("--", StringComparison.Ordinal) || i + 1 >= args.Length)
            {
                Console.Error.WriteLine($"error: bad argument '{args[i]}'\n{UsageText}");
                return 2;
            }
            o[args[i][2..]] = args[++i];
        }
        int Int(string name, int fallback) => o.TryGetValue(name, out var v) ? int.Parse(v, CultureInfo.InvariantCulture) : fallback;
        string model = o.GetValueOrDefault("model") ?? FindFixture("tiny-maverick");
        int requests = Int("requests", 32), prefix = Int("prefix-tokens", 200), suffix = Int("suffix-tokens", 16), maxTokens = Int("max-tokens", 32);
        int clients = Int("clients", 8), rounds = Int("rounds", 5);
        string[] serveArgs = (o.GetValueOrDefault("serve-args") ?? "").Split(' ', StringSplitOptions.RemoveEmptyEntries);
        string coordinator = Path.Combine(AppContext.BaseDirectory, "Distributed.Coordinator.dll");

        var servers = new List<(string Name, ServeProcessHandle Server, HttpClient Client)>();
        try
        {
            foreach (var (name, flag) in new[] { ("cache off", "off"), ("cache on", "on") })
            {
                var all = new List<string> { "--model", model, "--max-queue", "4096", "--prefix-caching", flag };
                all.AddRange(serveArgs);
                Console.Error.WriteLine($"[{name}] starting serve {string.Join(' ', all)}");
                var server = await ServeProcessHandle.StartAsync(coordinator, all, TimeSpan.FromMinutes(5)).ConfigureAwait(false);
                var client = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 1024 }) { BaseAddress = new Uri(server.BaseAddress), Timeout = TimeSpan.FromMinutes(30) };
                servers.Add((name, server, client));
            }
            string modelId = await ModelIdAsync(servers[0].Client).ConfigureAwait(false);
            var (bos, vocab) = await VocabLimitAsync(servers[0].Client, modelId).ConfigureAwait(false);
            foreach (var (name, _, client) in servers)
            {
                // Warm-up with a prefix of its own (JIT, page faults, connections), so the measured prefixes start cold.
                await RunRoundAsync(client, Workload(new Random(1), Math.Min(8, requests), prefix, suffix, bos, vocab), modelId, maxTokens, clients).ConfigureAwait(false);
                Console.Error.WriteLine($"[{name}] warmed up");
            }
            var inv = CultureInfo.InvariantCulture;
            Console.WriteLine($"prefix-cache: {requests} requests per round sharing a {prefix}-token prefix (+ {suffix} own tokens each), max_tokens {maxTokens}, greedy, streaming, {clients} concurrent clients, {rounds} rounds (order alternating), {Environment.ProcessorCount} CPUs shared by client and servers");
            Console.WriteLine();
            Console.WriteLine("| round | TTFT mean off (ms) | TTFT mean on (ms) | TTFT p50 off | TTFT p50 on | TTFT ratio off/on | output tok/s off | output tok/s on | throughput ratio on/off | prefix hit rate (on) | identical tokens |");
            Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|");
            var ttftRatios = new List<double>();
            var throughputRatios = new List<double>();
            bool allIdentical = true;
            for (int round = 0; round < rounds; round++)
            {
                var workload = Workload(new Random(1000 + round), requests, prefix, suffix, bos, vocab);
                var results = new RoundResult[2];
                var (hit0, query0) = await PrefixCountersAsync(servers[1].Client).ConfigureAwait(false);
                foreach (int k in round % 2 == 0 ? new[] { 0, 1 } : [1, 0])
                {
                    results[k] = await RunRoundAsync(servers[k].Client, workload, modelId, maxTokens, clients).ConfigureAwait(false);
                }
                var (hit1, query1) = await PrefixCountersAsync(servers[1].Client).ConfigureAwait(false);
                bool identical = results[0].Tokens.Zip(results[1].Tokens).All(p => p.First.SequenceEqual(p.Second));
                allIdentical &= identical;
                double ttftRatio = results[0].TtftMean / results[1].TtftMean, tputRatio = results[1].TokensPerSecond / results[0].TokensPerSecond;
                ttftRatios.Add(ttftRatio);
                throughputRatios.Add(tputRatio);
                Console.WriteLine(string.Format(inv, "| {0} | {1:F2} | {2:F2} | {3:F2} | {4:F2} | {5:F2}x | {6:F1} | {7:F1} | {8:F2}x | {9:P1} | {10} |", round + 1,
                    results[0].TtftMean, results[1].TtftMean, results[0].TtftP50, results[1].TtftP50, ttftRatio, results[0].TokensPerSecond, results[1].TokensPerSecond,
                    tputRatio, query1 > query0 ? (double)(hit1 - hit0) / (query1 - query0) : 0, identical ? "yes" : "NO"));
            }
            Console.WriteLine();
            Console.WriteLine(string.Format(inv, "median over rounds: TTFT {0:F2}x lower with the cache, throughput {1:F2}x; tokens identical in every request: {2}",
                Median([.. ttftRatios]), Median([.. throughputRatios]), allIdentical ? "yes" : "NO"));
            return allIdentical ? 0 : 1;
        }
        finally
        {
            foreach (var (_, server, client) in servers)
            {
                client.Dispose();
                await server.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    private static int[][] Workload(Random rng, int requests, int prefix, int suffix, int bos, int vocab)
    {
        int[] shared = [bos, .. Enumerable.Range(0, prefix - 1).Select(_ => rng.Next(vocab))];
        return [.. Enumerable.Range(0, requests).Select(_ => (int[])[.. shared, .. Enumerable.Range(0, suffix).Select(_ => rng.Next(vocab))])];
    }

    private sealed record RoundResult(double TtftMean, double TtftP50, double TokensPerSecond, int[][] Tokens);

    private static async Task<RoundResult> RunRoundAsync(HttpClient client, int[][] prompts, string modelId, int maxTokens, int clients)
    {
        var ttft = new double[prompts.Length];
        var tokens = new int[prompts.Length][];
        int next = -1;
        long start = Stopwatch.GetTimestamp();
        await Task.WhenAll(Enumerable.Range(0, clients).Select(async _ =>
        {
            int i;
            while ((i = Interlocked.Increment(ref next)) < prompts.Length)
            {
                string body = $$"""{"model":"{{modelId}}","prompt":[{{string.Join(",", prompts[i])}}],"max_tokens":{{maxTokens}},"temperature":0,"stream":true,"return_token_ids":true}""";
                (ttft[i], tokens[i]) = await StreamOneAsync(client, body).ConfigureAwait(false);
            }
        })).ConfigureAwait(false);
        double wall = Stopwatch.GetElapsedTime(start).TotalSeconds;
        return new RoundResult(ttft.Average(), Median(ttft), tokens.Sum(t => t.Length) / wall, tokens);
    }

    private static async Task<(double TtftMs, int[] Tokens)> StreamOneAsync(HttpClient client, string body)
    {
        var (t0, arrivals, ids) = await ServingLoadBenchmark.StreamTokensAsync(client, body).ConfigureAwait(false);
        return (arrivals.Count == 0 ? double.NaN : (arrivals[0] - t0) * 1000.0 / Stopwatch.Frequency, [.. ids]);
    }

    private static async Task<(long Hit, long Queried)> PrefixCountersAsync(HttpClient client)
    {
        string text = await client.GetStringAsync("/metrics").ConfigureAwait(false);
        long Read(Regex r) => r.Match(text) is { Success: true } m ? (long)double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) : 0;
        return (Read(HitTokens()), Read(QueriedTokens()));
    }

    [GeneratedRegex(@"^moe_prefix_cache_hit_tokens_total(?:\{[^}]*\})? (\S+)", RegexOptions.Multiline)]
    private static partial Regex HitTokens();

    [GeneratedRegex(@"^moe_prefix_cache_queried_tokens_total(?:\{[^}]*\})? (\S+)", RegexOptions.Multiline)]
    private static partial Regex QueriedTokens();

    private static async Task<string> ModelIdAsync(HttpClient client)
    {
        using var doc = JsonDocument.Parse(await client.GetStringAsync("/v1/models").ConfigureAwait(false));
        return doc.RootElement.GetProperty("data")[0].GetProperty("id").GetString()!;
    }

    /// <summary>The BOS id, and a bound below the special tokens for random ordinary ids (asked through /tokenize).</summary>
    private static async Task<(int Bos, int Limit)> VocabLimitAsync(HttpClient client, string modelId)
    {
        var response = await client.PostAsync("/tokenize", new StringContent($$"""{"model":"{{modelId}}","prompt":"<|begin_of_text|>","add_special_tokens":false}""", Encoding.UTF8, "application/json")).ConfigureAwait(false);
        using var doc = JsonDocument.Parse(await response.Content.ReadAsStringAsync().ConfigureAwait(false));
        // The special tokens of Llama 4 tokenizers come after the ordinary ones; stay 16 below the BOS id to avoid them.
        int bos = doc.RootElement.GetProperty("tokens")[0].GetInt32();
        return (bos, Math.Max(16, bos - 16));
    }

    private static double Median(double[] values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length == 0 ? double.NaN : sorted[sorted.Length / 2];
    }

    private static string FindFixture(string name)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Distributed.sln")))
            {
                return Path.Combine(dir.FullName, "tests", "fixtures", name);
            }
        }
        throw new ArgumentException("--model not given and no Distributed.sln above the benchmark binary");
    }
}
