namespace Distributed.Integration.Tests;

/// <summary>
/// A fact that needs tools a fresh machine may lack (redis-server, network namespaces, a headless browser). Where they
/// are missing it is reported as skipped, naming what to install — except where <see cref="RequireVariable"/> is 1:
/// <c>.ci/run</c> sets it after installing them, so there the test runs and fails on a missing tool (through
/// <see cref="Require"/>) instead of passing CI by being skipped.
/// </summary>
public abstract class ToolFactAttribute : FactAttribute
{
    /// <summary>Environment variable that turns the skip into a failure.</summary>
    public const string RequireVariable = "DISTRIBUTED_REQUIRE_TOOLS";

    /// <param name="missing">What is missing, or null when the test can run.</param>
    protected ToolFactAttribute(string? missing)
    {
        if (missing is not null && !Required)
        {
            Skip = missing;
        }
    }

    private static bool Required => Environment.GetEnvironmentVariable(RequireVariable) == "1";

    /// <summary>First line of such a test: fails, naming <paramref name="missing"/>, when the tools are not there.</summary>
    public static void Require(string? missing)
    {
        if (missing is not null)
        {
            Assert.Fail($"{missing} ({RequireVariable}=1: this test must run on this machine)");
        }
    }
}
