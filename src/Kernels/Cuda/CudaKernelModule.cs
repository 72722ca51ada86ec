using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using Distributed.Kernels.Cuda.Interop;

namespace Distributed.Kernels.Cuda;

/// <summary>
/// The device kernels of <see cref="CudaKernelBackend"/>: <c>native/kernels.cu</c> (an embedded resource) compiled once
/// by NVRTC for the device's architecture, loaded with <c>cuModuleLoadData</c>, plus one typed launcher per entry point.
/// </summary>
/// <remarks>
/// Compilation tries <c>--gpu-architecture=sm_XY</c> (a CUBIN, no driver JIT) first and falls back to
/// <c>compute_XY</c> PTX, which the driver compiles at load. <c>--fmad=false</c> keeps the elementwise arithmetic
/// (RoPE rotation, SiLU) rounding like the CPU backend's; these kernels are memory-bound, so it costs nothing measurable.
/// </remarks>
internal sealed unsafe partial class CudaKernelModule : IDisposable
{
    /// <summary>Manifest name of the embedded kernel source.</summary>
    public const string SourceResourceName = "Distributed.Kernels.Cuda.native.kernels.cu";

    /// <summary>Threads per block of the row-reduction kernels (REDUCE_THREADS in kernels.cu).</summary>
    public const int ReduceThreads = 256;

    private const int ElementwiseThreads = 256;
    private const int MaxElementwiseBlocks = 1 << 20;

    /// <summary>Every <c>extern "C" __global__</c> entry point the host code launches.</summary>
    public static readonly IReadOnlyList<string> EntryPoints =
    [
        "split_bf16", "combine_split", "swiglu_split", "rmsnorm", "silu_mul", "add_inplace", "rope", "attention",
        "attention_split", "attention_combine", "kv_scatter", "softmax_rows", "argmax_rows", "topk_rows", "layernorm", "gelu", "add_bias",
        "rotate_pairs", "fp8_gemm", "fp8_quant_rows", "swiglu_f32", "attention_split_bf16", "attention_split_fp8", "kv_scatter_bf16", "kv_scatter_fp8",
        "copy_cols", "scale_rows", "wire_decode_rows", "wire_encode_bf16", "gather_scaled_rows", "combine_rows",
    ];

    private readonly CudaModuleHandle _module;
    private readonly Dictionary<string, nint> _functions = new(StringComparer.Ordinal);

    private CudaKernelModule(CudaModuleHandle module, string image, string compileLog)
    {
        _module = module;
        Image = image;
        CompileLog = compileLog;
        foreach (string name in EntryPoints)
        {
            _functions[name] = module.GetFunction(name);
        }
    }

    /// <summary>What was loaded, e.g. <c>cubin sm_90</c> or <c>ptx compute_90</c>.</summary>
    public string Image { get; }

    /// <summary>NVRTC's log of the successful compilation (warnings), possibly empty.</summary>
    public string CompileLog { get; }

    /// <summary>Reads the embedded kernel source.</summary>
    public static string LoadSource()
    {
        Assembly assembly = typeof(CudaKernelModule).Assembly;
        using Stream? stream = assembly.GetManifestResourceStream(SourceResourceName)
            ?? throw new InvalidOperationException($"embedded resource {SourceResourceName} is missing from {assembly.GetName().Name}");
        using var reader = new StreamReader(stream, Encoding.UTF8);
        return reader.ReadToEnd();
    }

    /// <summary>Compiles and loads the kernels for compute capability <paramref name="major"/>.<paramref name="minor"/>.</summary>
    /// <exception cref="CudaUnavailableException">Both compilations failed; the message holds NVRTC's logs.</exception>
    public static CudaKernelModule Create(nint context, int major, int minor)
    {
        string source = LoadSource();
        string arch = $"{major}{minor}";
        var failures = new StringBuilder();
        foreach (bool cubin in new[] { true, false })
        {
            string target = cubin ? $"sm_{arch}" : $"compute_{arch}";
            string[] options = [$"--gpu-architecture={target}", "--fmad=false", "-DNDEBUG"];
            byte[]? image = Compile(source, options, cubin, out string log);
            if (image is null)
            {
                failures.Append($"NVRTC {string.Join(' ', options)} failed:\n{log}\n");
                continue;
            }
            CudaModuleHandle module = CudaModuleHandle.Load(context, image);
            try
            {
                return new CudaKernelModule(module, cubin ? $"cubin {target}" : $"ptx {target}", log.Trim());
            }
            catch
            {
                module.Dispose();
                throw;
            }
        }
        throw new CudaUnavailableException($"the CUDA kernels did not compile:\n{failures}");
    }

    /// <summary>NVRTC version as <c>major.minor</c>.</summary>
    public static string NvrtcVersion()
    {
        Nvrtc.Check(Nvrtc.nvrtcVersion(out int major, out int minor), "nvrtcVersion");
        return $"{major}.{minor}";
    }

    private static byte[]? Compile(string source, string[] options, bool cubin, out string log)
    {
        using NvrtcProgramHandle program = NvrtcProgramHandle.Create(source, "kernels.cu");
        nint[] optionPointers = new nint[options.Length];
        try
        {
            for (int i = 0; i < options.Length; i++)
            {
                optionPointers[i] = Marshal.StringToCoTaskMemUTF8(options[i]);
            }
            int result;
            fixed (nint* p = optionPointers)
            {
                result = Nvrtc.nvrtcCompileProgram(program.Value, options.Length, (byte**)p);
            }
            log = ReadLog(program.Value);
            if (result != Nvrtc.Success)
            {
                log = $"nvrtcCompileProgram: {Nvrtc.Describe(result)}\n{log}";
                return null;
            }
            if (cubin)
            {
                Nvrtc.Check(Nvrtc.nvrtcGetCUBINSize(program.Value, out nuint size), "nvrtcGetCUBINSize");
                byte[] image = new byte[(int)size];
                fixed (byte* p = image)
                {
                    Nvrtc.Check(Nvrtc.nvrtcGetCUBIN(program.Value, p), "nvrtcGetCUBIN");
                }
                return image;
            }
            else
            {
                Nvrtc.Check(Nvrtc.nvrtcGetPTXSize(program.Value, out nuint size), "nvrtcGetPTXSize");
                // The PTX size includes its terminating NUL, which cuModuleLoadData needs.
                byte[] image = new byte[(int)size + 1];
                fixed (byte* p = image)
                {
                    Nvrtc.Check(Nvrtc.nvrtcGetPTX(program.Value, p), "nvrtcGetPTX");
                }
                return image;
            }
        }
        finally
        {
            foreach (nint p in optionPointers)
            {
                if (p != 0)
                {
                    Marshal.FreeCoTaskMem(p);
                }
            }
        }
    }

    private static string ReadLog(nint program)
    {
        if (Nvrtc.nvrtcGetProgramLogSize(program, out nuint size) != Nvrtc.Success || size <= 1)
        {
            return "";
        }
        byte[] buffer = new byte[(int)size];
        fixed (byte* p = buffer)
        {
            if (Nvrtc.nvrtcGetProgramLog(program, p) != Nvrtc.Success)
            {
                return "";
            }
        }
        return Encoding.UTF8.GetString(buffer, 0, Math.Max(0, (int)size - 1));
    }

    public void Dispose() => _module.Dispose();

    private void Launch(string name, long blocks, int threads, nint stream, void** args)
    {
        if (blocks <= 0)
        {
            return;
        }
        if (blocks > int.MaxValue)
        {
            throw new ArgumentException($"{name}: {blocks} blocks exceed the grid limit");
        }
        CuDriver.Check(CuDriver.cuLaunchKernel(_functions[name], (uint)blocks, 1, 1, (uint)threads, 1, 1, 0, stream, args, null),
            $"cuLaunchKernel({name})");
    }

    private static long ElementwiseBlocks(long n) =>
        Math.Min((n + ElementwiseThreads - 1) / ElementwiseThreads, MaxElementwiseBlocks);

    /// <summary>
    /// x [rows, cols] fp32 → bf16 [rows, cols], or split hi/lo rows [2·rows, cols]; row r goes to row map[r] of the
    /// output when <paramref name="map"/> (a device int array) is not 0.
    /// </summary>
    public void SplitBf16(nint stream, ulong x, ulong output, long rows, int cols, bool split, ulong map = 0)
    {
        int s = split ? 1 : 0;
        void** a = stackalloc void*[6];
        a[0] = &x;
        a[1] = &output;
        a[2] = &map;
        a[3] = &rows;
        a[4] = &cols;
        a[5] = &s;
        Launch("split_bf16", ElementwiseBlocks(rows * cols), ElementwiseThreads, stream, a);
    }

    /// <summary>y[r] = t[2p] + t[2p+1] (split) or t[p], p = map[r] (or r when <paramref name="map"/> is 0).</summary>
    public void CombineSplit(nint stream, ulong t, ulong y, long rows, int cols, bool split, ulong map = 0)
    {
        int s = split ? 1 : 0;
        void** a = stackalloc void*[6];
        a[0] = &t;
        a[1] = &y;
        a[2] = &map;
        a[3] = &rows;
        a[4] = &cols;
        a[5] = &s;
        Launch("combine_split", ElementwiseBlocks(rows * cols), ElementwiseThreads, stream, a);
    }

    /// <summary>h = silu(gate)·up from the gate_up GEMM output, written as (split) bf16.</summary>
    public void SwiGluSplit(nint stream, ulong t, ulong h, long rows, int inter, bool split)
    {
        int s = split ? 1 : 0;
        void** a = stackalloc void*[5];
        a[0] = &t;
        a[1] = &h;
        a[2] = &rows;
        a[3] = &inter;
        a[4] = &s;
        Launch("swiglu_split", ElementwiseBlocks(rows * inter), ElementwiseThreads, stream, a);
    }

    public void RmsNorm(nint stream, ulong x, ulong weight, ulong y, long rows, int cols, float eps, bool hasWeight)
    {
        int hw = hasWeight ? 1 : 0;
        void** a = stackalloc void*[6];
        a[0] = &x;
        a[1] = &weight;
        a[2] = &y;
        a[3] = &cols;
        a[4] = &eps;
        a[5] = &hw;
        Launch("rmsnorm", rows, ReduceThreads, stream, a);
    }

    /// <summary>y = LayerNorm(x) · weight + bias per row (one block per row).</summary>
    public void LayerNorm(nint stream, ulong x, ulong weight, ulong bias, ulong y, long rows, int cols, float eps)
    {
        void** a = stackalloc void*[6];
        a[0] = &x;
        a[1] = &weight;
        a[2] = &bias;
        a[3] = &y;
        a[4] = &cols;
        a[5] = &eps;
        Launch("layernorm", rows, ReduceThreads, stream, a);
    }

    /// <summary>dst = gelu(x), exact erf form.</summary>
    public void Gelu(nint stream, ulong x, ulong dst, long n)
    {
        void** a = stackalloc void*[3];
        a[0] = &x;
        a[1] = &dst;
        a[2] = &n;
        Launch("gelu", ElementwiseBlocks(n), ElementwiseThreads, stream, a);
    }

    /// <summary>x[r, c] += bias[c] for x [rows, cols].</summary>
    public void AddBias(nint stream, ulong x, ulong bias, long rows, int cols)
    {
        void** a = stackalloc void*[4];
        a[0] = &x;
        a[1] = &bias;
        a[2] = &rows;
        a[3] = &cols;
        Launch("add_bias", ElementwiseBlocks(rows * cols), ElementwiseThreads, stream, a);
    }

    /// <summary>Pairs of x [rows, heads, 2·pairs] rotated by cosSin [rows, pairs, 2].</summary>
    public void RotatePairs(nint stream, ulong x, ulong cosSin, long rows, int heads, int pairs)
    {
        void** a = stackalloc void*[5];
        a[0] = &x;
        a[1] = &cosSin;
        a[2] = &rows;
        a[3] = &heads;
        a[4] = &pairs;
        Launch("rotate_pairs", ElementwiseBlocks(rows * heads * pairs), ElementwiseThreads, stream, a);
    }

    public void SiluMul(nint stream, ulong gate, ulong up, ulong dst, long n)
    {
        void** a = stackalloc void*[4];
        a[0] = &gate;
        a[1] = &up;
        a[2] = &dst;
        a[3] = &n;
        Launch("silu_mul", ElementwiseBlocks(n), ElementwiseThreads, stream, a);
    }

    /// <summary>dst [rows, cols] = the first cols columns of src rows <paramref name="srcStride"/> floats apart (exact copy).</summary>
    public void CopyCols(nint stream, ulong src, long srcStride, ulong dst, long rows, int cols)
    {
        void** a = stackalloc void*[5];
        a[0] = &src;
        a[1] = &srcStride;
        a[2] = &dst;
        a[3] = &rows;
        a[4] = &cols;
        Launch("copy_cols", ElementwiseBlocks(rows * cols), ElementwiseThreads, stream, a);
    }

    /// <summary>x[r, c] *= factor[r] for x [rows, cols] (factor a device fp32 array).</summary>
    public void ScaleRows(nint stream, ulong x, ulong factor, long rows, int cols)
    {
        void** a = stackalloc void*[4];
        a[0] = &x;
        a[1] = &factor;
        a[2] = &rows;
        a[3] = &cols;
        Launch("scale_rows", ElementwiseBlocks(rows * cols), ElementwiseThreads, stream, a);
    }

    public void AddInPlace(nint stream, ulong dst, ulong src, long n)
    {
        void** a = stackalloc void*[3];
        a[0] = &dst;
        a[1] = &src;
        a[2] = &n;
        Launch("add_inplace", ElementwiseBlocks(n), ElementwiseThreads, stream, a);
    }

    public void Rope(nint stream, ulong x, ulong positions, ulong invFreq, long rows, int heads, int half)
    {
        void** a = stackalloc void*[6];
        a[0] = &x;
        a[1] = &positions;
        a[2] = &invFreq;
        a[3] = &rows;
        a[4] = &heads;
        a[5] = &half;
        Launch("rope", ElementwiseBlocks(rows * heads * half), ElementwiseThreads, stream, a);
    }

    /// <summary>Attention for query rows [rowBase, rowBase + sliceRows); scratch holds sliceRows·heads·keys floats.</summary>
    public void Attention(nint stream, ulong q, ulong qpos, ulong k, ulong v, ulong output, ulong scratch, int sliceRows,
        int rowBase, int keys, int keyStart, in AttentionParams p)
    {
        int heads = p.Heads;
        int kvHeads = p.KvHeads;
        int headDim = p.HeadDim;
        float scale = p.Scale;
        int chunk = p.ChunkSize;
        void** a = stackalloc void*[14];
        a[0] = &q;
        a[1] = &qpos;
        a[2] = &k;
        a[3] = &v;
        a[4] = &output;
        a[5] = &scratch;
        a[6] = &keys;
        a[7] = &keyStart;
        a[8] = &heads;
        a[9] = &kvHeads;
        a[10] = &headDim;
        a[11] = &scale;
        a[12] = &chunk;
        a[13] = &rowBase;
        Launch("attention", (long)sliceRows * heads, ReduceThreads, stream, a);
    }

    /// <summary>Keys per split of the split-key attention (SPLIT_KEYS in kernels.cu).</summary>
    public const int SplitKeys = 256;

    /// <summary>
    /// Split-key attention for query rows [rowBase, rowBase + sliceRows): partial results per (row, head, split) into
    /// <paramref name="partial"/> (sliceRows·heads·splits·(headDim + 2) floats), then merged into
    /// <paramref name="output"/>. <paramref name="table"/> 0 = contiguous keys. <paramref name="meta"/> (when not 0): per
    /// query row (keys, keyStart, firstSlot, table offset), several sequences in one launch; <paramref name="keys"/> is then
    /// their maximum.
    /// </summary>
    public void AttentionSplit(nint stream, ulong q, ulong qpos, ulong k, ulong v, ulong table, int firstSlot, int blockSize, ulong meta, ulong partial,
        ulong output, int sliceRows, int rowBase, int keys, int keyStart, in AttentionParams p) =>
        AttentionSplit(stream, KvCacheDType.Fp32, q, qpos, k, v, 0, 0, table, firstSlot, blockSize, meta, partial, output, sliceRows, rowBase, keys, keyStart, p);

    /// <summary>
    /// The split-key attention over keys and values kept in <paramref name="dtype"/> (FP8: <paramref name="kScale"/>,
    /// <paramref name="vScale"/> hold one scale per row).
    /// </summary>
    public void AttentionSplit(nint stream, KvCacheDType dtype, ulong q, ulong qpos, ulong k, ulong v, ulong kScale, ulong vScale, ulong table,
        int firstSlot, int blockSize, ulong meta, ulong partial, ulong output, int sliceRows, int rowBase, int keys, int keyStart, in AttentionParams p)
    {
        int heads = p.Heads;
        int kvHeads = p.KvHeads;
        int headDim = p.HeadDim;
        float scale = p.Scale;
        int chunk = p.ChunkSize;
        int splits = (keys + SplitKeys - 1) / SplitKeys;
        void** a = stackalloc void*[20];
        int i = 0;
        a[i++] = &q;
        a[i++] = &qpos;
        a[i++] = &k;
        a[i++] = &v;
        if (dtype == KvCacheDType.Fp8E4M3)
        {
            a[i++] = &kScale;
            a[i++] = &vScale;
        }
        a[i++] = &table;
        a[i++] = &firstSlot;
        a[i++] = &blockSize;
        a[i++] = &meta;
        a[i++] = &partial;
        a[i++] = &keys;
        a[i++] = &keyStart;
        a[i++] = &heads;
        a[i++] = &kvHeads;
        a[i++] = &headDim;
        a[i++] = &scale;
        a[i++] = &chunk;
        a[i++] = &rowBase;
        a[i] = &splits;
        string kernel = dtype switch
        {
            KvCacheDType.Bf16 => "attention_split_bf16",
            KvCacheDType.Fp8E4M3 => "attention_split_fp8",
            _ => "attention_split",
        };
        Launch(kernel, (long)sliceRows * heads * splits, ReduceThreads, stream, a);
        void** c = stackalloc void*[6];
        c[0] = &partial;
        c[1] = &output;
        c[2] = &splits;
        c[3] = &heads;
        c[4] = &headDim;
        c[5] = &rowBase;
        Launch("attention_combine", (long)sliceRows * heads, ReduceThreads, stream, c);
    }

    /// <summary>
    /// Row r of k/v [rows, width] (fp32) to row slots[r] of the store, rounded to <paramref name="dtype"/> (FP8: with
    /// each row's scale into <paramref name="scaleK"/>/<paramref name="scaleV"/>).
    /// </summary>
    public void KvScatter(nint stream, KvCacheDType dtype, ulong k, ulong v, ulong slots, ulong storeK, ulong storeV, ulong scaleK, ulong scaleV,
        long rows, int width)
    {
        if (dtype == KvCacheDType.Fp8E4M3)
        {
            void** f = stackalloc void*[8];
            f[0] = &k;
            f[1] = &v;
            f[2] = &slots;
            f[3] = &storeK;
            f[4] = &storeV;
            f[5] = &scaleK;
            f[6] = &scaleV;
            f[7] = &width;
            Launch("kv_scatter_fp8", rows, ReduceThreads, stream, f);
            return;
        }
        KvScatter(stream, k, v, slots, storeK, storeV, rows, width, dtype == KvCacheDType.Bf16 ? "kv_scatter_bf16" : "kv_scatter");
    }

    private void KvScatter(nint stream, ulong k, ulong v, ulong slots, ulong storeK, ulong storeV, long rows, int width, string kernel)
    {
        void** a = stackalloc void*[7];
        a[0] = &k;
        a[1] = &v;
        a[2] = &slots;
        a[3] = &storeK;
        a[4] = &storeV;
        a[5] = &rows;
        a[6] = &width;
        Launch(kernel, ElementwiseBlocks(rows * width), ElementwiseThreads, stream, a);
    }

    /// <summary>Rows per block of <see cref="Fp8Gemm"/> (F8_TM in kernels.cu).</summary>
    public const int Fp8TileRows = 32;

    /// <summary>Columns per block of <see cref="Fp8Gemm"/> (F8_TN in kernels.cu).</summary>
    public const int Fp8TileColumns = 64;

    /// <summary>
    /// y [rows, n] = (x [rows, k] · decode(w [n, k])) · scales[c] (· rowScales[r] when not 0): one fmaf chain per element
    /// in k order, as the CPU backend computes it.
    /// </summary>
    public void Fp8Gemm(nint stream, ulong x, ulong w, ulong scales, ulong rowScales, ulong y, int rows, int k, int n)
    {
        void** a = stackalloc void*[8];
        a[0] = &x;
        a[1] = &w;
        a[2] = &scales;
        a[3] = &rowScales;
        a[4] = &y;
        a[5] = &rows;
        a[6] = &k;
        a[7] = &n;
        long blocks = (long)((rows + Fp8TileRows - 1) / Fp8TileRows) * ((n + Fp8TileColumns - 1) / Fp8TileColumns);
        Launch("fp8_gemm", blocks, 256, stream, a);
    }

    /// <summary>W8A8 input pass: q [rows, cols] = E4M3 values of x quantized per row, rowScales [rows] = each row's scale.</summary>
    public void Fp8QuantRows(nint stream, ulong x, ulong q, ulong rowScales, long rows, int cols)
    {
        void** a = stackalloc void*[4];
        a[0] = &x;
        a[1] = &q;
        a[2] = &rowScales;
        a[3] = &cols;
        Launch("fp8_quant_rows", rows, ReduceThreads, stream, a);
    }

    /// <summary>h [rows, inter] = silu(t[:, :inter]) · t[:, inter:], fp32 in and out.</summary>
    public void SwiGluF32(nint stream, ulong t, ulong h, long rows, int inter)
    {
        void** a = stackalloc void*[4];
        a[0] = &t;
        a[1] = &h;
        a[2] = &rows;
        a[3] = &inter;
        Launch("swiglu_f32", ElementwiseBlocks(rows * inter), ElementwiseThreads, stream, a);
    }

    public void SoftmaxRows(nint stream, ulong x, long rows, int cols)
    {
        void** a = stackalloc void*[2];
        a[0] = &x;
        a[1] = &cols;
        Launch("softmax_rows", rows, ReduceThreads, stream, a);
    }

    public void ArgmaxRows(nint stream, ulong x, ulong ids, long rows, int cols)
    {
        void** a = stackalloc void*[3];
        a[0] = &x;
        a[1] = &ids;
        a[2] = &cols;
        Launch("argmax_rows", rows, ReduceThreads, stream, a);
    }

    public void TopKRows(nint stream, ulong x, ulong ids, ulong values, long rows, int cols, int k)
    {
        void** a = stackalloc void*[5];
        a[0] = &x;
        a[1] = &ids;
        a[2] = &values;
        a[3] = &cols;
        a[4] = &k;
        Launch("topk_rows", rows, ReduceThreads, stream, a);
    }
}
