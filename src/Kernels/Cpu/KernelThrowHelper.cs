using System.Diagnostics.CodeAnalysis;

namespace Distributed.Kernels.Cpu;

/// <summary>Shape checks shared by the CPU kernels; the throwing paths stay out of line so hot callers remain small.</summary>
internal static class KernelThrowHelper
{
    /// <summary>Throws unless <paramref name="actual"/> equals <paramref name="expected"/>.</summary>
    public static void CheckLength(int actual, long expected, string op, string name, string shape)
    {
        if (actual != expected)
        {
            ThrowLength(actual, expected, op, name, shape);
        }
    }

    /// <summary>Throws unless <paramref name="value"/> is at least <paramref name="min"/>.</summary>
    public static void CheckAtLeast(long value, long min, string op, string name)
    {
        if (value < min)
        {
            ThrowAtLeast(value, min, op, name);
        }
    }

    [DoesNotReturn]
    public static void ThrowLength(int actual, long expected, string op, string name, string shape) =>
        throw new ArgumentException($"{op}: {name} has {actual} elements, expected {expected} ({shape})", name);

    [DoesNotReturn]
    public static void ThrowAtLeast(long value, long min, string op, string name) =>
        throw new ArgumentException($"{op}: {name} = {value} must be at least {min}", name);

    [DoesNotReturn]
    public static void ThrowArgument(string op, string name, string message) =>
        throw new ArgumentException($"{op}: {message}", name);

    [DoesNotReturn]
    public static void ThrowForeignWeight(string op, string name, IWeightMatrix? w) =>
        throw new ArgumentException(
            $"{op}: {name} is a {(w is null ? "null" : w.GetType().Name)}, not a weight created by a CpuKernelBackend", name);

    [DoesNotReturn]
    public static void ThrowDisposed(string what) => throw new ObjectDisposedException(what);
}
