namespace Distributed.Protocol.Wire;

/// <summary>
/// Version of the data-plane protocol (<c>Protos/expert_worker.proto</c>). Peers with a different
/// <see cref="Major"/> refuse each other in the handshake; a different <see cref="Minor"/> only adds optional fields.
/// </summary>
public static class ProtocolVersion
{
    /// <summary>Incompatible changes bump this.</summary>
    public const uint Major = 1;

    /// <summary>Backward-compatible additions bump this (1: <c>HelloReply.kernel_numerics</c>; 2:
    /// <c>HelloReply.cluster_managed</c>; 3: the shared-memory transport passes a sealed memfd by descriptor,
    /// <c>ROW_TRANSPORT_SHARED_MEMORY_FD</c> and <c>HelloReply.shared_ring</c>, and the path-based one is gone: a
    /// coordinator of 1.0-1.2 offering it gets inline rows; 4: the ring doorbell, <c>SharedRingOffer.doorbell</c> and
    /// <c>SharedRingRendezvous.doorbell</c>, see <see cref="RingControl"/>: peers of 1.3 leave it off and keep one
    /// stream message per request).</summary>
    public const uint Minor = 4;

    /// <summary>Call-metadata key carrying the caller's protocol major version on <c>Dispatch</c>.</summary>
    public const string MajorHeader = "x-protocol-major";

    /// <summary>Call-metadata key carrying the caller's model fingerprint on <c>Dispatch</c>.</summary>
    public const string FingerprintHeader = "x-model-fingerprint";

    /// <summary>Call-metadata key naming the Hello session whose transport a <c>Dispatch</c> stream uses.</summary>
    public const string SessionHeader = "x-session-id";
}
