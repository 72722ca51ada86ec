using System.Text.RegularExpressions;
using Distributed.Kernels.Cuda;

namespace Distributed.Kernels.Tests.Cuda;

/// <summary>
/// What can be checked about the NVRTC kernel source without a GPU (NVRTC itself compiles it on the device, where a
/// failure carries NVRTC's log): it is embedded, self-contained and declares every entry point the host launches.
/// </summary>
[Trait("Category", "Unit")]
public sealed partial class CudaKernelSourceTests
{
    [Fact]
    public void Source_IsEmbeddedAndDeclaresEveryLaunchedEntryPoint()
    {
        string source = CudaKernelModule.LoadSource();

        Assert.Contains("#define KERNEL extern \"C\" __global__", source, StringComparison.Ordinal);
        foreach (string name in CudaKernelModule.EntryPoints)
        {
            Assert.Matches($@"KERNEL void {name}\(", source);
        }
        var declared = KernelDeclaration().Matches(source).Select(m => m.Groups[1].Value).ToList();
        Assert.Equal(CudaKernelModule.EntryPoints.Order(StringComparer.Ordinal), declared.Order(StringComparer.Ordinal));
    }

    [Fact]
    public void Source_HasNoIncludesAndBalancedBraces()
    {
        string source = CudaKernelModule.LoadSource();

        string code = LineComment().Replace(source, "");
        // NVRTC ships no C library headers: the source must not include any.
        Assert.DoesNotContain("#include", code, StringComparison.Ordinal);
        Assert.Equal(code.Count(c => c == '{'), code.Count(c => c == '}'));
        Assert.Equal(code.Count(c => c == '('), code.Count(c => c == ')'));
    }

    [Fact]
    public void Source_IsPlainAscii()
    {
        string source = CudaKernelModule.LoadSource();

        int offender = source.AsSpan().IndexOfAnyExceptInRange('\0', '\x7f');

        Assert.True(offender < 0, $"non-ASCII character at offset {offender}: NVRTC front ends need not accept it");
    }

    [Fact]
    public void Source_ReduceThreads_MatchesTheHostLaunchWidth()
    {
        string source = CudaKernelModule.LoadSource();

        Assert.Matches($@"#define REDUCE_THREADS {CudaKernelModule.ReduceThreads}\b", source);
        Assert.Equal(0, CudaKernelModule.ReduceThreads & (CudaKernelModule.ReduceThreads - 1));
    }

    [Fact]
    public void Emulator_RegistersExactlyTheSameEntryPoints()
    {
        string emulator = File.ReadAllText(Path.Combine(CudaTestEnvironment.RepositoryRoot(), "tests", "Kernels.Tests", "Cuda", "Emulator", "fake_cuda.cpp"));

        var registered = EmulatorEntry().Matches(emulator).Select(m => m.Groups[1].Value).ToList();

        Assert.Equal(CudaKernelModule.EntryPoints.Order(StringComparer.Ordinal), registered.Order(StringComparer.Ordinal));
    }

    [GeneratedRegex(@"KERNEL void (\w+)\(")]
    private static partial Regex KernelDeclaration();

    [GeneratedRegex(@"//[^\n]*")]
    private static partial Regex LineComment();

    [GeneratedRegex(@"\{""(\w+)"", invoker\(\1\), arg_sizes\(\1\)\}")]
    private static partial Regex EmulatorEntry();
}
