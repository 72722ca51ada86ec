using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Distributed.Benchmarks;

internal static partial class Timing
{
    private const int ClockProcessCpuTimeId = 2;

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport("libc", EntryPoint = "clock_gettime")]
    private static partial int ClockGetTime(int clock, out Timespec time);

    /// <summary>Milliseconds on the clock <see cref="UseCpuTime"/> selects (an arbitrary origin: only differences mean something).</summary>
    public static double ClockMs() => UseCpuTime ? ProcessCpuMs() : Stopwatch.GetTimestamp() * 1000.0 / Stopwatch.Frequency;

    /// <summary>CPU time of this process in milliseconds (<c>CLOCK_PROCESS_CPUTIME_ID</c>: nanosecond resolution, Linux).</summary>
    private static double ProcessCpuMs()
    {
        if (!OperatingSystem.IsLinux() || ClockGetTime(ClockProcessCpuTimeId, out var t) != 0)
        {
            throw new PlatformNotSupportedException("--clock cpu needs clock_gettime(CLOCK_PROCESS_CPUTIME_ID) (Linux)");
        }
        return (t.Seconds * 1e3) + (t.Nanoseconds / 1e6);
    }

    /// <summary>The 1-minute load average (other processes skew every figure on a 2-vCPU machine), or "n/a".</summary>
    public static string LoadAverage()
    {
        try
        {
            return File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Split(' ')[0] : "n/a";
        }
        catch (IOException)
        {
            return "n/a";
        }
    }

    /// <summary>
    /// When set, <see cref="MedianMs"/> measures the process's CPU time (user + system, all threads) instead of wall
    /// time: on a machine shared with other processes a single-threaded run's CPU time leaves out the time it was not
    /// scheduled, which wall time counts. Only meaningful for runs whose threads spin or compute the whole time.
    /// </summary>
    public static bool UseCpuTime { get; set; }

    /// <summary>Median milliseconds of <paramref name="action"/> over at least <paramref name="minSeconds"/> and 5 runs (after 2 warm-ups).</summary>
    public static double MedianMs(Action action, double minSeconds = 1.0)
    {
        action();
        action();
        var samples = new List<double>();
        var total = Stopwatch.StartNew();
        while (samples.Count < 5 || total.Elapsed.TotalSeconds < minSeconds)
        {
            double t0 = ClockMs();
            action();
            samples.Add(ClockMs() - t0);
            if (samples.Count >= 10_000)
            {
                break;
            }
        }
        samples.Sort();
        return samples[samples.Count / 2];
    }
}
