using System.Diagnostics;
using System.Text;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests;

/// <summary>Helpers for the processes tests start: helper servers (redis-server, postgres) and tools run to completion.</summary>
internal static class TestProcesses
{
    /// <summary>True when <paramref name="tool"/> is an executable file in a folder of <c>PATH</c>.</summary>
    public static bool OnPath(string tool)
        => (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Any(d => File.Exists(Path.Combine(d, tool)));

    /// <summary>Kills <paramref name="process"/> with its children, waits for it, and disposes it; already gone is fine.</summary>
    public static async Task KillAndDisposeAsync(Process process)
    {
        try
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
        }
        catch (InvalidOperationException)
        {
            // Already gone.
        }
        process.Dispose();
    }

    /// <summary>
    /// Runs <paramref name="fileName"/> with <paramref name="args"/> in <paramref name="directory"/>, with
    /// <paramref name="environment"/> added to this process's; every output line is streamed into
    /// <paramref name="output"/> as it comes, prefixed <c>[prefix]</c>. Returns the exit code (-1 when it ran past
    /// <paramref name="timeout"/> and was killed with its children) and its standard output.
    /// </summary>
    public static async Task<(int ExitCode, string StdOut)> RunStreamedAsync(string fileName, string directory, IEnumerable<string> args,
        IReadOnlyDictionary<string, string>? environment, TimeSpan timeout, ITestOutputHelper output, string prefix)
    {
        var psi = new ProcessStartInfo(fileName) { WorkingDirectory = directory, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }
        foreach (var (k, v) in environment ?? new Dictionary<string, string>())
        {
            psi.Environment[k] = v;
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
            Write($"{fileName} ran past {timeout} and was killed");
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
                    output.WriteLine($"[{prefix}] {line}");
                }
                catch (InvalidOperationException)
                {
                    // The test has finished.
                }
            }
        }
    }
}
