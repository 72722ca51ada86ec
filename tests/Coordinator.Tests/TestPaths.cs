namespace Distributed.Coordinator.Tests;

/// <summary>Finds the repository's test fixtures from the test binary's folder.</summary>
internal static class TestPaths
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

    public static string RepoRoot => Root.Value;

    public static string Fixture(string name) => Path.Combine(RepoRoot, "tests", "fixtures", name);

    /// <summary>The built coordinator entry assembly of the same configuration as this test binary.</summary>
    public static string CoordinatorDll
    {
        get
        {
            string config = AppContext.BaseDirectory.Contains($"{Path.DirectorySeparatorChar}Debug{Path.DirectorySeparatorChar}", StringComparison.Ordinal) ? "Debug" : "Release";
            return Path.Combine(RepoRoot, "src", "Coordinator", "bin", config, "net10.0", "Distributed.Coordinator.dll");
        }
    }
}
