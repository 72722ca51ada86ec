using System.Diagnostics;
using System.Text.RegularExpressions;

namespace Distributed.Benchmarks.Load;

/// <summary>A <c>serve</c> child process: started with <c>--port 0</c>, ready once it prints its listening line; killed (whole tree) on dispose.</summary>
internal sealed partial class ServeProcessHandle : IAsyncDisposable
{
    private readonly Process _process;
    private readonly List<string> _log = [];

    private ServeProcessHandle(Process process) => _process = process;

    public string BaseAddress { get; private set; } = string.Empty;

    /// <summary>
    /// CPU seconds (user + system) used so far by the server and every process below it (its local workers), from
    /// /proc; null where /proc is not available. A process that exited in between is no longer counted, so compare
    /// readings taken while the tree is stable.
    /// </summary>
    public double? TreeCpuSeconds()
    {
        if (!Directory.Exists("/proc/self"))
        {
            return null;
        }
        var parents = new Dictionary<int, int>();
        var ticks = new Dictionary<int, long>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out int pid))
            {
                continue;
            }
            string stat;
            try
            {
                stat = File.ReadAllText(Path.Combine(dir, "stat"));
            }
            catch (IOException)
            {
                continue;
            }
            catch (UnauthorizedAccessException)
            {
                continue;
            }
            // Fields after the command name (which may hold spaces, inside parentheses): state ppid ... utime(14) stime(15).
            var f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            parents[pid] = int.Parse(f[1], System.Globalization.CultureInfo.InvariantCulture);
            ticks[pid] = long.Parse(f[11], System.Globalization.CultureInfo.InvariantCulture) + long.Parse(f[12], System.Globalization.CultureInfo.InvariantCulture);
        }
        long total = 0;
        foreach (var (pid, t) in ticks)
        {
            for (int p = pid, hops = 0; p > 1 && hops < 64; p = parents.GetValueOrDefault(p), hops++)
            {
                if (p == _process.Id)
                {
                    total += t;
                    break;
                }
            }
        }
        // USER_HZ is 100 on every Linux the benchmark runs on.
        return total / 100.0;
    }

    /// <summary>Everything the server wrote (stdout and stderr).</summary>
    public IReadOnlyList<string> Log
    {
        get
        {
            lock (_log)
            {
                return [.. _log];
            }
        }
    }

    public static async Task<ServeProcessHandle> StartAsync(string coordinatorDll, IEnumerable<string> args, TimeSpan timeout)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(coordinatorDll);
        psi.ArgumentList.Add("serve");
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }
        psi.ArgumentList.Add("--port");
        psi.ArgumentList.Add("0");
        var process = new Process { StartInfo = psi, EnableRaisingEvents = true };
        var handle = new ServeProcessHandle(process);
        var listening = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        void OnLine(string? line, bool stdout)
        {
            if (line is null)
            {
                return;
            }
            lock (handle._log)
            {
                handle._log.Add(line);
            }
            if (stdout && ListeningLine().Match(line) is { Success: true } m)
            {
                listening.TrySetResult(m.Groups[1].Value);
            }
        }
        process.OutputDataReceived += (_, e) => OnLine(e.Data, true);
        process.ErrorDataReceived += (_, e) => OnLine(e.Data, false);
        process.Exited += (_, _) => listening.TrySetException(new InvalidOperationException(
            $"serve exited with code {process.ExitCode} before listening:\n{string.Join("\n", handle.Log)}"));
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            handle.BaseAddress = await listening.Task.WaitAsync(timeout).ConfigureAwait(false);
        }
        catch
        {
            await handle.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        return handle;
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false);
            }
        }
        catch (InvalidOperationException)
        {
            // Not started, or already gone.
        }
        _process.Dispose();
    }

    [GeneratedRegex(@"^listening on (http://\S+)$")]
    private static partial Regex ListeningLine();
}
