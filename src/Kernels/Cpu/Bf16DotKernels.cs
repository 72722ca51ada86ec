using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Distributed.Kernels.Cpu;

/// <summary>
/// The <see cref="CpuMatMulPrecision.Bf16"/> matmul: <c>y = bf16(x) · W</c> with AVX512-BF16 <c>VDPBF16PS</c>, which
/// multiplies pairs of bf16 values and adds both products to an fp32 accumulator, twice the multiply-adds per
/// instruction of the fp32 FMA path. .NET exposes no intrinsic for it, so the 8-row × 32-column microkernels are
/// emitted here as x86-64 machine code once per process (16 small functions in one page that is made executable and
/// never written again) and called through unmanaged function pointers.
/// </summary>
/// <remarks>
/// <para>Operands: weights in <see cref="PanelLayout.Bf16Pairs"/> panels (pair line <c>q</c> of a panel holds rows
/// <c>2q</c> and <c>2q + 1</c> of 32 columns as 32 dwords, even row in the low half); the input rounded to bf16
/// (round to nearest even, NaN kept) and packed the same way along k by <see cref="ToPairs"/>. Odd K is padded with a
/// zero row. Every output element is accumulated over the pair lines in order from +0 (or from the partial sum a
/// previous k block stored), so a row's result is bitwise independent of the other rows, the row count and the thread
/// split: batch invariance holds exactly as on the fp32 path, with bf16-rounded activations.</para>
/// <para>Machine code is generated only on Linux x86-64 with AVX-512F and AVX512-BF16 (CPUID leaf 7 sub-leaf 1, EAX
/// bit 5), checked by <see cref="Availability"/>.</para>
/// </remarks>
internal static unsafe partial class Bf16DotKernels
{
    /// <summary>Rows of the largest microkernel.</summary>
    public const int MaxRows = 8;

    /// <summary>k-block length, in pair lines, for multi-row-block calls: 128 pair lines of a panel = 16 KiB.</summary>
    private const int KBlockPairs = 128;

    /// <summary>Bytes ahead of the weight stream that each microkernel iteration prefetches (both lines).</summary>
    private const int PrefetchBytes = 4096;

    private static readonly Lazy<Generated> Code = new(Generate, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>Null when the microkernels can run here, else why not.</summary>
    public static string? Availability { get; } = Probe();

    /// <summary>
    /// Emits the microkernels now (once per process), so that a machine or policy that refuses executable memory fails
    /// when the backend is created rather than in the middle of a request.
    /// </summary>
    /// <exception cref="PlatformNotSupportedException">They cannot run here; the message says why.</exception>
    public static void Prepare() => _ = Code.Value;

    /// <summary>
    /// Rounds rows of <paramref name="x"/> (<c>[rows, k]</c>, row stride <paramref name="ldx"/> floats) to bf16 and packs
    /// them as pairs along k into <paramref name="pairs"/> (<c>[rows, ⌈k/2⌉]</c> uints, row stride <c>⌈k/2⌉</c>).
    /// </summary>
    public static void ToPairs(float* x, nint ldx, int r0, int r1, int k, uint* pairs)
    {
        int kp = (k + 1) >> 1;
        for (int r = r0; r < r1; r++)
        {
            float* xr = x + (r * ldx);
            uint* pr = pairs + ((nint)r * kp);
            int q = 0;
            if (Vector512.IsHardwareAccelerated)
            {
                // 16 floats → 8 pairs: round each to its high half, then pack (even >> 16) | (odd & 0xFFFF0000).
                for (; q + 8 <= k >> 1; q += 8)
                {
                    Vector512<ulong> v = RoundToHighHalf(Vector512.Load((uint*)xr + (2 * q))).AsUInt64();
                    Vector512<ulong> packed = ((v >> 16) & Vector512.Create(0xFFFFul)) | ((v >> 32) & Vector512.Create(0xFFFF0000ul));
                    Vector256<uint> narrow = Vector256.Narrow(packed.GetLower(), packed.GetUpper());
                    narrow.Store(pr + q);
                }
            }
            for (; q < kp; q++)
            {
                uint lo = RoundToBf16(((uint*)xr)[2 * q]);
                uint hi = (2 * q) + 1 < k ? RoundToBf16(((uint*)xr)[(2 * q) + 1]) : 0u;
                pr[q] = lo | (hi << 16);
            }
        }
    }

    /// <summary>bf16 bits of fp32 bits, round to nearest even; a NaN stays a (quiet) NaN of the same sign.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static uint RoundToBf16(uint bits) => (bits & 0x7FFFFFFFu) > 0x7F800000u
        ? (bits >> 16) | 0x0040u
        : (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<uint> RoundToHighHalf(Vector512<uint> bits)
    {
        Vector512<uint> rounded = bits + Vector512.Create(0x7FFFu) + ((bits >> 16) & Vector512.Create(1u));
        Vector512<uint> nan = Vector512.GreaterThan(bits & Vector512.Create(0x7FFFFFFFu), Vector512.Create(0x7F800000u));
        return Vector512.ConditionalSelect(nan, bits | Vector512.Create(0x00400000u), rounded);
    }

    /// <summary>
    /// Computes columns of panels <c>[p0, p1)</c> for <paramref name="rows"/> rows of bf16 pairs (<paramref name="x"/>,
    /// row stride <paramref name="ldx"/> uints, as <see cref="ToPairs"/> writes them) into <paramref name="y"/> (column 0
    /// of panel 0 at <paramref name="y"/>, row stride <paramref name="ldy"/> floats).
    /// </summary>
    public static void Compute(uint* x, nint ldx, int rows, PackedWeight w, int p0, int p1, float* y, nint ldy)
    {
        Generated code = Code.Value;
        int kp = w.PairLines;
        float* tile = stackalloc float[MaxRows * PackedWeight.PanelWidth];
        int fullEnd = p1 > p0 && PanelWidthOf(w, p1 - 1) < PackedWeight.PanelWidth ? p1 - 1 : p1;
        // As on the fp32 path: with more than one row block, k is blocked so that a panel's 16 KiB slice is reused
        // from L1 by every row block; partial sums go through y as fp32 and come back bit-exact.
        int kBlock = rows > MaxRows ? KBlockPairs : kp;
        int blocks = (rows + MaxRows - 1) / MaxRows;
        for (int k0 = 0; k0 < kp; k0 += kBlock)
        {
            int kn = Math.Min(kBlock, kp - k0);
            for (int p = p0; p < fullEnd; p++)
            {
                uint* panel = w.Panel(p) + ((nint)k0 * PackedWeight.PairLineUints);
                uint* nextSlice = p + 1 < fullEnd ? w.Panel(p + 1) + ((nint)k0 * PackedWeight.PairLineUints)
                    : k0 + kBlock < kp ? w.Panel(p0) + ((nint)(k0 + kBlock) * PackedWeight.PairLineUints) : null;
                int nextLines = p + 1 < fullEnd ? kn : Math.Min(kBlock, kp - k0 - kBlock);
                int linesPerBlock = (nextLines + blocks - 1) / blocks;
                for (int r = 0, block = 0; r < rows; r += MaxRows, block++)
                {
                    if (blocks > 1 && nextSlice != null)
                    {
                        // The next slice is a fresh stream from DRAM when the weights exceed L3: fetch it in pieces
                        // while this one runs, so its first row block does not stall on every line.
                        int l0 = block * linesPerBlock;
                        int l1 = Math.Min(nextLines, l0 + linesPerBlock);
                        for (int l = l0; l < l1; l++)
                        {
                            byte* line = (byte*)(nextSlice + ((nint)l * PackedWeight.PairLineUints));
                            Sse.Prefetch0(line);
                            Sse.Prefetch0(line + 64);
                        }
                    }
                    code.Call(Math.Min(MaxRows, rows - r), k0 > 0, x + (r * ldx) + k0, ldx, panel, kn, y + (p * PackedWeight.PanelWidth) + (r * ldy), ldy);
                }
            }
        }
        if (fullEnd < p1)
        {
            int width = PanelWidthOf(w, fullEnd);
            float* yp = y + (fullEnd * PackedWeight.PanelWidth);
            for (int r = 0; r < rows; r += MaxRows)
            {
                int n = Math.Min(MaxRows, rows - r);
                code.Call(n, false, x + (r * ldx), ldx, w.Panel(fullEnd), kp, tile, PackedWeight.PanelWidth);
                for (int rr = 0; rr < n; rr++)
                {
                    new ReadOnlySpan<float>(tile + (rr * PackedWeight.PanelWidth), width).CopyTo(new Span<float>(yp + ((r + rr) * ldy), width));
                }
            }
        }
    }

    private static int PanelWidthOf(PackedWeight w, int p) => Math.Min(PackedWeight.PanelWidth, w.OutFeatures - (p * PackedWeight.PanelWidth));

    private static string? Probe()
    {
        if (!OperatingSystem.IsLinux() || RuntimeInformation.ProcessArchitecture != Architecture.X64)
        {
            return $"the bf16 matmul needs Linux on x86-64 (this is {RuntimeInformation.OSDescription}, {RuntimeInformation.ProcessArchitecture})";
        }
        if (!Avx512F.IsSupported || !X86Base.IsSupported)
        {
            return "the bf16 matmul needs AVX-512F, which this CPU (or the runtime's configuration) does not offer";
        }
        if (((X86Base.CpuId(7, 1).Eax >> 5) & 1) == 0)
        {
            return "the bf16 matmul needs AVX512-BF16 (VDPBF16PS), which this CPU does not offer";
        }
        return null;
    }

    /// <summary>The emitted microkernels: <c>[rows - 1, accumulate ? 1 : 0]</c>.</summary>
    private sealed class Generated
    {
        private readonly nint[] _entries;

        public Generated(nint[] entries) => _entries = entries;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Call(int rows, bool accumulate, uint* x, nint ldx, uint* w, int pairLines, float* y, nint ldy)
        {
            var fn = (delegate* unmanaged[SuppressGCTransition]<uint*, nint, uint*, nint, float*, nint, void>)_entries[(2 * (rows - 1)) + (accumulate ? 1 : 0)];
            fn(x, ldx * sizeof(uint), w, pairLines, y, ldy * sizeof(float));
        }
    }

    private static Generated Generate()
    {
        if (Availability is not null)
        {
            throw new PlatformNotSupportedException(Availability);
        }
        var code = new List<byte>();
        var offsets = new int[2 * MaxRows];
        for (int rows = 1; rows <= MaxRows; rows++)
        {
            for (int acc = 0; acc < 2; acc++)
            {
                while (code.Count % 64 != 0)
                {
                    code.Add(0xCC);
                }
                offsets[(2 * (rows - 1)) + acc] = code.Count;
                X64Emitter.EmitMicrokernel(code, rows, acc == 1, PrefetchBytes);
            }
        }
        nuint size = (nuint)((code.Count + 4095) & ~4095);
        byte* page = (byte*)Mmap(null, size, ProtRead | ProtWrite, MapPrivate | MapAnonymous, -1, 0);
        if (page == (byte*)-1 || page == null)
        {
            throw new PlatformNotSupportedException($"the bf16 matmul could not map memory for its code (errno {Marshal.GetLastPInvokeError()})");
        }
        System.Runtime.InteropServices.CollectionsMarshal.AsSpan(code).CopyTo(new Span<byte>(page, (int)size));
        if (Mprotect(page, size, ProtRead | ProtExec) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            Munmap(page, size);
            throw new PlatformNotSupportedException($"the bf16 matmul could not make its code executable (mprotect errno {errno}; " +
                "a policy forbidding executable anonymous memory, such as SELinux deny_execmem, prevents it)");
        }
        var entries = new nint[offsets.Length];
        for (int i = 0; i < offsets.Length; i++)
        {
            entries[i] = (nint)(page + offsets[i]);
        }
        return new Generated(entries);
    }

    private const int ProtRead = 1;
    private const int ProtWrite = 2;
    private const int ProtExec = 4;
    private const int MapPrivate = 0x02;
    private const int MapAnonymous = 0x20;

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial void* Mmap(void* address, nuint length, int protection, int flags, int fd, nint offset);

    [LibraryImport("libc", EntryPoint = "mprotect", SetLastError = true)]
    private static partial int Mprotect(void* address, nuint length, int protection);

    [LibraryImport("libc", EntryPoint = "munmap")]
    private static partial int Munmap(void* address, nuint length);
}
