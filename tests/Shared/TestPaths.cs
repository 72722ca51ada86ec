namespace Distributed.Tests.Shared;

/// <summary>Finds the repository (the folder holding Distributed.sln), its fixtures and the built coordinator. One copy,
/// compiled into every test project that needs it.</summary>
internal static class TestPaths
{
    private static readonly Lazy<string> LazyRoot = new(() =>
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

    public static string Root => LazyRoot.Value;

    public static string Fixture(string name) => Path.Combine(Root, "tests", "fixtures", name);

    /// <summary>The coordinator built beside this test assembly (a project reference), else the one in its own bin folder
    /// of the same configuration.</summary>
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
            return Path.Combine(Root, "src", "Coordinator", "bin", config, "net10.0", "Distributed.Coordinator.dll");
        }
    }
}
