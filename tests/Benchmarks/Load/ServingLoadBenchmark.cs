using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;

namespace Distributed.Benchmarks.Load;

/// <summary>
/// Load benchmark of the <c>serve</c> command: N concurrent streaming clients (each sending its requests one after
/// another) against a real server process, for every server configuration given (in-process experts first, as the
/// baseline, then e.g. 2 local workers), in one run. Reports requests/s, output tokens/s, time to first token and
/// inter-token latency (p50/p99) as a Markdown table, plus each configuration's throughput relative to the baseline.
/// </summary>
internal static class ServingLoadBenchmark
{
    private const string UsageText = """
        usage: Distributed.Benchmarks serving-load [--model DIR] [--clients 1,8,32] [--requests N] [--prompt-tokens 32] [--max-tokens 64]
                                                  [--config NAME=SERVE_ARGS]... [--warmup 64] [--repeat 3] [--interleave ROUNDS]
          --requests N   requests per concurrency level and run (default max(32, 4 x clients))
          --repeat N     runs per level; the run with the median output tokens/s is reported
          --interleave R all configurations' servers run at once and take turns: R rounds per level, each round one run
                         per configuration (order reversed every other round); reports each configuration's median
                         per-round ratio to the baseline (and its quartiles), which cancels the machine's drift. For
                         differences of a few percent (e.g. --config "off=--telemetry off" --config "on=").
          --config       a server configuration; repeatable; the first is the baseline. Default: inproc= (in-process experts).
                         Example: --config "inproc=" --config "workers2=--local-workers 2"
          --delays D,..  (issue #15) start --delay-workers static-shard ExpertWorkers (default 2) with a DelayRelay per worker
                         and delay (one-way µs); every configuration after the first runs once per delay against them
                         (--workers through the relays, inline rows), interleaved (R = --interleave, else --repeat), and
                         a second table gives the share of the added delay hidden, from tokens/s:
                         1 - (clients/tok_s(d) - clients/tok_s(d0)) / (MoE layers x 2d), median of rounds.
                         Example: --delays 0,50,200 --config "inproc=" --config "pp-off=--micro-batch off" --config "pp-on=--micro-batch 8"
        """;

    public static int Run(string[] args) => RunAsync(args).GetAwaiter().GetResult();

    private static async Task<int> RunAsync(string[] args)
    {
        Settings settings;
        try
        {
            settings = Settings.Parse(args.Skip(1).ToArray());
        }
        catch (ArgumentException ex)
        {
            Console.Error.WriteLine($"error: {ex.Message}");
            Console.Error.WriteLine(UsageText);
            return 2;
        }
        string coordinator = Path.Combine(AppContext.BaseDirectory, "Distributed.Coordinator.dll");
        Console.Error.WriteLine($"serving-load: model {settings.Model}, clients {string.Join(",", settings.Clients)}, prompt {settings.PromptTokens} tokens, max_tokens {settings.MaxTokens}, {Environment.ProcessorCount} CPUs (client and server share them)");

        if (settings.Delays is { } delays)
        {
            await using var workers = await DataPlane.DelayedWorkers.StartAsync(settings.Model, settings.DelayWorkers, delays, _ => { }).ConfigureAwait(false);
            var expanded = new List<(string Name, string[] Args)> { settings.Configs[0] };
            settings.DelayOf.Add(null);
            foreach (var (name, serveArgs) in settings.Configs.Skip(1))
            {
                foreach (int d in delays)
                {
                    expanded.Add(($"{name}@{d}us", [.. serveArgs, "--workers", string.Join(",", workers.Addresses(d)), "--Distribution:PreferSharedMemory", "false"]));
                    settings.DelayOf.Add((name, d));
                }
            }
            settings.Configs.Clear();
            settings.Configs.AddRange(expanded);
            using (var checkpoint = Distributed.Checkpoint.CheckpointReader.Open(settings.Model))
            {
                settings.MoeLayers = checkpoint.Config.MoeLayers.Count;
            }
            await RunInterleavedAsync(coordinator, settings).ConfigureAwait(false);
            return 0;
        }
        if (settings.Interleave > 0)
        {
            await RunInterleavedAsync(coordinator, settings).ConfigureAwait(false);
            return 0;
        }
        var results = new List<(string Config, LevelResult Level)>();
        foreach (var (name, serveArgs) in settings.Configs)
        {
            var allArgs = new List<string> { "--model", settings.Model, "--max-queue", "4096" };
            allArgs.AddRange(serveArgs);
            Console.Error.WriteLine($"[{name}] starting serve {string.Join(' ', allArgs)}");
            await using var server = await ServeProcessHandle.StartAsync(coordinator, allArgs, TimeSpan.FromMinutes(5)).ConfigureAwait(false);
            using var client = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 1024, PooledConnectionIdleTimeout = TimeSpan.FromMinutes(5) })
            {
                BaseAddress = new Uri(server.BaseAddress),
                Timeout = TimeSpan.FromMinutes(10),
            };
            string modelId = await ModelIdAsync(client).ConfigureAwait(false);
            var rng = new Random(2024);
            // Warm-up: JIT, page faults of the memory-mapped weights, connection pool.
            await RunLevelAsync(client, modelId, settings, Math.Min(8, settings.Clients.Max()), settings.Warmup, rng).ConfigureAwait(false);
            foreach (int clients in settings.Clients)
            {
                int requests = settings.Requests ?? Math.Max(32, 4 * clients);
                // This box is noisy (client and server share 2 CPUs): each level runs --repeat times and the run with
                // the median output tokens/s is reported, whole (its latencies included).
                var runs = new List<LevelResult>();
                for (int r = 0; r < settings.Repeat; r++)
                {
                    runs.Add(await RunLevelAsync(client, modelId, settings, clients, requests, rng).ConfigureAwait(false));
                }
                var level = runs.OrderBy(x => x.TokensPerSecond).ElementAt(runs.Count / 2);
                results.Add((name, level));
                Console.Error.WriteLine($"[{name}] {level.Clients} clients: {level.RequestsPerSecond:F1} req/s, {level.TokensPerSecond:F0} tok/s (runs: {string.Join(", ", runs.Select(x => x.TokensPerSecond.ToString("F0", CultureInfo.InvariantCulture)))}), TTFT p50 {level.TtftP50:F2} ms");
            }
        }
        Print(results, settings);
        return 0;
    }

    private static async Task RunInterleavedAsync(string coordinator, Settings settings)
    {
        var servers = new List<(string Name, ServeProcessHandle Server, HttpClient Client, string ModelId)>();
        try
        {
            foreach (var (name, serveArgs) in settings.Configs)
            {
                var allArgs = new List<string> { "--model", settings.Model, "--max-queue", "4096" };
                allArgs.AddRange(serveArgs);
                Console.Error.WriteLine($"[{name}] starting serve {string.Join(' ', allArgs)}");
                var server = await ServeProcessHandle.StartAsync(coordinator, allArgs, TimeSpan.FromMinutes(5)).ConfigureAwait(false);
                var client = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 1024, PooledConnectionIdleTimeout = TimeSpan.FromMinutes(5) })
                {
                    BaseAddress = new Uri(server.BaseAddress),
                    Timeout = TimeSpan.FromMinutes(10),
                };
                servers.Add((name, server, client, await ModelIdAsync(client).ConfigureAwait(false)));
            }
            var inv = CultureInfo.InvariantCulture;
            foreach (var (name, _, client, modelId) in servers)
            {
                await RunLevelAsync(client, modelId, settings, Math.Min(8, settings.Clients.Max()), settings.Warmup, new Random(2024)).ConfigureAwait(false);
                Console.Error.WriteLine($"[{name}] warmed up");
            }
            Console.WriteLine($"interleaved: {settings.Interleave} rounds per level, each round one run per configuration (order reversed every other round); prompt {settings.PromptTokens} tokens, max_tokens {settings.MaxTokens}, {Environment.ProcessorCount} CPUs shared by client and servers");
            Console.WriteLine();
            Console.WriteLine("| config | clients | runs | median tok/s | tok/s ratio to baseline, median of rounds (quartiles) | server CPU ms per 1000 tokens, median | CPU per token ratio to baseline, median of rounds (quartiles) |");
            Console.WriteLine("|---|---|---|---|---|---|---|");
            var hiddenRows = new List<string>();
            foreach (int clients in settings.Clients)
            {
                int requests = settings.Requests ?? Math.Max(32, 4 * clients);
                var tokS = servers.Select(_ => new List<double>()).ToArray();
                var cpuPerToken = servers.Select(_ => new List<double>()).ToArray();
                for (int round = 0; round < settings.Interleave; round++)
                {
                    // Same prompts for every configuration within a round.
                    int seed = 7919 * (round + 1) + clients;
                    var order = Enumerable.Range(0, servers.Count);
                    foreach (int k in round % 2 == 0 ? order : order.Reverse())
                    {
                        double? cpu0 = servers[k].Server.TreeCpuSeconds();
                        var r = await RunLevelAsync(servers[k].Client, servers[k].ModelId, settings, clients, requests, new Random(seed)).ConfigureAwait(false);
                        double? cpu1 = servers[k].Server.TreeCpuSeconds();
                        tokS[k].Add(r.TokensPerSecond);
                        cpuPerToken[k].Add(cpu0 is { } a && cpu1 is { } b ? (b - a) / (r.TokensPerSecond * r.WallSeconds) : double.NaN);
                    }
                    Console.Error.WriteLine($"{clients} clients, round {round + 1}: " + string.Join(", ", servers.Select((x, k) => $"{x.Name} {tokS[k][round].ToString("F0", inv)}")));
                }
                for (int k = 0; k < servers.Count; k++)
                {
                    var ratios = tokS[k].Select((v, round) => v / tokS[0][round]).ToList();
                    var cpuRatios = cpuPerToken[k].Select((v, round) => v / cpuPerToken[0][round]).ToList();
                    string Quartiles(List<double> x) => string.Format(inv, "{0:F3} ({1:F3} – {2:F3})", Percentile([.. x], 0.5), Percentile([.. x], 0.25), Percentile([.. x], 0.75));
                    Console.WriteLine(string.Format(inv, "| {0}{1} | {2} | {3} | {4:F0} | {5} | {6:F1} | {7} |", servers[k].Name, k == 0 ? " (baseline)" : "", clients, settings.Interleave,
                        Percentile([.. tokS[k]], 0.5), k == 0 ? "1" : Quartiles(ratios), 1e6 * Percentile([.. cpuPerToken[k]], 0.5), k == 0 ? "1" : Quartiles(cpuRatios)));
                    if (settings.DelayOf.Count > k && settings.DelayOf[k] is { } of && of.Delay != settings.Delays![0])
                    {
                        // Step time ~ clients / tok/s in steady decode; what the added delay cost against what it would cost unhidden.
                        int k0 = settings.DelayOf.IndexOf((of.Name, settings.Delays[0]));
                        double nominal = settings.MoeLayers * 2 * (of.Delay - settings.Delays[0]) * 1e-6;
                        var hidden = tokS[k].Select((v, round) => 1 - (clients / v - clients / tokS[k0][round]) / nominal).ToList();
                        hiddenRows.Add(string.Format(inv, "| {0} | {1} µs | {2} | {3:F2} | {4:F2} | {5} |", of.Name, of.Delay, clients,
                            1e3 * clients / Percentile([.. tokS[k0]], 0.5), 1e3 * clients / Percentile([.. tokS[k]], 0.5), Percentile(hidden, 0.5).ToString("P0", inv)));
                    }
                }
            }
            if (hiddenRows.Count > 0)
            {
                Console.WriteLine();
                Console.WriteLine($"share of the added one-way delay hidden ({settings.MoeLayers} MoE layers: an unhidden step pays {settings.MoeLayers} x 2d more), step time = clients / tok/s, median of rounds");
                Console.WriteLine("| config | one-way delay | clients | step ms at d0 | step ms at d | added delay hidden |");
                Console.WriteLine("|---|---|---|---|---|---|");
                hiddenRows.ForEach(Console.WriteLine);
            }
        }
        finally
        {
            foreach (var (_, server, client, _) in servers)
            {
                client.Dispose();
                await server.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    private static async Task<string> ModelIdAsync(HttpClient client)
    {
        using var doc = JsonDocument.Parse(await client.GetStringAsync("/v1/models").ConfigureAwait(false));
        return doc.RootElement.GetProperty("data")[0].GetProperty("id").GetString()!;
    }

    private static async Task<LevelResult> RunLevelAsync(HttpClient client, string modelId, Settings s, int clients, int requests, Random rng)
    {
        var bodies = Enumerable.Range(0, requests).Select(_ => Body(modelId, s, rng)).ToArray();
        int next = -1;
        var samples = new List<RequestSample>(requests);
        long start = Stopwatch.GetTimestamp();
        var workers = Enumerable.Range(0, clients).Select(async _ =>
        {
            var mine = new List<RequestSample>();
            int i;
            while ((i = Interlocked.Increment(ref next)) < bodies.Length)
            {
                mine.Add(await StreamOneAsync(client, bodies[i]).ConfigureAwait(false));
            }
            return mine;
        }).ToArray();
        foreach (var list in await Task.WhenAll(workers).ConfigureAwait(false))
        {
            samples.AddRange(list);
        }
        double wall = Stopwatch.GetElapsedTime(start).TotalSeconds;
        var ttft = samples.Select(x => x.TtftMs).ToList();
        var itl = samples.SelectMany(x => x.InterTokenMs).ToList();
        var tpot = samples.Where(x => x.Tokens > 1).Select(x => x.InterTokenMs.Sum() / (x.Tokens - 1)).ToList();
        long tokens = samples.Sum(x => (long)x.Tokens);
        return new LevelResult(clients, samples.Count, wall, samples.Count / wall, tokens / wall, (double)tokens / samples.Count,
            Percentile(ttft, 0.5), Percentile(ttft, 0.99), Percentile(itl, 0.5), Percentile(itl, 0.99), Percentile(tpot, 0.5));
    }

    private static string Body(string modelId, Settings s, Random rng)
    {
        // Random ids below the tiny models' special tokens (496..511), after <|begin_of_text|> = 500.
        var ids = Enumerable.Range(0, s.PromptTokens - 1).Select(_ => rng.Next(496)).Prepend(500);
        return $$"""{"model":"{{modelId}}","prompt":[{{string.Join(",", ids)}}],"max_tokens":{{s.MaxTokens}},"temperature":0,"stream":true,"return_token_ids":true}""";
    }

    /// <summary>
    /// One streaming request; a token "arrives" when the SSE chunk carrying its id is read. Inter-token latency is the
    /// gap between consecutive arrivals as the client sees them: chunks that reach the client in one network read
    /// arrive together (gap about 0). TPOT (time per output token) is (last arrival - first) / (tokens - 1).
    /// </summary>
    private static async Task<RequestSample> StreamOneAsync(HttpClient client, string body)
    {
        var (t0, arrivals, _) = await StreamTokensAsync(client, body).ConfigureAwait(false);
        if (arrivals.Count == 0)
        {
            throw new InvalidOperationException("a stream ended without tokens");
        }
        double ttft = (arrivals[0] - t0) * 1000.0 / Stopwatch.Frequency;
        var itl = new double[arrivals.Count - 1];
        for (int k = 1; k < arrivals.Count; k++)
        {
            itl[k - 1] = (arrivals[k] - arrivals[k - 1]) * 1000.0 / Stopwatch.Frequency;
        }
        return new RequestSample(ttft, itl, arrivals.Count);
    }

    /// <summary>
    /// Sends one streaming <c>/v1/completions</c> request (with <c>return_token_ids</c>) and reads it to the end: when it
    /// was sent, when each token's chunk was read, and the token ids.
    /// </summary>
    internal static async Task<(long Start, List<long> Arrivals, List<int> Ids)> StreamTokensAsync(HttpClient client, string body)
    {
        long t0 = Stopwatch.GetTimestamp();
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
        using var response = await client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead).ConfigureAwait(false);
        if (response.StatusCode != HttpStatusCode.OK)
        {
            throw new InvalidOperationException($"request failed: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync().ConfigureAwait(false)}");
        }
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync().ConfigureAwait(false), Encoding.UTF8);
        var arrivals = new List<long>();
        var ids = new List<int>();
        while (await reader.ReadLineAsync().ConfigureAwait(false) is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal))
            {
                continue;
            }
            if (line == "data: [DONE]")
            {
                break;
            }
            long now = Stopwatch.GetTimestamp();
            using var doc = JsonDocument.Parse(line.AsMemory(6));
            var choices = doc.RootElement.GetProperty("choices");
            if (choices.GetArrayLength() == 0 || !choices[0].TryGetProperty("token_ids", out var tokenIds))
            {
                continue;
            }
            foreach (var id in tokenIds.EnumerateArray())
            {
                arrivals.Add(now);
                ids.Add(id.GetInt32());
            }
        }
        return (t0, arrivals, ids);
    }

    private static double Percentile(List<double> values, double p)
    {
        if (values.Count == 0)
        {
            return double.NaN;
        }
        values.Sort();
        // Nearest-rank percentile.
        int rank = (int)Math.Ceiling(p * values.Count);
        return values[Math.Clamp(rank - 1, 0, values.Count - 1)];
    }

    private static void Print(List<(string Config, LevelResult Level)> results, Settings s)
    {
        var inv = CultureInfo.InvariantCulture;
        Console.WriteLine($"prompt {s.PromptTokens} tokens, max_tokens {s.MaxTokens} (greedy; a sequence also ends at EOS), streaming, median of {s.Repeat} runs per level, {Environment.ProcessorCount} CPUs shared by client and server");
        Console.WriteLine();
        Console.WriteLine("| config | clients | requests | req/s | output tok/s | mean output tokens | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | ITL p99 (ms) | TPOT p50 (ms) | tok/s vs baseline |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|");
        string baseline = results[0].Config;
        foreach (var (config, l) in results)
        {
            var b = results.First(r => r.Config == baseline && r.Level.Clients == l.Clients).Level;
            Console.WriteLine(string.Format(inv, "| {0} | {1} | {2} | {3:F1} | {4:F0} | {5:F1} | {6:F2} | {7:F2} | {8:F3} | {9:F3} | {10:F3} | {11:F2}x |",
                config, l.Clients, l.Requests, l.RequestsPerSecond, l.TokensPerSecond, l.MeanOutputTokens, l.TtftP50, l.TtftP99, l.ItlP50, l.ItlP99, l.TpotP50, l.TokensPerSecond / b.TokensPerSecond));
        }
    }

    private sealed record RequestSample(double TtftMs, double[] InterTokenMs, int Tokens);

    private sealed record LevelResult(int Clients, int Requests, double WallSeconds, double RequestsPerSecond, double TokensPerSecond, double MeanOutputTokens,
        double TtftP50, double TtftP99, double ItlP50, double ItlP99, double TpotP50);

    private sealed class Settings
    {
        public string Model { get; private set; } = string.Empty;

        public int[] Clients { get; private set; } = [1, 8, 32];

        public int? Requests { get; private set; }

        public int PromptTokens { get; private set; } = 32;

        public int MaxTokens { get; private set; } = 64;

        public int Warmup { get; private set; } = 64;

        public int Repeat { get; private set; } = 3;

        public int Interleave { get; private set; }

        public List<(string Name, string[] Args)> Configs { get; } = [];

        public int[]? Delays { get; private set; }

        public int DelayWorkers { get; private set; } = 2;

        /// <summary>Per configuration (after expansion): the configuration it came from and its delay; null for the baseline.</summary>
        public List<(string Name, int Delay)?> DelayOf { get; } = [];

        public int MoeLayers { get; set; }

        public static Settings Parse(string[] args)
        {
            var s = new Settings();
            for (int i = 0; i < args.Length; i++)
            {
                string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
                switch (args[i])
                {
                    case "--model": s.Model = Value(); break;
                    case "--clients": s.Clients = Value().Split(',').Select(v => PositiveInt(v, "--clients")).ToArray(); break;
                    case "--requests": s.Requests = PositiveInt(Value(), "--requests"); break;
                    case "--prompt-tokens": s.PromptTokens = PositiveInt(Value(), "--prompt-tokens"); break;
                    case "--max-tokens": s.MaxTokens = PositiveInt(Value(), "--max-tokens"); break;
                    case "--warmup": s.Warmup = PositiveInt(Value(), "--warmup"); break;
                    case "--repeat": s.Repeat = PositiveInt(Value(), "--repeat"); break;
                    case "--interleave": s.Interleave = PositiveInt(Value(), "--interleave"); break;
                    case "--delays":
                        s.Delays = [.. Value().Split(',').Select(v => int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int d) && d is >= 0 and < 1_000_000
                            ? d : throw new ArgumentException($"--delays must list one-way delays in µs within [0, 1e6), got '{v}'"))];
                        break;
                    case "--delay-workers": s.DelayWorkers = PositiveInt(Value(), "--delay-workers"); break;
                    case "--config":
                        string c = Value();
                        int eq = c.IndexOf('=');
                        if (eq <= 0)
                        {
                            throw new ArgumentException($"--config must be NAME=SERVE_ARGS, got '{c}'");
                        }
                        s.Configs.Add((c[..eq], c[(eq + 1)..].Split(' ', StringSplitOptions.RemoveEmptyEntries)));
                        break;
                    default: throw new ArgumentException($"unknown option {args[i]}");
                }
            }
            if (s.Model.Length == 0)
            {
                s.Model = FindFixture("tiny-maverick");
            }
            if (!Directory.Exists(s.Model))
            {
                throw new ArgumentException($"--model: directory '{s.Model}' does not exist");
            }
            if (s.Configs.Count == 0)
            {
                s.Configs.Add(("inproc", []));
            }
            if (s.Delays is not null)
            {
                if (s.Configs.Count < 2)
                {
                    throw new ArgumentException("--delays needs a baseline --config and at least one more to run against the delayed workers");
                }
                if (s.Interleave == 0)
                {
                    s.Interleave = s.Repeat;
                }
            }
            return s;
        }

        private static int PositiveInt(string v, string name) =>
            int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n) && n > 0 ? n : throw new ArgumentException($"{name} must be a positive integer, got '{v}'");

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
}
