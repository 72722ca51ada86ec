using System.Runtime.InteropServices;

namespace Distributed.Kernels.Cpu;

/// <summary>
/// Aligned native allocations for packed weights and scratch. Blocks of 4 MiB and more are 2 MiB aligned and, on
/// Linux, advised as transparent huge pages: streaming a 160 MiB expert matrix through 4 KiB pages costs tens of
/// thousands of TLB misses per pass.
/// </summary>
internal static unsafe partial class NativeMemoryBlock
{
    private const nuint HugePage = 2 * 1024 * 1024;
    private const nuint HugeThreshold = 4 * 1024 * 1024;
    private const int MadvHugePage = 14;
    private static bool s_madviseUnavailable;

    /// <summary>Allocates <paramref name="bytes"/> (not zeroed), 64-byte aligned at least.</summary>
    public static void* Allocate(nuint bytes)
    {
        if (bytes == 0)
        {
            bytes = 64;
        }
        if (bytes < HugeThreshold)
        {
            return NativeMemory.AlignedAlloc(bytes, 64);
        }
        nuint rounded = (bytes + HugePage - 1) & ~(HugePage - 1);
        void* p = NativeMemory.AlignedAlloc(rounded, HugePage);
        AdviseHugePages(p, rounded);
        return p;
    }

    /// <summary>Frees a block from <see cref="Allocate"/>; null is ignored.</summary>
    public static void Free(void* p)
    {
        if (p != null)
        {
            NativeMemory.AlignedFree(p);
        }
    }

    private static void AdviseHugePages(void* p, nuint bytes)
    {
        if (!OperatingSystem.IsLinux() || Volatile.Read(ref s_madviseUnavailable))
        {
            return;
        }
        try
        {
            // Best effort: with THP in "madvise" mode this is what makes the kernel back the block with 2 MiB pages.
            _ = Madvise(p, bytes, MadvHugePage);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            Volatile.Write(ref s_madviseUnavailable, true);
        }
    }

    [LibraryImport("libc.so.6", EntryPoint = "madvise")]
    private static partial int Madvise(void* addr, nuint length, int advice);
}

/// <summary>A growable aligned float buffer owned by one backend (never shrinks; freed on dispose).</summary>
internal sealed unsafe class ScratchBuffer : IDisposable
{
    private float* _data;
    private long _capacity;

    /// <summary>Returns a buffer of at least <paramref name="floats"/> elements; previous contents are not kept.</summary>
    public float* Get(long floats)
    {
        if (floats > _capacity)
        {
            long grown = Math.Max(floats, _capacity * 3 / 2);
            grown = (grown + 15) & ~15L;
            NativeMemoryBlock.Free(_data);
            _data = null;
            _capacity = 0;
            _data = (float*)NativeMemoryBlock.Allocate((nuint)(grown * sizeof(float)));
            _capacity = grown;
        }
        return _data;
    }

    public void Dispose()
    {
        NativeMemoryBlock.Free(_data);
        _data = null;
        _capacity = 0;
    }
}
