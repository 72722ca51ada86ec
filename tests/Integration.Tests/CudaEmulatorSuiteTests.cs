using System.Globalization;
using System.Text.RegularExpressions;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests;

/// <summary>
/// The CUDA tests of the kernel, golden and expert-worker suites (trait <c>Category=Gpu</c>), run on the CUDA emulator so that the CUDA
/// backend's code is checked on every machine with g++, not only where a GPU is lent. Each suite runs as a child
/// <c>dotnet test</c> of its already-built assembly with <c>DISTRIBUTED_CUDA_LIBRARY_PATH</c> set for that child alone:
/// in this process the variable would switch every <c>--backend auto</c> test to the emulator. On the emulator no CUDA
/// test may skip (a skip would hide a test that no longer runs anywhere): every one of them must pass.
/// </summary>
public sealed class CudaEmulatorSuiteTests(ITestOutputHelper output)
{
    [CudaEmulatorFact]
    public Task KernelSuite_GpuTests_AllPassOnTheEmulator() => RunSuiteAsync("Kernels.Tests", minimumTests: 25);

    [CudaEmulatorFact]
    public Task GoldenSuite_GpuTests_AllPassOnTheEmulator() => RunSuiteAsync("Golden.Tests", minimumTests: 25);

    [CudaEmulatorFact]
    public Task ExpertWorkerSuite_GpuTests_AllPassOnTheEmulator() => RunSuiteAsync("ExpertWorker.Tests", minimumTests: 24);

    private async Task RunSuiteAsync(string project, int minimumTests)
    {
        CudaEmulatorFactAttribute.Require(CudaEmulator.Missing);
        // The sibling test project's output of the same configuration and framework as this assembly.
        string here = AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar);
        string framework = Path.GetFileName(here);
        string configuration = Path.GetFileName(Path.GetDirectoryName(here)!);
        string assembly = Path.Combine(TestPaths.Root, "tests", project, "bin", configuration, framework, $"Distributed.{project}.dll");
        Assert.True(File.Exists(assembly), $"{assembly} is not built (build the solution or tests/{project} in {configuration} first)");

        var (code, stdout) = await TestProcesses.RunStreamedAsync("dotnet", TestPaths.Root,
            ["test", assembly, "--filter", "Category=Gpu", "--logger", "console;verbosity=normal"],
            new Dictionary<string, string>
            {
                ["DISTRIBUTED_CUDA_LIBRARY_PATH"] = CudaEmulator.Directory,
                ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1",
                ["DOTNET_NOLOGO"] = "1",
            },
            TimeSpan.FromMinutes(10), output, project);

        // vstest's summary of an assembly run: "Total tests: N", then "Passed: N" / "Failed: N" / "Skipped: N" where non-zero.
        var total = Line("Total tests").Match(stdout);
        Assert.True(total.Success, $"{project} on the emulator printed no test summary (exit code {code})");
        int Count(string name) => Line(name).Match(stdout) is { Success: true } m ? int.Parse(m.Groups["n"].Value, CultureInfo.InvariantCulture) : 0;
        Assert.True(Count("Failed") == 0 && code == 0, $"{project} on the emulator: {Count("Failed")} failed (exit code {code}); see the test output");
        Assert.True(Count("Skipped") == 0, $"{project} on the emulator: {Count("Skipped")} CUDA tests skipped; on the emulator each must run");
        Assert.True(Count("Passed") >= minimumTests, $"{project} on the emulator ran {Count("Passed")} CUDA tests, fewer than the {minimumTests} it has");
    }

    private static Regex Line(string name) => new($@"^\s*{name}:\s*(?<n>\d+)\s*$", RegexOptions.Multiline);
}
