using System.Diagnostics;
using System.Text;
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

    /// <summary>True when <paramref name="tool"/> is an executable file in a folder of <c>PATH</c>.</summary>
    public static bool OnPath(string tool)
        => (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Any(d => File.Exists(Path.Combine(d, tool)));

    /// <summary>Why the openai client scripts cannot run here (no node, package not installed), or null.</summary>
    public static string? OpenAiClientMissing(string test)
    {
        var missing = new List<string>();
        if (!OnPath("node"))
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
    public static async Task<(int ExitCode, string StdOut)> RunAsync(string directory, IEnumerable<string> args, TimeSpan timeout, ITestOutputHelper output)
    {
        var psi = new ProcessStartInfo("node") { WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }
        var stdout = new StringBuilder();
        using var process = new Process { StartInfo = psi };
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                lock (stdout)
                {
                    stdout.AppendLine(e.Data);
                }
            }
            Write(e.Data);
        };
        process.ErrorDataReceived += (_, e) => Write(e.Data);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        using var cts = new CancellationTokenSource(timeout);
        int code;
        try
        {
            await process.WaitForExitAsync(cts.Token);
            code = process.ExitCode;
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
            Write($"node ran past {timeout} and was killed");
            code = -1;
        }
        lock (stdout)
        {
            return (code, stdout.ToString());
        }

        void Write(string? line)
        {
            if (line is not null)
            {
                try
                {
                    output.WriteLine("[node] " + line);
                }
                catch (InvalidOperationException)
                {
                    // The test has finished.
                }
            }
        }
    }
}
