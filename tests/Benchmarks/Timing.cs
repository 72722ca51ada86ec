using System.Diagnostics;

namespace Distributed.Benchmarks;

internal static class Timing
{
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

    /// <summary>Median milliseconds of <paramref name="action"/> over at least <paramref name="minSeconds"/> and 5 runs (after 2 warm-ups).</summary>
    public static double MedianMs(Action action, double minSeconds = 1.0)
    {
        action();
        action();
        var samples = new List<double>();
        var total = Stopwatch.StartNew();
        while (samples.Count < 5 || total.Elapsed.TotalSeconds < minSeconds)
        {
            long t0 = Stopwatch.GetTimestamp();
            action();
            samples.Add(Stopwatch.GetElapsedTime(t0).TotalMilliseconds);
            if (samples.Count >= 10_000)
            {
                break;
            }
        }
        samples.Sort();
        return samples[samples.Count / 2];
    }
}
