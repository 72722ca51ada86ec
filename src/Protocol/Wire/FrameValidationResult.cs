using Distributed.Protocol.Grpc;
using Google.Protobuf.WellKnownTypes;
using Google.Rpc;
using Grpc.Core;

namespace Distributed.Protocol.Wire;

/// <summary>The verdict on one frame: OK, or a gRPC status code with a message and the offending fields.</summary>
public sealed class FrameValidationResult
{
    private FrameValidationResult(StatusCode code, string message, IReadOnlyList<FieldViolation> violations)
    {
        Code = code;
        Message = message;
        Violations = violations;
    }

    /// <summary>The frame is valid.</summary>
    public static FrameValidationResult Ok { get; } = new(StatusCode.OK, "", []);

    /// <summary><see cref="StatusCode.OK"/> or the status the peer gets.</summary>
    public StatusCode Code { get; }

    /// <summary>Human-readable summary naming the fields.</summary>
    public string Message { get; }

    /// <summary>Per-field problems (for <see cref="StatusCode.InvalidArgument"/> and <see cref="StatusCode.FailedPrecondition"/>).</summary>
    public IReadOnlyList<FieldViolation> Violations { get; }

    /// <summary>True for OK.</summary>
    public bool IsOk => Code == StatusCode.OK;

    /// <summary>A failure with the given code.</summary>
    public static FrameValidationResult Fail(StatusCode code, string message, params IReadOnlyList<FieldViolation> violations)
    {
        if (code == StatusCode.OK)
        {
            throw new ArgumentException("a failure needs a non-OK code", nameof(code));
        }
        return new FrameValidationResult(code, message, violations);
    }

    /// <summary>A failure from a list of field violations; the message lists them all.</summary>
    public static FrameValidationResult FromViolations(StatusCode code, string summary, IReadOnlyList<FieldViolation> violations)
        => Fail(code, $"{summary}: " + string.Join("; ", violations.Select(v => $"{v.Field}: {v.Description}")), violations);

    /// <summary>The status as carried in an <c>ExpertReply</c>.</summary>
    public ReplyStatus ToReplyStatus()
    {
        var status = new ReplyStatus { Code = (int)Code, Message = Message };
        status.Violations.AddRange(Violations);
        return status;
    }

    /// <summary>
    /// An <see cref="RpcException"/> with this status and a <c>google.rpc.Status</c> in the trailers carrying a
    /// <c>google.rpc.BadRequest</c> (InvalidArgument) or <c>google.rpc.PreconditionFailure</c> (FailedPrecondition)
    /// listing the violations.
    /// </summary>
    public RpcException ToRpcException()
    {
        var status = new Google.Rpc.Status { Code = (int)Code, Message = Message };
        if (Violations.Count > 0)
        {
            if (Code == StatusCode.FailedPrecondition)
            {
                var failure = new PreconditionFailure();
                failure.Violations.AddRange(Violations.Select(v => new PreconditionFailure.Types.Violation
                {
                    Type = "SHARD", Subject = v.Field, Description = v.Description,
                }));
                status.Details.Add(Any.Pack(failure));
            }
            else
            {
                var bad = new BadRequest();
                bad.FieldViolations.AddRange(Violations.Select(v => new BadRequest.Types.FieldViolation
                {
                    Field = v.Field, Description = v.Description,
                }));
                status.Details.Add(Any.Pack(bad));
            }
        }
        return status.ToRpcException();
    }

    /// <inheritdoc />
    public override string ToString() => IsOk ? "OK" : $"{Code}: {Message}";
}
