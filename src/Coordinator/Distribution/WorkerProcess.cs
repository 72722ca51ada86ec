using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// One ExpertWorker executable started as a child process. Its stdout/stderr lines go to a log callback; it is ready
/// once it prints the <c>EXPERT_WORKER_READY ... grpc=ADDRESS</c> line. Disposing kills its whole process tree.
/// </summary>
public sealed partial class WorkerProcess : IAsyncDisposable
{
    /// <summary>The marker the worker prints once serving (<c>WorkerHost.ReadyMarker</c>).</summary>
    public const string ReadyMarker = "EXPERT_WORKER_READY";

    private readonly System.Collections.Concurrent.ConcurrentQueue<string> _lastErrors = new();
    private readonly Process _process;
    private readonly TaskCompletionSource<string> _ready = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Action<string> _log;
    private int _disposed;

    private WorkerProcess(Process process, string name, Action<string> log)
    {
        _process = process;
        Name = name;
        _log = log;
    }

    /// <summary>Short name used in logs.</summary>
    public string Name { get; }

    /// <summary>Operating-system process id.</summary>
    public int ProcessId => _process.Id;

    /// <summary>True once the process exited.</summary>
    public bool HasExited => _process.HasExited;

    /// <summary>The exit code once <see cref="HasExited"/> (the worker's: 2 bad configuration, 3 unusable model, 4 a listener or the silo did not start).</summary>
    public int? ExitCode => _process.HasExited ? _process.ExitCode : null;

    /// <summary>The Orleans gateway port it was started with (0 when unknown or a static worker).</summary>
    public int GatewayPort { get; set; }

    /// <summary>True once <see cref="DisposeAsync"/> started (its exit is then expected).</summary>
    public bool Disposed => Volatile.Read(ref _disposed) != 0;

    /// <summary>Raised once when the process exits, whatever the cause.</summary>
    public event Action<WorkerProcess>? Exited;

    /// <summary>The exit as an operator reads it: <c>code 4</c>, or <c>killed by SIGKILL</c> (Unix reports a signal as 128 + its number).</summary>
    public string DescribeExit()
    {
        if (!_process.HasExited)
        {
            return "still running";
        }
        int code = SafeExitCode(_process);
        string? signal = code switch
        {
            130 => "SIGINT",
            134 => "SIGABRT",
            135 => "SIGBUS",
            137 => "SIGKILL",
            139 => "SIGSEGV",
            143 => "SIGTERM",
            _ => null,
        };
        string last = _lastErrors.IsEmpty ? "" : $"; last stderr: {string.Join(" | ", _lastErrors)}";
        return (signal is null ? $"code {code}" : $"killed by {signal} (code {code})") + last;
    }

    /// <summary>The bound data-plane address from the ready line (after <see cref="WaitReadyAsync"/>).</summary>
    public string? GrpcAddress => _ready.Task.IsCompletedSuccessfully ? _ready.Task.Result : null;

    /// <summary>
    /// Starts <paramref name="workerPath"/> (a <c>.dll</c> is run with <c>dotnet</c>) with <paramref name="arguments"/>
    /// and, when given, extra <paramref name="environment"/> variables.
    /// </summary>
    public static WorkerProcess Start(string workerPath, IEnumerable<string> arguments, string name, Action<string> log,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var psi = new ProcessStartInfo
        {
            FileName = workerPath.EndsWith(".dll", StringComparison.OrdinalIgnoreCase) ? "dotnet" : workerPath,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = false,
            UseShellExecute = false,
        };
        if (psi.FileName == "dotnet")
        {
            psi.ArgumentList.Add(workerPath);
        }
        foreach (var a in arguments)
        {
            psi.ArgumentList.Add(a);
        }
        psi.Environment["DOTNET_gcServer"] = "0";
        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
        {
            psi.Environment[key] = value;
        }
        var process = new Process { StartInfo = psi, EnableRaisingEvents = true };
        var worker = new WorkerProcess(process, name, log);
        process.OutputDataReceived += (_, e) => worker.OnLine(e.Data, "out");
        process.ErrorDataReceived += (_, e) => worker.OnLine(e.Data, "err");
        process.Exited += (_, _) =>
        {
            worker._ready.TrySetException(new InvalidOperationException(
                $"worker {name} exited with code {SafeExitCode(process)} before it was ready; last stderr: {string.Join(" | ", worker._lastErrors)}"));
            try
            {
                worker.Exited?.Invoke(worker);
            }
            catch (InvalidOperationException)
            {
                // The log sink is gone (a test finished).
            }
        };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return worker;
    }

    private static int SafeExitCode(Process p)
    {
        try
        {
            return p.ExitCode;
        }
        catch (InvalidOperationException)
        {
            return -1;
        }
    }

    private void OnLine(string? line, string stream)
    {
        if (line is null)
        {
            return;
        }
        if (stream == "err")
        {
            // The reason a worker died before its ready line (e.g. an unhandled exception) goes into the error.
            _lastErrors.Enqueue(line);
            while (_lastErrors.Count > 3 && _lastErrors.TryDequeue(out _))
            {
            }
        }
        try
        {
            _log($"[{Name} {stream}] {line}");
        }
        catch (InvalidOperationException)
        {
            // The log sink is gone (a test finished); keep draining the pipe.
        }
        if (line.StartsWith(ReadyMarker, StringComparison.Ordinal) && GrpcPattern().Match(line) is { Success: true } m)
        {
            _ready.TrySetResult(m.Groups[1].Value);
        }
    }

    /// <summary>Waits for the ready line and returns the bound data-plane address.</summary>
    /// <exception cref="TimeoutException">Not ready in time (the process is left running; dispose it).</exception>
    /// <exception cref="InvalidOperationException">The process exited first.</exception>
    public async Task<string> WaitReadyAsync(TimeSpan timeout, CancellationToken cancellationToken)
        => await _ready.Task.WaitAsync(timeout, cancellationToken).ConfigureAwait(false);

    /// <summary>Kills the process at once (SIGKILL on Unix): no shutdown hook runs, its sockets close.</summary>
    public void Kill()
    {
        try
        {
            _process.Kill(entireProcessTree: false);
        }
        catch (InvalidOperationException)
        {
            // Already exited.
        }
    }

    /// <summary>Asks the process to stop (SIGTERM): the worker unregisters and shuts down.</summary>
    public void Terminate()
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS())
        {
            throw new PlatformNotSupportedException("SIGTERM needs a Unix host");
        }
        using var kill = Process.Start(new ProcessStartInfo("kill", ["-TERM", _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])
        {
            UseShellExecute = false,
        }) ?? throw new InvalidOperationException("cannot run kill");
        kill.WaitForExit();
    }

    /// <summary>Waits for the process to exit.</summary>
    public Task WaitForExitAsync(CancellationToken cancellationToken) => _process.WaitForExitAsync(cancellationToken);

    /// <summary>
    /// Sends SIGSTOP (the worker stops answering without closing its sockets) or SIGCONT. On Linux a stop returns only
    /// once every thread of the worker is in the stopped state: the signal is taken by each thread when it next runs, so
    /// on a loaded machine a thread already running could otherwise still answer a request sent right after.
    /// </summary>
    /// <exception cref="TimeoutException">Some thread had not stopped 10 s after the signal.</exception>
    public void Signal(bool stop)
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS())
        {
            throw new PlatformNotSupportedException("SIGSTOP/SIGCONT need a Unix host");
        }
        using var kill = Process.Start(new ProcessStartInfo("kill", [stop ? "-STOP" : "-CONT", _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])
        {
            UseShellExecute = false,
        }) ?? throw new InvalidOperationException("cannot run kill");
        kill.WaitForExit();
        if (kill.ExitCode != 0)
        {
            throw new InvalidOperationException($"kill {(stop ? "-STOP" : "-CONT")} {_process.Id} failed with {kill.ExitCode}");
        }
        if (stop && OperatingSystem.IsLinux())
        {
            WaitUntilStopped(_process.Id, TimeSpan.FromSeconds(10));
        }
    }

    // No notification exists for "another process's threads all stopped" (waitid(WSTOPPED) would race the runtime's
    // reaping of children), so this reads each thread's state from /proc until all are stopped ('T' or 't').
    private static void WaitUntilStopped(int pid, TimeSpan timeout)
    {
        long start = Stopwatch.GetTimestamp();
        var spin = new SpinWait();
        while (!AllThreadsStopped(pid))
        {
            if (Stopwatch.GetElapsedTime(start) > timeout)
            {
                throw new TimeoutException($"worker process {pid} still had running threads {timeout.TotalSeconds:F0} s after SIGSTOP");
            }
            spin.SpinOnce(sleep1Threshold: 20);
        }
    }

    private static bool AllThreadsStopped(int pid)
    {
        string[] tasks;
        try
        {
            tasks = Directory.GetDirectories($"/proc/{pid}/task");
        }
        catch (DirectoryNotFoundException)
        {
            return true; // gone: nothing left to answer
        }
        foreach (string task in tasks)
        {
            string stat;
            try
            {
                stat = File.ReadAllText(Path.Combine(task, "stat"));
            }
            catch (Exception ex) when (ex is FileNotFoundException or DirectoryNotFoundException or IOException)
            {
                continue; // the thread exited
            }
            // "pid (comm) S ...": the state follows the last ')' (comm may contain spaces and parentheses).
            int close = stat.LastIndexOf(')');
            if (close < 0 || close + 2 >= stat.Length || stat[close + 2] is not ('T' or 't' or 'Z' or 'X'))
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>
    /// Picks <paramref name="count"/> distinct free loopback TCP ports for listeners that must be told their port
    /// before they bind (an Orleans silo advertises its endpoint). The ports come from below the kernel's ephemeral
    /// range (Linux <c>ip_local_port_range</c>), so no outgoing connection and no port-0 listener of any process can take
    /// one between this probe and the bind; each is verified by binding it. Where that range is unknown or leaves no
    /// room, falls back to ports the kernel hands out for port 0 (bind-and-release; a small race remains).
    /// </summary>
    public static int[] FreePorts(int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        var listeners = new List<TcpListener>();
        try
        {
            if (EphemeralRangeStart() is int ephemeralStart && ephemeralStart - LowestProbedPort >= 1024)
            {
                for (int attempt = 0; listeners.Count < count && attempt < 64 * count; attempt++)
                {
                    int port = Random.Shared.Next(LowestProbedPort, ephemeralStart);
                    if (listeners.Any(l => ((IPEndPoint)l.LocalEndpoint).Port == port))
                    {
                        continue;
                    }
                    var l = new TcpListener(IPAddress.Loopback, port);
                    try
                    {
                        l.Start();
                        listeners.Add(l);
                    }
                    catch (SocketException)
                    {
                        l.Stop();
                    }
                }
            }
            while (listeners.Count < count)
            {
                var l = new TcpListener(IPAddress.Loopback, 0);
                l.Start();
                listeners.Add(l);
            }
            return [.. listeners.Select(l => ((IPEndPoint)l.LocalEndpoint).Port)];
        }
        finally
        {
            foreach (var l in listeners)
            {
                l.Stop();
            }
        }
    }

    // Below the IANA registered-port mass (and Orleans' 11111 default), above what services usually claim.
    private const int LowestProbedPort = 20000;

    // The first port of the kernel's ephemeral range, or null off Linux or when it cannot be read.
    private static int? EphemeralRangeStart()
    {
        try
        {
            if (!OperatingSystem.IsLinux())
            {
                return null;
            }
            string[] parts = File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range")
                .Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
            return parts.Length == 2 && int.TryParse(parts[0], System.Globalization.CultureInfo.InvariantCulture, out int start) && start is > 0 and <= 65535
                ? start : null;
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>
    /// Finds the ExpertWorker build: <c>DISTRIBUTED_EXPERT_WORKER</c>, else the worker's own output folder next to the
    /// solution (same configuration as this process first), else this process's folder.
    /// </summary>
    /// <exception cref="FileNotFoundException">Nothing found; the message lists where it looked.</exception>
    public static string LocateWorker()
    {
        var tried = new List<string>();
        string? env = Environment.GetEnvironmentVariable("DISTRIBUTED_EXPERT_WORKER");
        if (!string.IsNullOrEmpty(env))
        {
            if (File.Exists(env))
            {
                return env;
            }
            tried.Add(env);
        }
        string baseDir = AppContext.BaseDirectory;
        string config = baseDir.Contains($"{Path.DirectorySeparatorChar}Debug{Path.DirectorySeparatorChar}", StringComparison.Ordinal) ? "Debug" : "Release";
        for (var dir = new DirectoryInfo(baseDir); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Distributed.sln")))
            {
                foreach (string c in new[] { config, config == "Release" ? "Debug" : "Release" })
                {
                    string candidate = Path.Combine(dir.FullName, "src", "ExpertWorker", "bin", c, "net10.0", "Distributed.ExpertWorker.dll");
                    if (File.Exists(candidate))
                    {
                        return candidate;
                    }
                    tried.Add(candidate);
                }
                break;
            }
        }
        string local = Path.Combine(baseDir, "Distributed.ExpertWorker.dll");
        if (File.Exists(local) && File.Exists(Path.Combine(baseDir, "Distributed.ExpertWorker.runtimeconfig.json")))
        {
            return local;
        }
        tried.Add(local);
        throw new FileNotFoundException("ExpertWorker executable not found (build src/ExpertWorker or set DISTRIBUTED_EXPERT_WORKER); tried: " + string.Join(", ", tried));
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        try
        {
            if (!_process.HasExited)
            {
                try
                {
                    Signal(stop: false);
                }
                catch (Exception ex) when (ex is InvalidOperationException or PlatformNotSupportedException)
                {
                }
                _process.Kill(entireProcessTree: true);
            }
            await _process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is InvalidOperationException or TimeoutException or System.ComponentModel.Win32Exception)
        {
            // Already gone, or refusing to die; nothing more a launcher can do.
        }
        _process.Dispose();
    }

    [GeneratedRegex(@"\bgrpc=(\S+)")]
    private static partial Regex GrpcPattern();
}
