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

    /// <summary>
    /// Sums a thread's share of the buffer as four interleaved sequential streams, each software-prefetched 2 KiB ahead:
    /// the access pattern of the four-panel T=1 matmul kernel, so "read" is the bandwidth that kernel can hope for.
    /// </summary>
    private sealed class ReadTask(byte* src, long bytes) : ITeamTask
    {
        public float Sink;

        public void Execute(int thread, int threads)
        {
            long a = bytes * thread / threads & ~1023L;
            long b = thread == threads - 1 ? bytes & ~1023L : bytes * (thread + 1) / threads & ~1023L;
            long quarter = (b - a) / 4 & ~255L;
            byte* s0 = src + a;
            byte* s1 = s0 + quarter;
            byte* s2 = s1 + quarter;
            byte* s3 = s2 + quarter;
            var acc0 = Vector512<float>.Zero;
            var acc1 = Vector512<float>.Zero;
            var acc2 = Vector512<float>.Zero;
            var acc3 = Vector512<float>.Zero;
            for (long i = 0; i < quarter; i += 64)
            {
                if (Sse.IsSupported)
                {
                    Sse.Prefetch0(s0 + i + 2048);
                    Sse.Prefetch0(s1 + i + 2048);
                    Sse.Prefetch0(s2 + i + 2048);
                    Sse.Prefetch0(s3 + i + 2048);
                }
                acc0 += Vector512.Load((float*)(s0 + i));
                acc1 += Vector512.Load((float*)(s1 + i));
                acc2 += Vector512.Load((float*)(s2 + i));
                acc3 += Vector512.Load((float*)(s3 + i));
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
            return (bytes / copyMs / 1e6, (bytes & ~1023L) / readMs / 1e6);
        }
        finally
        {
            NativeMemory.AlignedFree(src);
            NativeMemory.AlignedFree(dst);
        }
    }
}
