using Distributed.Coordinator.Tools;

namespace Distributed.Coordinator.Cli;

public static partial class CommandLine
{
    private static int MakeSynthetic(IEnumerable<string> args, TextWriter stdout, TextWriter stderr)
    {
        var keys = SyntheticCheckpointOptions.OverrideKeys.Keys.ToList();
        var a = new CliArgs(args, ["out", "preset", .. keys], []);
        string outDir = a.Required("out");
        string presetName = a.Get("preset") ?? "tiny";
        if (!SyntheticCheckpointOptions.PresetNames.Contains(presetName))
        {
            throw new UsageException($"--preset must be one of {string.Join("|", SyntheticCheckpointOptions.PresetNames)}, got '{presetName}'");
        }
        var overrides = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var key in keys)
        {
            if (a.Get(key) is { } value)
            {
                overrides[key] = value;
            }
        }
        SyntheticCheckpointOptions options;
        try
        {
            options = SyntheticCheckpointOptions.Preset(presetName).WithOverrides(overrides);
            options.Validate();
        }
        catch (ArgumentException ex)
        {
            throw new UsageException(ex.Message);
        }
        SyntheticCheckpoint.Write(outDir, options, stderr);
        stdout.WriteLine(Path.GetFullPath(outDir));
        return 0;
    }
}
