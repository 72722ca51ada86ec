namespace Distributed.Integration.Tests.Serving;

/// <summary>Finds the repository (the folder with Distributed.sln), its fixtures and the built coordinator.</summary>
internal static class ServingTestPaths
{
    private static readonly Lazy<string> Root = new(() =>
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "Distributed.sln")))
            {
                return dir.FullName;
            }
        }
        throw new InvalidOperationException($"Distributed.sln not found above {AppContext.BaseDirectory}");
    });

    public static string Fixture(string name) => Path.Combine(Root.Value, "tests", "fixtures", name);

    /// <summary>The coordinator built beside this test assembly (it is a project reference), else the one in its own bin folder.</summary>
    public static string CoordinatorDll
    {
        get
        {
            string local = Path.Combine(AppContext.BaseDirectory, "Distributed.Coordinator.dll");
            if (File.Exists(local) && File.Exists(Path.ChangeExtension(local, ".runtimeconfig.json")))
            {
                return local;
            }
            string config = AppContext.BaseDirectory.Contains($"{Path.DirectorySeparatorChar}Debug{Path.DirectorySeparatorChar}", StringComparison.Ordinal) ? "Debug" : "Release";
            return Path.Combine(Root.Value, "src", "Coordinator", "bin", config, "net10.0", "Distributed.Coordinator.dll");
        }
    }
}
