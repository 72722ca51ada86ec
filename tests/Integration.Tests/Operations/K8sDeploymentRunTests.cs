using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Text.RegularExpressions;
using Distributed.Coordinator.Distribution;
using Distributed.Hosting;
using Distributed.Integration.Tests.Serving;
using Xunit.Abstractions;
using YamlDotNet.RepresentationModel;
using static Distributed.Integration.Tests.Operations.K8sManifests;

namespace Distributed.Integration.Tests.Operations;

/// <summary>
/// The deployment starts as shipped: the commands, arguments and environment of <c>infra/k8s</c> (the images'
/// <c>ENTRYPOINT</c> from <c>infra/docker</c>, the containers' <c>args</c>, every <c>env</c> entry resolved the way the
/// kubelet resolves it: literal values, ConfigMap keys, Secret keys, downward-API fields, <c>$(VAR)</c> expansion) run as
/// real processes against a real redis-server: two worker replicas and the coordinator form the cluster, the probes
/// the manifests declare answer 200, and the OpenAI and admin APIs work.
/// What differs from a pod, and only this: addresses and ports are loopback ones (two replicas share this machine),
/// the mounted volumes are folders (the model fixture, TLS files made by the test the way create-secrets.sh names
/// them), the Secrets hold fresh test tokens, and Orleans' Kubernetes hosting is off (it needs the Kubernetes API).
/// </summary>
[Trait("Category", "Integration")]
public sealed partial class K8sDeploymentRunTests(ITestOutputHelper output) : IAsyncLifetime
{
    private readonly string _dir = Directory.CreateTempSubdirectory("k8s-run-").FullName;
    private readonly List<WorkerProcess> _workers = [];
    private ServeProcess? _coordinator;

    [RedisFact]
    public async Task ShippedManifests_TwoWorkersAndTheCoordinator_FormTheClusterAndServe()
    {
        ToolFactAttribute.Require(RedisServer.Missing);
        var log = new TestLog { Output = output };
        await using var redis = await RedisServer.StartAsync(log.Write);

        // Mounted volumes: the models volume holds the fixture; the cluster-tls Secret's keys as create-secrets.sh makes them.
        var config = Data(Find("ConfigMap", "moe-config"));
        string modelsMount = Path.Combine(_dir, "models");
        Directory.CreateDirectory(modelsMount);
        string modelDirectory = Path.Combine(modelsMount, Path.GetFileName(config["MODEL_DIRECTORY"]));
        Directory.CreateSymbolicLink(modelDirectory, TestPaths.Fixture("tiny-maverick"));
        var pki = ClusterCredentials.CreateDevelopment(Path.Combine(_dir, "pki"), TimeSpan.FromDays(1));
        string tlsMount = Path.Combine(_dir, "tls");
        Directory.CreateDirectory(tlsMount);
        File.Copy(pki.CaPath!, Path.Combine(tlsMount, "ca.crt"));
        File.Copy(pki.CertificatePath!, Path.Combine(tlsMount, "tls.crt"));
        File.Copy(pki.KeyPath!, Path.Combine(tlsMount, "tls.key"));
        var secrets = new Dictionary<string, string>
        {
            ["moe-cluster-token/token"] = Convert.ToBase64String(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32)),
            ["moe-admin-token/token"] = "admin-" + Guid.NewGuid().ToString("N"),
            ["moe-api-key/key"] = "key-" + Guid.NewGuid().ToString("N"),
            ["moe-metrics-token/token"] = "metrics-" + Guid.NewGuid().ToString("N"),
        };
        config["REDIS_CONNECTION"] = redis.Connection;

        // Two worker replicas of the StatefulSet.
        var set = Find("StatefulSet", "moe-expert-worker");
        var workerContainer = Container(set);
        for (int replica = 0; replica < 2; replica++)
        {
            int[] ports = WorkerProcess.FreePorts(4);
            var portMap = ContainerPorts(workerContainer).ToDictionary(kv => kv.Value, kv => ports[Array.IndexOf(["grpc", "ops", "silo", "gateway"], kv.Key)]);
            var pod = new Pod($"moe-expert-worker-{replica}", config, secrets, portMap, Mounts(set, workerContainer, modelsMount, tlsMount), set);
            var env = pod.Environment(workerContainer);
            env["DISTRIBUTED_Cluster__KubernetesHosting"] = "false";
            var worker = WorkerProcess.Start(WorkerProcess.LocateWorker(), pod.Arguments(workerContainer, env), pod.Name, log.Write, env);
            _workers.Add(worker);
            string address = await worker.WaitReadyAsync(TimeSpan.FromMinutes(2), CancellationToken.None);
            Assert.StartsWith("https://127.0.0.1:", address, StringComparison.Ordinal);
            worker.GatewayPort = portMap[30000];
            await WaitProbeAsync($"http://127.0.0.1:{portMap[ContainerPorts(workerContainer)["ops"]]}", workerContainer, "startupProbe");
        }

        // The coordinator Deployment.
        var deployment = Find("Deployment", "moe-coordinator");
        var coordinatorContainer = Container(deployment);
        int httpPort = WorkerProcess.FreePorts(1)[0];
        var coordinatorPod = new Pod("moe-coordinator-0", config, secrets, new Dictionary<int, int> { [ContainerPorts(coordinatorContainer)["http"]] = httpPort },
            Mounts(deployment, coordinatorContainer, modelsMount, tlsMount), deployment);
        var coordinatorEnv = coordinatorPod.Environment(coordinatorContainer);
        var args = coordinatorPod.Arguments(coordinatorContainer, coordinatorEnv);
        Assert.Equal("serve", args[0]);
        _coordinator = await ServeProcess.StartCommandAsync(args, output, coordinatorEnv);
        Assert.Equal($"http://127.0.0.1:{httpPort}", _coordinator.BaseAddress);
        foreach (string probe in new[] { "startupProbe", "livenessProbe", "readinessProbe" })
        {
            await WaitProbeAsync(_coordinator.BaseAddress, coordinatorContainer, probe);
        }
        foreach (var worker in _workers)
        {
            Assert.False(worker.HasExited);
        }

        using var http = new HttpClient { BaseAddress = new Uri(_coordinator.BaseAddress), Timeout = TimeSpan.FromMinutes(2) };
        // The OpenAI API takes the Deployment's API key (from its Secret) and nothing else.
        using (var anonymous = await http.GetAsync("/v1/models"))
        {
            Assert.Equal(System.Net.HttpStatusCode.Unauthorized, anonymous.StatusCode);
        }
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", secrets["moe-api-key/key"]);
        using (var completion = await http.PostAsync("/v1/completions",
            SseClient.Json($$"""{"model":"{{Path.GetFileName(modelDirectory)}}","prompt":[500,12,7],"max_tokens":4,"temperature":0,"return_token_ids":true}""")))
        {
            Assert.True(completion.IsSuccessStatusCode, await completion.Content.ReadAsStringAsync());
        }
        using var admin = new HttpRequestMessage(HttpMethod.Get, "/admin/v1/cluster");
        admin.Headers.Authorization = new AuthenticationHeaderValue("Bearer", secrets["moe-admin-token/token"]);
        using var cluster = await http.SendAsync(admin);
        string body = await cluster.Content.ReadAsStringAsync();
        Assert.True(cluster.StatusCode == HttpStatusCode.OK, body);
        Assert.Contains("\"id\":\"moe-expert-worker-0\"", body, StringComparison.Ordinal);
        Assert.Contains("\"id\":\"moe-expert-worker-1\"", body, StringComparison.Ordinal);
        Assert.Contains("\"serving\":true", body, StringComparison.Ordinal);

        // /metrics takes the Deployment's metrics token (from its Secret), not the API key the client sends by default.
        using (var apiKeyScrape = await http.GetAsync("/metrics"))
        {
            Assert.Equal(HttpStatusCode.Unauthorized, apiKeyScrape.StatusCode);
        }
        using var scrape = new HttpRequestMessage(HttpMethod.Get, "/metrics");
        scrape.Headers.Authorization = new AuthenticationHeaderValue("Bearer", secrets["moe-metrics-token/token"]);
        using var metrics = await http.SendAsync(scrape);
        Assert.Equal(HttpStatusCode.OK, metrics.StatusCode);
        Assert.Contains("moe_requests_total", await metrics.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    // volumeMounts of the container: mount path -> the folder standing in for the volume.
    private static Dictionary<string, string> Mounts(YamlMappingNode workload, YamlMappingNode container, string models, string tls)
    {
        var volumes = Q(M(M(M(workload, "spec"), "template"), "spec"), "volumes").Cast<YamlMappingNode>().ToDictionary(v => S(v, "name"));
        var mounts = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var mount in Q(container, "volumeMounts").Cast<YamlMappingNode>())
        {
            var volume = volumes[S(mount, "name")];
            mounts[S(mount, "mountPath")] = Has(volume, "secret") ? tls : Has(volume, "persistentVolumeClaim") ? models
                : throw new InvalidOperationException($"volume {S(mount, "name")} is neither a Secret nor a claim");
        }
        return mounts;
    }

    private static Dictionary<string, string> Data(YamlMappingNode configMap) =>
        M(configMap, "data").Children.ToDictionary(kv => ((YamlScalarNode)kv.Key).Value!, kv => ((YamlScalarNode)kv.Value).Value ?? "");

    // The probe as the kubelet sends it: GET path on the named port, until it answers 200.
    private async Task WaitProbeAsync(string baseAddress, YamlMappingNode container, string probe)
    {
        string path = S(M(M(container, probe), "httpGet"), "path");
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(2);
        using var tick = new PeriodicTimer(TimeSpan.FromMilliseconds(200));
        while (true)
        {
            try
            {
                using var response = await http.GetAsync(baseAddress + path);
                if (response.StatusCode == HttpStatusCode.OK)
                {
                    output.WriteLine($"{probe} {baseAddress}{path}: 200");
                    return;
                }
            }
            catch (HttpRequestException)
            {
            }
            Assert.True(DateTime.UtcNow < deadline, $"{probe} {baseAddress}{path} never answered 200");
            await tick.WaitForNextTickAsync();
        }
    }

    /// <summary>One pod: resolves its container's environment and arguments as the kubelet does.</summary>
    private sealed partial class Pod(string name, Dictionary<string, string> config, Dictionary<string, string> secrets, IReadOnlyDictionary<int, int> ports,
        Dictionary<string, string> mounts, YamlMappingNode workload)
    {
        private readonly Dictionary<string, string> _labels = M(M(M(M(workload, "spec"), "template"), "metadata"), "labels").Children
            .ToDictionary(kv => ((YamlScalarNode)kv.Key).Value!, kv => ((YamlScalarNode)kv.Value).Value ?? "");

        public string Name => name;

        public Dictionary<string, string> Environment(YamlMappingNode container)
        {
            var env = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var e in Q(container, "env").Cast<YamlMappingNode>())
            {
                string value;
                if (Has(e, "value"))
                {
                    value = Expand(S(e, "value"), env);
                }
                else
                {
                    var from = M(e, "valueFrom");
                    value = Has(from, "configMapKeyRef") ? config[S(M(from, "configMapKeyRef"), "key")]
                        : Has(from, "secretKeyRef") ? secrets[$"{S(M(from, "secretKeyRef"), "name")}/{S(M(from, "secretKeyRef"), "key")}"]
                        : S(M(from, "fieldRef"), "fieldPath") switch
                        {
                            "metadata.name" => name,
                            "metadata.namespace" => "moe",
                            "status.podIP" => "127.0.0.1",
                            var f when LabelReference().Match(f) is { Success: true } m => _labels[m.Groups[1].Value],
                            var f => throw new InvalidOperationException($"fieldRef {f} is not resolved by this test"),
                        };
                }
                env[S(e, "name")] = Localize(value);
            }
            return env;
        }

        public List<string> Arguments(YamlMappingNode container, Dictionary<string, string> env)
            => Has(container, "args") ? [.. Q(container, "args").Cast<YamlScalarNode>().Select(a => Localize(Expand(a.Value!, env)))] : [];

        // Container ports become this test's free ports, mount paths the stand-in folders, and "listen everywhere" loopback.
        private string Localize(string value)
        {
            if (value == "0.0.0.0")
            {
                return "127.0.0.1";
            }
            if (int.TryParse(value, NumberStyles.Integer, CultureInfo.InvariantCulture, out int port) && ports.TryGetValue(port, out int mapped))
            {
                return mapped.ToString(CultureInfo.InvariantCulture);
            }
            foreach (var (mountPath, folder) in mounts)
            {
                if (value == mountPath || value.StartsWith(mountPath + "/", StringComparison.Ordinal))
                {
                    return folder + value[mountPath.Length..];
                }
            }
            return value;
        }

        private static string Expand(string value, Dictionary<string, string> env)
            => Reference().Replace(value, m => env.TryGetValue(m.Groups[1].Value, out var v) ? v : m.Value);

        [GeneratedRegex(@"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")]
        private static partial Regex Reference();

        [GeneratedRegex(@"^metadata\.labels\['([^']+)'\]$")]
        private static partial Regex LabelReference();
    }

    public Task InitializeAsync() => Task.CompletedTask;

    // IAsyncLifetime: xunit 2 calls this after the test, pass or fail (it does not call IAsyncDisposable on test classes).
    public async Task DisposeAsync()
    {
        if (_coordinator is not null)
        {
            await _coordinator.DisposeAsync();
        }
        await Task.WhenAll(_workers.Select(w => w.DisposeAsync().AsTask()));
        Directory.Delete(_dir, recursive: true);
    }
}
