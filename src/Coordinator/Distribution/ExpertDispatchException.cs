using Grpc.Core;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// A routed-expert dispatch failed: a worker rejected the request, did not answer within the deadline, sent a
/// malformed reply, or no serving placement plan is available. The message names the layer, the worker and why.
/// </summary>
public sealed class ExpertDispatchException : Exception
{
    /// <summary>Creates the exception.</summary>
    public ExpertDispatchException(StatusCode status, string message, string? workerId = null, int layer = -1, Exception? inner = null)
        : base(message, inner)
    {
        Status = status;
        WorkerId = workerId;
        Layer = layer;
    }

    /// <summary>The gRPC status that describes the failure (DeadlineExceeded for an unresponsive worker).</summary>
    public StatusCode Status { get; }

    /// <summary>The worker involved, if any.</summary>
    public string? WorkerId { get; }

    /// <summary>The MoE layer, or -1.</summary>
    public int Layer { get; }
}
