using System.Diagnostics;
using System.Reflection;
using System.Text.RegularExpressions;
using Distributed.Coordinator.Diagnostics;
using Distributed.Coordinator.Serving.Hosting;
using Distributed.ExpertWorker.Hosting;
using Distributed.Hosting;
using YamlDotNet.RepresentationModel;

using static Distributed.Integration.Tests.Operations.K8sManifests;

namespace Distributed.Integration.Tests.Operations;

/// <summary>
/// infra/k8s and infra/docker stay true to the code: every manifest parses; every DISTRIBUTED_Section__Key variable
/// names a real option; ports agree between env, containerPort, probes, Services, Dockerfile EXPOSE and the code's
/// defaults; images name the Dockerfiles; the Dockerfiles publish real projects and start their real assemblies;
/// the coordinator's arguments are accepted by the real <c>serve</c> command line.
/// </summary>
[Trait("Category", "Unit")]
public sealed partial class DeploymentManifestsTests
{
    private static readonly string Docker = Path.Combine(TestPaths.Root, "infra", "docker");

    private static int[] Exposed(string dockerfile) =>
        [.. File.ReadAllLines(Path.Combine(Docker, dockerfile)).Where(l => l.StartsWith("EXPOSE ", StringComparison.Ordinal))
            .SelectMany(l => l[7..].Split(' ', StringSplitOptions.RemoveEmptyEntries)).Select(p => int.Parse(p, System.Globalization.CultureInfo.InvariantCulture))];

    [Fact]
    public void EveryManifest_ParsesWithKindAndName()
    {
        var docs = Documents();
        Assert.True(docs.Count >= 10, $"only {docs.Count} documents");
        Assert.All(docs, d =>
        {
            Assert.False(string.IsNullOrWhiteSpace(S(d, "apiVersion")));
            Assert.False(string.IsNullOrWhiteSpace(S(M(d, "metadata"), "name")));
        });
        var kustomization = new YamlStream();
        using var reader = new StreamReader(Path.Combine(K8s, "kustomization.yaml"));
        kustomization.Load(reader);
        var listed = Q((YamlMappingNode)kustomization.Documents[0].RootNode, "resources").Cast<YamlScalarNode>().Select(n => n.Value!).Order();
        Assert.Equal(Directory.GetFiles(K8s, "*.yaml").Select(Path.GetFileName).Where(f => f != "kustomization.yaml").Order(), listed);
    }

    [Fact]
    public void WorkerEnvironment_NamesRealOptions()
    {
        var sections = OptionTypes(typeof(ExpertWorkerOptions).Assembly, typeof(ExpertClusterOptions).Assembly, typeof(TelemetryOptions).Assembly);
        var env = Env(Container(Find("StatefulSet", "moe-expert-worker")));
        var names = env.Keys.Where(k => k.StartsWith(TelemetryOptions.EnvironmentPrefix, StringComparison.Ordinal)
            && k != ClusterTokenVariable && k != TelemetryOptions.MetricsTokenEnvironmentVariable).ToList();
        Assert.True(names.Count >= 10);
        foreach (string name in names)
        {
            AssertNamesOption(sections, name);
        }
        // Orleans Kubernetes hosting reads these.
        foreach (string required in new[] { "POD_NAME", "POD_NAMESPACE", "POD_IP" })
        {
            Assert.Contains(required, env.Keys);
        }
        Assert.Equal("true", S(env["DISTRIBUTED_Cluster__KubernetesHosting"], "value"));
        Assert.Equal("Redis", S(env["DISTRIBUTED_Cluster__Clustering"], "value"));
        Assert.True(Enum.TryParse<ClusteringMode>("Redis", out _));
        // The ops port is on the pod network: without the metrics token its /metrics would refuse Prometheus (403).
        AssertFromCreatedSecret(env[TelemetryOptions.MetricsTokenEnvironmentVariable]);
    }

    [Fact]
    public void CoordinatorEnvironment_NamesRealOptions()
    {
        var sections = OptionTypes(typeof(CoordinatorOperations).Assembly, typeof(ExpertClusterOptions).Assembly, typeof(TelemetryOptions).Assembly);
        var env = Env(Container(Find("Deployment", "moe-coordinator")));
        // The tokens are not configuration keys: each is read from its own variable, set from a Secret.
        string tokenVariable = new Distributed.Coordinator.Admin.ClusterAdminOptions().TokenEnvironmentVariable;
        string apiKeyVariable = new Distributed.Coordinator.Serving.Hosting.ServeOptions().ApiKeyEnvironmentVariable;
        foreach (string name in env.Keys.Where(k => k.StartsWith(TelemetryOptions.EnvironmentPrefix, StringComparison.Ordinal)
                     && k != tokenVariable && k != ClusterTokenVariable && k != apiKeyVariable && k != TelemetryOptions.MetricsTokenEnvironmentVariable))
        {
            AssertNamesOption(sections, name);
        }
        Assert.True(env.ContainsKey(tokenVariable), $"the coordinator Deployment must set {tokenVariable} (the admin API's token) from a Secret");
        AssertFromCreatedSecret(env[tokenVariable]);
        // serve listens on 0.0.0.0 there: off loopback the OpenAI API needs its key (or it refuses to start).
        Assert.True(env.ContainsKey(apiKeyVariable), $"the coordinator Deployment must set {apiKeyVariable} (the OpenAI API's key) from a Secret");
        AssertFromCreatedSecret(env[apiKeyVariable]);
        Assert.True(env.ContainsKey(TelemetryOptions.MetricsTokenEnvironmentVariable), "the coordinator Deployment must set the metrics token from a Secret");
        AssertFromCreatedSecret(env[TelemetryOptions.MetricsTokenEnvironmentVariable]);
    }

    // The variable the data plane's token comes from (both executables read it).
    private const string ClusterTokenVariable = "DISTRIBUTED_CLUSTER_TOKEN";

    // No secret is in the repository: a secretKeyRef must name a Secret (and key) that create-secrets.sh makes.
    private static void AssertFromCreatedSecret(YamlMappingNode variable)
    {
        var reference = M(M(variable, "valueFrom"), "secretKeyRef");
        string script = File.ReadAllText(Path.Combine(K8s, "create-secrets.sh"));
        Assert.Matches($@"(?m)^secret {Regex.Escape(S(reference, "name"))} .*--from-literal={Regex.Escape(S(reference, "key"))}=", script);
        Assert.DoesNotContain(Documents(), d => S(d, "kind") == "Secret");
    }

    [Fact]
    public void CoordinatorAndWorkers_JoinOneClusterWithTheSameCredentials()
    {
        var coordinator = Env(Container(Find("Deployment", "moe-coordinator")));
        var workers = Env(Container(Find("StatefulSet", "moe-expert-worker")));
        // The same membership store and ids: the coordinator finds the workers through it, never by a list.
        foreach (string key in new[] { "DISTRIBUTED_Cluster__Clustering", "DISTRIBUTED_Cluster__RedisConnectionString", "DISTRIBUTED_Cluster__ServiceId",
                     "DISTRIBUTED_Cluster__ClusterId", "DISTRIBUTED_Tls__CertificatePath", "DISTRIBUTED_Tls__KeyPath", "DISTRIBUTED_Tls__CaPath" })
        {
            Assert.True(coordinator.ContainsKey(key) && workers.ContainsKey(key), key);
            Assert.Equal(workers[key].ToString(), coordinator[key].ToString());
        }
        Assert.Equal("Redis", S(coordinator["DISTRIBUTED_Cluster__Clustering"], "value"));
        AssertFromCreatedSecret(coordinator[ClusterTokenVariable]);
        AssertFromCreatedSecret(workers[ClusterTokenVariable]);
        Assert.Equal(workers[ClusterTokenVariable].ToString(), coordinator[ClusterTokenVariable].ToString());
        // The TLS files live in the mounted cluster-tls Secret, which create-secrets.sh makes with these keys.
        foreach (var workload in new[] { Find("Deployment", "moe-coordinator"), Find("StatefulSet", "moe-expert-worker") })
        {
            var container = Container(workload);
            var mount = Q(container, "volumeMounts").Cast<YamlMappingNode>().Single(v => S(v, "name") == "cluster-tls");
            var volume = Q(M(M(M(workload, "spec"), "template"), "spec"), "volumes").Cast<YamlMappingNode>().Single(v => S(v, "name") == "cluster-tls");
            string secret = S(M(volume, "secret"), "secretName");
            string script = File.ReadAllText(Path.Combine(K8s, "create-secrets.sh"));
            foreach (string key in new[] { "DISTRIBUTED_Tls__CertificatePath", "DISTRIBUTED_Tls__KeyPath", "DISTRIBUTED_Tls__CaPath" })
            {
                string path = S(Env(container)[key], "value");
                Assert.StartsWith(S(mount, "mountPath") + "/", path, StringComparison.Ordinal);
                Assert.Matches($@"(?m)^secret {Regex.Escape(secret)} .*--from-file={Regex.Escape(Path.GetFileName(path))}=", script.Replace("\\\n  ", " ", StringComparison.Ordinal));
            }
        }
    }

    [Fact]
    public void WorkerPorts_AgreeAcrossEnvContainerProbesServiceDockerfileAndCode()
    {
        var set = Find("StatefulSet", "moe-expert-worker");
        var container = Container(set);
        var ports = ContainerPorts(container);
        var env = Env(container);
        int Value(string name) => int.Parse(S(env[name], "value"), System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal(ports["grpc"], Value("DISTRIBUTED_ExpertWorker__GrpcPort"));
        Assert.Equal(ports["ops"], Value("DISTRIBUTED_ExpertWorker__OpsPort"));
        Assert.Equal(ports["silo"], Value("DISTRIBUTED_Cluster__SiloPort"));
        Assert.Equal(ports["gateway"], Value("DISTRIBUTED_Cluster__GatewayPort"));
        var defaults = new ExpertClusterOptions();
        Assert.Equal(defaults.SiloPort, ports["silo"]);
        Assert.Equal(defaults.GatewayPort, ports["gateway"]);
        Assert.Equal(ports.Values.Order(), Exposed("expert-worker.Dockerfile").Order());

        foreach (var (probe, path) in new[] { ("startupProbe", OperationsEndpoints.LivenessPath), ("livenessProbe", OperationsEndpoints.LivenessPath), ("readinessProbe", OperationsEndpoints.ReadinessPath) })
        {
            var get = M(M(container, probe), "httpGet");
            Assert.Equal(path, S(get, "path"));
            Assert.Equal("ops", S(get, "port"));
        }
        var annotations = M(M(M(M(set, "spec"), "template"), "metadata"), "annotations");
        Assert.Equal(ports["ops"].ToString(System.Globalization.CultureInfo.InvariantCulture), S(annotations, "prometheus.io/port"));
        Assert.Equal(OperationsEndpoints.MetricsPath, S(annotations, "prometheus.io/path"));

        var service = Find("Service", S(M(set, "spec"), "serviceName"));
        Assert.Equal("None", S(M(service, "spec"), "clusterIP"));
        foreach (var p in Q(M(service, "spec"), "ports").Cast<YamlMappingNode>())
        {
            Assert.Equal(ports[S(p, "targetPort")], int.Parse(S(p, "port"), System.Globalization.CultureInfo.InvariantCulture));
        }
        Assert.Equal("1", S(M(M(container, "resources"), "limits"), "nvidia.com/gpu"));
        // Kubernetes hosting: the Orleans ids come from these pod labels and must equal the configured ones.
        var labels = M(M(M(set, "spec"), "template"), "metadata");
        var config = M(Find("ConfigMap", "moe-config"), "data");
        Assert.Equal(S(config, "ORLEANS_SERVICE_ID"), S(M(labels, "labels"), "orleans/serviceId"));
        Assert.Equal(S(config, "ORLEANS_CLUSTER_ID"), S(M(labels, "labels"), "orleans/clusterId"));
        Assert.Equal(S(M(set, "spec"), "serviceName"), S(M(service, "metadata"), "name"));
        var rbacSubject = (YamlMappingNode)Q(Find("RoleBinding", "moe-orleans-pods"), "subjects").Single();
        Assert.Equal(S(M(M(M(set, "spec"), "template"), "spec"), "serviceAccountName"), S(rbacSubject, "name"));
    }

    [Fact]
    public void CoordinatorPorts_AgreeAcrossArgsContainerProbesServiceDockerfileAndCode()
    {
        var deployment = Find("Deployment", "moe-coordinator");
        var container = Container(deployment);
        var ports = ContainerPorts(container);
        var args = Q(container, "args").Cast<YamlScalarNode>().Select(n => n.Value!).ToList();
        Assert.Equal("serve", args[0]);
        int port = int.Parse(args[args.IndexOf("--port") + 1], System.Globalization.CultureInfo.InvariantCulture);
        Assert.Equal(ports["http"], port);
        Assert.Equal(new ServeOptions().Port, port);
        Assert.Equal([port], Exposed("coordinator.Dockerfile"));
        foreach (var (probe, path) in new[] { ("livenessProbe", OperationsEndpoints.LivenessPath), ("readinessProbe", OperationsEndpoints.ReadinessPath) })
        {
            Assert.Equal(path, S(M(M(container, probe), "httpGet"), "path"));
        }
        Assert.Equal(OperationsEndpoints.MetricsPath, S(M(M(M(M(deployment, "spec"), "template"), "metadata"), "annotations"), "prometheus.io/path"));
        var service = Find("Service", "moe-coordinator");
        Assert.Equal("http", S((YamlMappingNode)Q(M(service, "spec"), "ports").Single(), "targetPort"));

        // The coordinator is never given a worker list: it follows the cluster's plan.
        Assert.DoesNotContain("--workers", args);
    }

    [Fact]
    public async Task CoordinatorArgs_AreAcceptedByTheRealServeCommand()
    {
        var args = Q(Container(Find("Deployment", "moe-coordinator")), "args").Cast<YamlScalarNode>().Select(n => n.Value!).ToList();
        // A model directory that does not exist: the command parses every option first, then stops at --model.
        args[args.IndexOf("--model") + 1] = Path.Combine(Path.GetTempPath(), $"no-model-{Guid.NewGuid():N}");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        psi.ArgumentList.Add(ServingTestPathsCoordinator());
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using var process = Process.Start(psi)!;
        string stderr = await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        Assert.Equal(2, process.ExitCode);
        Assert.DoesNotContain("unknown", stderr, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("--model: directory", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Images_NameTheDockerfiles_WhichPublishRealProjectsAndStartTheirAssemblies()
    {
        var images = new Dictionary<string, (string Project, Assembly Assembly)>
        {
            ["coordinator"] = ("src/Coordinator/Distributed.Coordinator.csproj", typeof(CoordinatorOperations).Assembly),
            ["expert-worker"] = ("src/ExpertWorker/Distributed.ExpertWorker.csproj", typeof(WorkerOperations).Assembly),
        };
        var used = Documents().Where(d => S(d, "kind") is "Deployment" or "StatefulSet")
            .Select(d => S(Container(d), "image")).Where(i => i.StartsWith("distributed-moe/", StringComparison.Ordinal)).ToList();
        Assert.Equal(2, used.Count);
        foreach (string image in used)
        {
            string name = image["distributed-moe/".Length..].Split(':')[0];
            Assert.True(images.TryGetValue(name, out var expected), $"image {image} has no infra/docker/{name}.Dockerfile");
            string dockerfile = File.ReadAllText(Path.Combine(Docker, name + ".Dockerfile"));
            Assert.Contains($"dotnet publish {expected.Project} ", dockerfile, StringComparison.Ordinal);
            Assert.True(File.Exists(Path.Combine(TestPaths.Root, expected.Project)), expected.Project);
            Assert.Contains($"ENTRYPOINT [\"dotnet\", \"{expected.Assembly.GetName().Name}.dll\"]", dockerfile, StringComparison.Ordinal);
            Assert.Contains($"docker build -f infra/docker/{name}.Dockerfile -t distributed-moe/{name}:", dockerfile, StringComparison.Ordinal);
            Assert.Matches(FromLine(), dockerfile);
        }
    }

    private static string ServingTestPathsCoordinator() => TestPaths.CoordinatorDll;

    private static Dictionary<string, Type> OptionTypes(params Assembly[] assemblies) =>
        assemblies.Distinct().SelectMany(a => a.GetTypes())
            .Select(t => (Type: t, Field: t.GetField("SectionName", BindingFlags.Public | BindingFlags.Static)))
            .Where(x => x.Field is { IsLiteral: true } && x.Field.FieldType == typeof(string) && x.Type.Name.EndsWith("Options", StringComparison.Ordinal))
            .GroupBy(x => (string)x.Field!.GetRawConstantValue()!)
            .ToDictionary(g => g.Key, g => g.First().Type);

    private static void AssertNamesOption(Dictionary<string, Type> sections, string variable)
    {
        string[] parts = variable[TelemetryOptions.EnvironmentPrefix.Length..].Split("__");
        Assert.True(parts.Length == 2, $"{variable} is not DISTRIBUTED_<Section>__<Key>");
        Assert.True(sections.TryGetValue(parts[0], out var type), $"{variable}: no options class has SectionName '{parts[0]}' (known: {string.Join(", ", sections.Keys)})");
        var property = type!.GetProperty(parts[1], BindingFlags.Public | BindingFlags.Instance | BindingFlags.IgnoreCase);
        Assert.True(property is { CanWrite: true }, $"{variable}: {type.Name} has no settable property '{parts[1]}'");
    }

    [GeneratedRegex(@"(?m)^FROM mcr\.microsoft\.com/dotnet/sdk:10\.0 AS build$")]
    private static partial Regex FromLine();
}
