namespace Distributed.Coordinator.Tests.Serving.Tokenization;

/// <summary>Locates the repository's fixtures by walking up from the test binaries to the folder with Distributed.sln.</summary>
internal static class TokenizerTestPaths
{
    private static readonly Lazy<string> Root = new(FindRoot);

    public static string RepositoryRoot => Root.Value;

    public static string Fixture(string name) => Path.Combine(Root.Value, "tests", "fixtures", name);

    private static string FindRoot()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (File.Exists(Path.Combine(directory.FullName, "Distributed.sln")))
            {
                return directory.FullName;
            }
        }

        throw new InvalidOperationException($"No Distributed.sln above {AppContext.BaseDirectory}.");
    }
}
