using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text.RegularExpressions;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Serving;

/// <summary>
/// The real <c>serve</c> command as a child process (<c>dotnet Distributed.Coordinator.dll serve ... --port 0</c>):
/// waits for its <c>listening on http://...</c> line, streams stdout/stderr to the current test's output, and kills
/// the process tree on dispose.
/// </summary>
internal sealed partial class ServeProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly ConcurrentQueue<string> _lines = new();
    private readonly TaskCompletionSource<string> _listening = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private volatile ITestOutputHelper? _output;

    private ServeProcess(Process process) => _process = process;

    /// <summary>The HTTP/1.1 base address, e.g. <c>http://127.0.0.1:41234</c>.</summary>
    public string BaseAddress { get; private set; } = string.Empty;

    /// <summary>Every line the process wrote so far, stdout and stderr interleaved.</summary>
    public IReadOnlyCollection<string> Lines => _lines;

    public int ProcessId => _process.Id;

    public bool HasExited => _process.HasExited;

    public int ExitCode => _process.ExitCode;

    /// <summary>Where output goes from now on (the running test's helper); null = only <see cref="Lines"/>.</summary>
    public ITestOutputHelper? Output
    {
        get => _output;
        set => _output = value;
    }

    /// <summary>Starts <c>serve --model <paramref name="modelDir"/> --port 0</c> plus <paramref name="extraArgs"/> and waits until it listens.</summary>
    public static Task<ServeProcess> StartAsync(string modelDir, IEnumerable<string> extraArgs, ITestOutputHelper? output = null,
        IReadOnlyDictionary<string, string>? environment = null)
        => StartCommandAsync(["serve", "--model", modelDir, "--port", "0", .. extraArgs], output, environment);

    /// <summary>Starts the coordinator with exactly <paramref name="arguments"/> (the command first) and waits until it listens.</summary>
    public static async Task<ServeProcess> StartCommandAsync(IEnumerable<string> arguments, ITestOutputHelper? output = null,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var psi = new ProcessStartInfo("dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var (k, v) in environment ?? new Dictionary<string, string>())
        {
            psi.Environment[k] = v;
        }
        foreach (var a in new[] { TestPaths.CoordinatorDll }.Concat(arguments))
        {
            psi.ArgumentList.Add(a);
        }
        var process = new Process { StartInfo = psi, EnableRaisingEvents = true };
        var serve = new ServeProcess(process) { Output = output };
        process.OutputDataReceived += (_, e) => serve.OnLine("out", e.Data);
        process.ErrorDataReceived += (_, e) => serve.OnLine("err", e.Data);
        process.Exited += (_, _) => serve._listening.TrySetException(new InvalidOperationException($"serve exited with code {process.ExitCode} before listening:\n{string.Join("\n", serve._lines)}"));
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            serve.BaseAddress = await serve._listening.Task.WaitAsync(TimeSpan.FromMinutes(2));
        }
        catch
        {
            await serve.DisposeAsync();
            throw;
        }
        return serve;
    }

    /// <summary>Sends SIGKILL.</summary>
    public void Kill()
    {
        try
        {
            _process.Kill(entireProcessTree: false);
        }
        catch (InvalidOperationException)
        {
        }
    }

    /// <summary>Sends SIGTERM (what a service manager does) and waits for the exit code.</summary>
    public async Task<int> TerminateAsync(TimeSpan timeout)
    {
        using (var kill = Process.Start(new ProcessStartInfo("kill", ["-TERM", _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]) { UseShellExecute = false })!)
        {
            await kill.WaitForExitAsync();
        }
        using var cts = new CancellationTokenSource(timeout);
        await _process.WaitForExitAsync(cts.Token);
        return _process.ExitCode;
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30));
            }
        }
        catch (InvalidOperationException)
        {
            // Never started or already reaped.
        }
        _process.Dispose();
    }

    private void OnLine(string stream, string? line)
    {
        if (line is null)
        {
            return;
        }
        _lines.Enqueue(line);
        try
        {
            _output?.WriteLine($"[serve {stream}] {line}");
        }
        catch (InvalidOperationException)
        {
            // The test that owned the helper has finished.
        }
        if (stream == "out" && ListeningLine().Match(line) is { Success: true } m)
        {
            _listening.TrySetResult(m.Groups[1].Value);
        }
    }

    [GeneratedRegex(@"^listening on (http://\S+)$")]
    private static partial Regex ListeningLine();
}
