using Distributed.Protocol.Contracts;

namespace Distributed.Protocol.Wire;

/// <summary>What a worker serves right now, as the validator needs it.</summary>
public interface IShardView
{
    /// <summary>The model the worker loaded.</summary>
    ModelDescriptor Model { get; }

    /// <summary>The newest placement-plan version this worker serves.</summary>
    ulong PlanVersion { get; }

    /// <summary>
    /// True when requests routed with plan <paramref name="version"/> are served. During a staged plan change a worker
    /// serves two versions at once (the active one and the one it staged, or the one it just left during the retire
    /// grace period); otherwise only <see cref="PlanVersion"/>.
    /// </summary>
    bool AcceptsPlanVersion(ulong version) => version == PlanVersion;

    /// <summary>Largest accepted row count per request.</summary>
    int MaxRowsPerDispatch { get; }

    /// <summary>True when the worker holds (and serves) this expert.</summary>
    bool Holds(int layer, int expert);
}
