using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using Distributed.Protocol.Contracts;
using Grpc.Core;

namespace Distributed.Integration.Tests;

/// <summary>
/// The cluster credential of this test run. Before any test runs, <c>DISTRIBUTED_CLUSTER_TOKEN</c> is set for the test
/// process (a fresh token unless the environment already has one), so every worker and coordinator process a test
/// starts inherits it and every <c>DistributionOptions</c> created here sends it: authentication is on in every test.
/// Tests that need a worker without it (or with another one) say so in that process's environment.
/// </summary>
internal static class TestCredential
{
    /// <summary>The token.</summary>
    public static string Token => Environment.GetEnvironmentVariable(ClusterToken.EnvironmentVariable)!;

    /// <summary>The <c>authorization</c> metadata entry a data-plane call carries.</summary>
    public static Metadata.Entry Authorization => new(ClusterToken.MetadataKey, "Bearer " + Token);

    /// <summary>Call metadata holding only <see cref="Authorization"/>.</summary>
    public static Metadata Headers() => [Authorization];

    [ModuleInitializer]
    [SuppressMessage("Usage", "CA2255:The 'ModuleInitializer' attribute should not be used in libraries",
        Justification = "A test assembly: the credential must be in the process environment before any test starts a process.")]
    internal static void SetForThisRun()
    {
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable(ClusterToken.EnvironmentVariable)))
        {
            Environment.SetEnvironmentVariable(ClusterToken.EnvironmentVariable, ClusterToken.Generate());
        }
    }
}
