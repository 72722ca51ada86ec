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
