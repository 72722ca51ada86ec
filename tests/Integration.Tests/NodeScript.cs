using Xunit.Abstractions;

namespace Distributed.Integration.Tests;

/// <summary>
/// Runs the project's Node.js test scripts (the official <c>openai</c> client, the dashboard's headless browser) as real
/// processes: every output line streamed into the test output as it comes, killed with its children past the timeout.
/// </summary>
internal static class NodeScript
{
    /// <summary>The openai client package the serving and vision tests run (<c>npm ci --prefix</c> it).</summary>
    public static readonly string OpenAiClientDirectory = Path.Combine(TestPaths.Root, "tests", "Integration.Tests", "Serving", "openai-client");

    /// <summary>Why the openai client scripts cannot run here (no node, package not installed), or null.</summary>
    public static string? OpenAiClientMissing(string test)
    {
        var missing = new List<string>();
        if (!TestProcesses.OnPath("node"))
        {
            missing.Add("node (apt-get install nodejs)");
        }
        if (!File.Exists(Path.Combine(OpenAiClientDirectory, "node_modules", "openai", "package.json")))
        {
            missing.Add($"the openai npm package (npm ci --prefix {Path.GetRelativePath(TestPaths.Root, OpenAiClientDirectory)})");
        }
        return missing.Count > 0 ? $"the {test} needs " + string.Join(", ", missing) : null;
    }

    /// <summary>
    /// Runs <c>node ARGS</c> in <paramref name="directory"/>; returns its exit code (-1 when it ran past
    /// <paramref name="timeout"/> and was killed) and its standard output.
    /// </summary>
    public static Task<(int ExitCode, string StdOut)> RunAsync(string directory, IEnumerable<string> args, TimeSpan timeout, ITestOutputHelper output)
        => TestProcesses.RunStreamedAsync("node", directory, args, null, timeout, output, "node");
}
