using System.Diagnostics;

namespace Distributed.Integration.Tests.Operations;

/// <summary>
/// What this machine allows the operations tests to do, probed once per run. Each probe returns null when the
/// capability is there, else the reason a test that needs it is skipped (naming what to install or change).
/// </summary>
internal static class MachineCapabilities
{
    private static readonly Lazy<string?> NetnsReason = new(ProbeNetns);

    /// <summary>Null when network namespaces can be made here (Linux, root, iproute2, redis-server); else why not.</summary>
    public static string? NetworkNamespacesMissing => NetnsReason.Value;

    /// <summary>The first existing path of <paramref name="candidates"/>, or null.</summary>
    public static string? FindExecutable(params string[] candidates) => candidates.FirstOrDefault(File.Exists);

    /// <summary>Effective user id from /proc (no P/Invoke), or -1 when unknown.</summary>
    public static int EffectiveUserId()
    {
        try
        {
            foreach (string line in File.ReadLines("/proc/self/status"))
            {
                if (line.StartsWith("Uid:", StringComparison.Ordinal))
                {
                    // "Uid:\treal\teffective\tsaved\tfs"
                    var parts = line.Split(['\t', ' '], StringSplitOptions.RemoveEmptyEntries);
                    return int.Parse(parts[2], System.Globalization.CultureInfo.InvariantCulture);
                }
            }
        }
        catch (IOException)
        {
        }
        return -1;
    }

    private static string? ProbeNetns()
    {
        if (!OperatingSystem.IsLinux())
        {
            return "network namespaces are Linux-only";
        }
        int uid = EffectiveUserId();
        if (uid != 0)
        {
            return $"network namespaces need root (euid {uid})";
        }
        string? ip = FindExecutable("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip");
        if (ip is null)
        {
            return "iproute2 'ip' is not installed (apt-get install iproute2)";
        }
        if (FindExecutable("/usr/bin/redis-server", "/usr/local/bin/redis-server") is null)
        {
            return "redis-server is not installed (apt-get install redis-server)";
        }
        string name = $"moeprobe{Environment.ProcessId}";
        var (rc, err) = Run(ip, ["netns", "add", name]);
        if (rc != 0)
        {
            return $"'ip netns add' is not permitted here (exit {rc}: {err.Trim()})";
        }
        Run(ip, ["netns", "del", name]);
        return null;
    }

    private static (int ExitCode, string StdErr) Run(string file, string[] args)
    {
        var psi = new ProcessStartInfo(file, args) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        using var p = Process.Start(psi)!;
        string err = p.StandardError.ReadToEnd();
        p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, err);
    }
}
