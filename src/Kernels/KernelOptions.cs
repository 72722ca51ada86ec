namespace Distributed.Kernels;

/// <summary>Which backend to use.</summary>
public enum KernelBackendKind
{
    /// <summary>CUDA when a device and its libraries are present, else CPU.</summary>
    Auto = 0,
    /// <summary>The CPU backend.</summary>
    Cpu = 1,
    /// <summary>The CUDA backend; fails at startup with a clear message when no device is usable.</summary>
    Cuda = 2,
}

/// <summary>Kernel backend selection.</summary>
public sealed class KernelOptions
{
    /// <summary>Configuration section name.</summary>
    public const string SectionName = "Kernels";

    /// <summary>Backend to use. Default: <see cref="KernelBackendKind.Cpu"/> for tests; hosts pass Auto.</summary>
    public KernelBackendKind Backend { get; set; } = KernelBackendKind.Cpu;

    /// <summary>CPU worker threads for one kernel call; 0 = <see cref="Environment.ProcessorCount"/>. Default: 0.</summary>
    public int Threads { get; set; }

    /// <summary>Arithmetic of the CPU backend's matmuls. Default: <see cref="CpuMatMulPrecision.Fp32"/>.</summary>
    public CpuMatMulPrecision CpuPrecision { get; set; }

    /// <summary>CUDA device ordinal. Default: 0.</summary>
    public int DeviceOrdinal { get; set; }

    /// <summary>
    /// On the CUDA backend, run each forward step device-resident (<c>Kernels:DevicePath</c>, CLI <c>--device-path on|off</c>):
    /// a decoder layer's activations stay in device memory and only the routed experts' rows, their results and the
    /// logits cross PCIe (<see cref="Cuda.CudaBackendOptions.DevicePath"/>). Off: every op stages its inputs and results
    /// through the host (the path before issue #12). Ignored by the CPU backend. Default: true.
    /// </summary>
    public bool DevicePath { get; set; } = true;

    /// <summary>
    /// On the CUDA device path, capture each step's work between host synchronizations as CUDA graphs per row bucket and
    /// replay them (<c>Kernels:CudaGraphs</c>, CLI <c>--cuda-graphs on|off</c>; <see cref="Cuda.CudaBackendOptions.CudaGraphs"/>).
    /// Ignored by the CPU backend and with the device path off. Default: false (not yet measured on a GPU).
    /// </summary>
    public bool CudaGraphs { get; set; }
}

/// <summary>The arithmetic of the CPU backend's matmuls and FFNs (weights are bf16 either way).</summary>
public enum CpuMatMulPrecision
{
    /// <summary>
    /// fp32 activations times bf16 weights widened to fp32, fp32 FMA in order over k: the precision the golden
    /// fixtures are checked at. Runs on every x86-64 and Arm64 CPU.
    /// </summary>
    Fp32 = 0,

    /// <summary>
    /// Activations rounded to bf16 at each matmul input, bf16 × bf16 products accumulated in fp32 with AVX512-BF16
    /// (<c>VDPBF16PS</c>), about 1.6× the multiply-adds per cycle of <see cref="Fp32"/> (what llama.cpp's BF16 path
    /// computes). Still batch invariant; logits differ from <see cref="Fp32"/> by the bf16 rounding of activations.
    /// Needs Linux on x86-64 with AVX512-BF16 (Zen 4 and later, Sapphire Rapids and later); refused elsewhere.
    /// </summary>
    Bf16 = 1,
}
