using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Distributed.Coordinator.Admin;

namespace Distributed.Coordinator.Cli;

public static partial class CommandLine
{
    private const string AdminUsage =
        "admin           cluster | placement | load | serving | operation OP | drain WORKER | rebalance [--dry-run] [--extra-replicas N] [--load-window recent|total]\n"
        + "                  | replicas add|remove LAYER:EXPERT[@WORKER] ...   [--url http://127.0.0.1:8000] [--token-env NAME | --token T] [--wait]";

    /// <summary>
    /// <c>admin</c>: calls the coordinator's admin API (<c>--url</c>, default <c>http://127.0.0.1:8000</c>) with the
    /// bearer token from the environment variable <c>DISTRIBUTED_ADMIN_TOKEN</c> (or <c>--token-env NAME</c>, or
    /// <c>--token</c>, which other users of the machine can see in the process list). Prints the JSON answer on stdout;
    /// with <c>--wait</c> a change is followed until its operation completed or failed. Exit codes: 0 success, 1 the
    /// API refused or failed (the error code and message on stderr), 2 usage error.
    /// </summary>
    private static async Task<int> AdminAsync(IEnumerable<string> args, TextWriter stdout, TextWriter stderr, CancellationToken ct)
    {
        var list = args.ToList();
        var positional = list.TakeWhile(x => !x.StartsWith("--", StringComparison.Ordinal)).ToList();
        var a = new CliArgs(list.Skip(positional.Count), ["url", "token", "token-env", "extra-replicas", "load-window"], ["dry-run", "wait"]);
        if (positional.Count == 0)
        {
            throw new UsageException("admin needs an action: cluster, placement, load, serving, operation, drain, replicas or rebalance");
        }
        string url = (a.Get("url") ?? "http://127.0.0.1:8000").TrimEnd('/');
        if (!Uri.TryCreate(url, UriKind.Absolute, out var baseUri) || (baseUri.Scheme != "http" && baseUri.Scheme != "https"))
        {
            throw new UsageException($"--url '{url}' is not an http(s) URL");
        }
        string tokenEnv = a.Get("token-env") ?? new ClusterAdminOptions().TokenEnvironmentVariable;
        string? token = a.Get("token") ?? Environment.GetEnvironmentVariable(tokenEnv);
        if (string.IsNullOrEmpty(token))
        {
            throw new UsageException($"no admin token: set {tokenEnv} (or pass --token-env NAME / --token)");
        }
        using var http = new HttpClient { BaseAddress = new Uri(url + "/"), Timeout = TimeSpan.FromSeconds(120) };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", token);
        string action = positional[0];
        var rest = positional.Skip(1).ToList();
        void Arity(int n, string form)
        {
            if (rest.Count != n)
            {
                throw new UsageException($"usage: admin {form}");
            }
        }
        HttpRequestMessage request;
        bool change = false;
        switch (action)
        {
            case "cluster":
            case "placement":
            case "serving":
                Arity(0, action);
                request = new HttpRequestMessage(HttpMethod.Get, $"admin/v1/{action}");
                break;
            case "load":
                Arity(0, "load");
                request = new HttpRequestMessage(HttpMethod.Get, "admin/v1/experts/load");
                break;
            case "operation":
                Arity(1, "operation OP");
                request = new HttpRequestMessage(HttpMethod.Get, $"admin/v1/operations/{Uri.EscapeDataString(rest[0])}");
                break;
            case "drain":
                Arity(1, "drain WORKER");
                request = new HttpRequestMessage(HttpMethod.Post, $"admin/v1/workers/{Uri.EscapeDataString(rest[0])}/drain");
                change = true;
                break;
            case "replicas":
                if (rest.Count < 2 || rest[0] is not ("add" or "remove"))
                {
                    throw new UsageException("usage: admin replicas add|remove LAYER:EXPERT[@WORKER] ...");
                }
                var targets = rest.Skip(1).Select(ParseReplicaTarget).ToList();
                var body = rest[0] == "add" ? new ReplicaChangeRequest(targets, null) : new ReplicaChangeRequest(null, targets);
                request = JsonRequest("admin/v1/experts/replicas", body);
                change = true;
                break;
            case "rebalance":
                Arity(0, "rebalance [--dry-run] [--extra-replicas N] [--load-window recent|total]");
                int? extra = a.Has("extra-replicas") ? a.Int("extra-replicas", 0, 0, 1 << 20) : null;
                request = JsonRequest("admin/v1/rebalance", new RebalanceRequestBody(a.Has("dry-run"), extra, a.Get("load-window")));
                change = !a.Has("dry-run");
                break;
            default:
                throw new UsageException($"unknown admin action '{action}' (expected cluster, placement, load, serving, operation, drain, replicas or rebalance)");
        }
        var (ok, json) = await SendAsync(http, request, stderr, ct).ConfigureAwait(false);
        if (!ok)
        {
            return 1;
        }
        stdout.WriteLine(Pretty(json));
        if (change && a.Has("wait"))
        {
            using var doc = JsonDocument.Parse(json);
            var op = doc.RootElement.TryGetProperty("operation", out var nested) && nested.ValueKind == JsonValueKind.Object ? nested : doc.RootElement;
            string id = op.GetProperty("id").GetString()!;
            string state = op.GetProperty("state").GetString()!;
            while (state == "Staging")
            {
                // A long poll: the server answers once the operation leaves Staging, or after 30 s with it still staging.
                (ok, json) = await SendAsync(http, new HttpRequestMessage(HttpMethod.Get, $"admin/v1/operations/{Uri.EscapeDataString(id)}?wait=30"), stderr, ct).ConfigureAwait(false);
                if (!ok)
                {
                    return 1;
                }
                using var d = JsonDocument.Parse(json);
                state = d.RootElement.GetProperty("state").GetString()!;
            }
            stdout.WriteLine(Pretty(json));
            if (state != "Completed")
            {
                stderr.WriteLine($"error: operation {id} {state}");
                return 1;
            }
        }
        return 0;
    }

    private static HttpRequestMessage JsonRequest<T>(string path, T body) => new(HttpMethod.Post, path)
    {
        Content = new StringContent(JsonSerializer.Serialize(body, AdminEndpoints.Json), Encoding.UTF8, "application/json"),
    };

    private static async Task<(bool Ok, string Json)> SendAsync(HttpClient http, HttpRequestMessage request, TextWriter stderr, CancellationToken ct)
    {
        HttpResponseMessage response;
        try
        {
            response = await http.SendAsync(request, ct).ConfigureAwait(false);
        }
        catch (HttpRequestException ex)
        {
            stderr.WriteLine($"error: cannot reach the admin API at {http.BaseAddress}: {OneLine(ex.Message)}");
            return (false, "");
        }
        using (response)
        {
            string json = await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
            if (response.IsSuccessStatusCode)
            {
                return (true, json);
            }
            try
            {
                var error = JsonSerializer.Deserialize<AdminErrorResponse>(json, AdminEndpoints.Json)!.Error;
                stderr.WriteLine($"error: {(int)response.StatusCode} {error.Code}{(error.Field is null ? "" : $" ({error.Field})")}: {error.Message}");
            }
            catch (Exception ex) when (ex is JsonException or NullReferenceException)
            {
                stderr.WriteLine($"error: {(int)response.StatusCode} {response.ReasonPhrase}: {OneLine(json)}");
            }
            return (false, json);
        }
    }

    private static ReplicaTarget ParseReplicaTarget(string text)
    {
        string? worker = null;
        int at = text.IndexOf('@');
        string key = text;
        if (at >= 0)
        {
            worker = text[(at + 1)..];
            key = text[..at];
        }
        var parts = key.Split(':');
        if (parts.Length != 2 || !int.TryParse(parts[0], System.Globalization.CultureInfo.InvariantCulture, out int layer)
            || !int.TryParse(parts[1], System.Globalization.CultureInfo.InvariantCulture, out int expert) || (worker is not null && worker.Length == 0))
        {
            throw new UsageException($"replica '{text}' is not LAYER:EXPERT or LAYER:EXPERT@WORKER");
        }
        return new ReplicaTarget(layer, expert, worker);
    }

    private static string Pretty(string json)
    {
        using var doc = JsonDocument.Parse(json);
        return JsonSerializer.Serialize(doc.RootElement, new JsonSerializerOptions { WriteIndented = true });
    }
}
