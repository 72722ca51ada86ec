using MessagePack;

namespace Distributed.Protocol.Grains;

/// <summary>
/// The persisted form of a <see cref="PlacementPlan"/>: MessagePack (array layout, keys as declared on the records),
/// prefixed by a 4-byte magic <c>"PPv1"</c>. Reading validates the plan before returning it.
/// </summary>
public static class PlacementPlanCodec
{
    private static ReadOnlySpan<byte> Magic => "PPv1"u8;

    private static readonly MessagePackSerializerOptions Options = MessagePackSerializerOptions.Standard
        .WithSecurity(MessagePackSecurity.UntrustedData);

    /// <summary>Encodes a plan.</summary>
    public static byte[] Serialize(PlacementPlan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        byte[] body = MessagePackSerializer.Serialize(plan, Options);
        var bytes = new byte[Magic.Length + body.Length];
        Magic.CopyTo(bytes);
        body.CopyTo(bytes.AsSpan(Magic.Length));
        return bytes;
    }

    /// <summary>Decodes and validates a plan.</summary>
    /// <exception cref="FormatException">Wrong magic, undecodable, or inconsistent; the message says which.</exception>
    public static PlacementPlan Deserialize(ReadOnlyMemory<byte> bytes)
    {
        if (bytes.Length < Magic.Length || !bytes.Span[..Magic.Length].SequenceEqual(Magic))
        {
            throw new FormatException("persisted placement plan does not start with the PPv1 magic");
        }
        PlacementPlan plan;
        try
        {
            plan = MessagePackSerializer.Deserialize<PlacementPlan>(bytes[Magic.Length..], Options)
                ?? throw new FormatException("persisted placement plan is nil");
        }
        catch (MessagePackSerializationException ex)
        {
            throw new FormatException($"persisted placement plan does not decode: {ex.Message}", ex);
        }
        plan.Validate();
        return plan;
    }
}
