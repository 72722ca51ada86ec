using Distributed.Protocol.Contracts;

namespace Distributed.Protocol.Wire;

/// <summary>What a worker serves right now, as the validator needs it.</summary>
public interface IShardView
{
    /// <summary>The model the worker loaded.</summary>
    ModelDescriptor Model { get; }

    /// <summary>The placement-plan version of the experts currently held.</summary>
    ulong PlanVersion { get; }

    /// <summary>Largest accepted row count per request.</summary>
    int MaxRowsPerDispatch { get; }

    /// <summary>True when the worker holds (and serves) this expert.</summary>
    bool Holds(int layer, int expert);
}
