using System.Diagnostics;

namespace Distributed.Integration.Tests;

/// <summary>Helpers for the helper servers (redis-server, postgres) that tests start.</summary>
internal static class TestProcesses
{
    /// <summary>Kills <paramref name="process"/> with its children, waits for it, and disposes it; already gone is fine.</summary>
    public static async Task KillAndDisposeAsync(Process process)
    {
        try
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
        }
        catch (InvalidOperationException)
        {
            // Already gone.
        }
        process.Dispose();
    }
}
