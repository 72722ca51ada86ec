using System.Diagnostics;

namespace Distributed.Integration.Tests;

/// <summary>The CUDA emulator (<c>tests/Kernels.Tests/Cuda/Emulator</c>), built once per test run into a temporary folder.</summary>
internal static class CudaEmulator
{
    private static readonly Lazy<string> s_directory = new(Build);

    /// <summary>What is missing to build it (bash, g++), or null.</summary>
    public static string? Missing => TestProcesses.OnPath("g++") && TestProcesses.OnPath("bash") ? null : "needs g++ and bash to build the CUDA emulator (apt-get install g++)";

    /// <summary>The folder holding libcuda.so.1, libcublas.so.13 and libnvrtc.so.13 of the emulator.</summary>
    public static string Directory => s_directory.Value;

    private static string Build()
    {
        string dir = Path.Combine(Path.GetTempPath(), $"distributed-cuda-emulator-{Environment.ProcessId}");
        var psi = new ProcessStartInfo("bash") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(Path.Combine(TestPaths.Root, "tests", "Kernels.Tests", "Cuda", "Emulator", "build.sh"));
        psi.ArgumentList.Add(dir);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        string stderr = p.StandardError.ReadToEnd();
        if (!p.WaitForExit(TimeSpan.FromMinutes(3)))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException("the CUDA emulator's build.sh did not finish in 3 minutes");
        }
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"the CUDA emulator's build.sh failed ({p.ExitCode}): {stdout.Result}{stderr}");
        }
        AppDomain.CurrentDomain.ProcessExit += (_, _) =>
        {
            try
            {
                System.IO.Directory.Delete(dir, recursive: true);
            }
            catch (IOException)
            {
            }
        };
        return dir;
    }
}

/// <summary>A fact that builds and uses the CUDA emulator: skipped where g++ is missing (a failure under <c>DISTRIBUTED_REQUIRE_TOOLS=1</c>).</summary>
internal sealed class CudaEmulatorFactAttribute() : ToolFactAttribute(CudaEmulator.Missing);
