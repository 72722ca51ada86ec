using YamlDotNet.RepresentationModel;

namespace Distributed.Integration.Tests.Operations;

/// <summary>Reading <c>infra/k8s</c>: every document, and the nodes the manifest tests look at.</summary>
internal static class K8sManifests
{
    public static readonly string K8s = Path.Combine(TestPaths.Root, "infra", "k8s");

    public static List<YamlMappingNode> Documents() =>
        [.. Directory.GetFiles(K8s, "*.yaml").Where(f => Path.GetFileName(f) != "kustomization.yaml").SelectMany(f =>
        {
            var stream = new YamlStream();
            using var reader = new StreamReader(f);
            stream.Load(reader);
            return stream.Documents.Select(d => (YamlMappingNode)d.RootNode);
        })];

    public static YamlMappingNode Find(string kind, string name) =>
        Documents().Single(d => S(d, "kind") == kind && S(M(d, "metadata"), "name") == name);

    public static string S(YamlMappingNode node, string key) => ((YamlScalarNode)node.Children[new YamlScalarNode(key)]).Value!;

    public static YamlMappingNode M(YamlMappingNode node, string key) => (YamlMappingNode)node.Children[new YamlScalarNode(key)];

    public static YamlSequenceNode Q(YamlMappingNode node, string key) => (YamlSequenceNode)node.Children[new YamlScalarNode(key)];

    public static bool Has(YamlMappingNode node, string key) => node.Children.ContainsKey(new YamlScalarNode(key));

    public static YamlMappingNode Container(YamlMappingNode workload) =>
        (YamlMappingNode)Q(M(M(M(workload, "spec"), "template"), "spec"), "containers").Single();

    public static Dictionary<string, int> ContainerPorts(YamlMappingNode container) =>
        Q(container, "ports").Cast<YamlMappingNode>().ToDictionary(p => S(p, "name"), p => int.Parse(S(p, "containerPort"), System.Globalization.CultureInfo.InvariantCulture));

    public static Dictionary<string, YamlMappingNode> Env(YamlMappingNode container) =>
        Q(container, "env").Cast<YamlMappingNode>().ToDictionary(e => S(e, "name"), e => e);
}
