using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using Distributed.Kernels.Cpu;

namespace Distributed.Benchmarks;

/// <summary>Memory-bandwidth baselines measured with the same thread team the kernels use.</summary>
internal static unsafe class MemoryProbe
{
    private sealed class CopyTask(byte* src, byte* dst, long bytes) : ITeamTask
    {
        public void Execute(int thread, int threads)
        {
            long a = bytes * thread / threads & ~63L;
            long b = thread == threads - 1 ? bytes : bytes * (thread + 1) / threads & ~63L;
            Buffer.MemoryCopy(src + a, dst + a, b - a, b - a);
        }
    }

    private sealed class ReadTask(byte* src, long bytes) : ITeamTask
    {
        public float Sink;

        public void Execute(int thread, int threads)
        {
            long a = bytes * thread / threads & ~255L;
            long b = thread == threads - 1 ? bytes & ~255L : bytes * (thread + 1) / threads & ~255L;
            var acc0 = Vector512<float>.Zero;
            var acc1 = Vector512<float>.Zero;
            var acc2 = Vector512<float>.Zero;
            var acc3 = Vector512<float>.Zero;
            for (long i = a; i < b; i += 256)
            {
                float* p = (float*)(src + i);
                if (Sse.IsSupported)
                {
                    // Same software prefetch distance per stream as the T=1 kernel (2 KiB), so "read" is the
                    // best a single sequential stream per thread achieves here.
                    Sse.Prefetch0(src + i + 2048);
                    Sse.Prefetch0(src + i + 2048 + 64);
                    Sse.Prefetch0(src + i + 2048 + 128);
                    Sse.Prefetch0(src + i + 2048 + 192);
                }
                acc0 += Vector512.Load(p);
                acc1 += Vector512.Load(p + 16);
                acc2 += Vector512.Load(p + 32);
                acc3 += Vector512.Load(p + 48);
            }
            Sink += Vector512.Sum(acc0 + acc1 + acc2 + acc3);
        }
    }

    private static void Fill(byte* p, long bytes, byte value)
    {
        for (long done = 0; done < bytes; done += 1 << 30)
        {
            new Span<byte>(p + done, (int)Math.Min(1 << 30, bytes - done)).Fill(value);
        }
    }

    /// <summary>Copy and read bandwidth of a <paramref name="bytes"/> buffer, GB/s (10⁹ bytes): copy counts the bytes copied.</summary>
    public static (double CopyGBps, double ReadGBps) Measure(int threads, long bytes = 1L << 30)
    {
        byte* src = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 4096);
        byte* dst = (byte*)NativeMemory.AlignedAlloc((nuint)bytes, 4096);
        try
        {
            Fill(src, bytes, 1);
            Fill(dst, bytes, 0);
            using var team = new WorkerTeam(threads);
            var copy = new CopyTask(src, dst, bytes);
            double copyMs = Timing.MedianMs(() => team.Run(copy), 2.0);
            var read = new ReadTask(src, bytes);
            double readMs = Timing.MedianMs(() => team.Run(read), 2.0);
            return (bytes / copyMs / 1e6, bytes / readMs / 1e6);
        }
        finally
        {
            NativeMemory.AlignedFree(src);
            NativeMemory.AlignedFree(dst);
        }
    }
}
