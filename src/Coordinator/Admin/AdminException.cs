using Distributed.Protocol.Grains;
using Grpc.Core;

namespace Distributed.Coordinator.Admin;

/// <summary>An admin call was refused; nothing changed. Carries the HTTP status, the gRPC status and a stable code.</summary>
public sealed class AdminException(int httpStatus, string code, string message, string? field = null, Exception? inner = null) : Exception(message, inner)
{
    /// <summary>HTTP status of the REST answer.</summary>
    public int HttpStatus { get; } = httpStatus;

    /// <summary>Stable error code (<see cref="AdminErrorBody.Code"/>).</summary>
    public string Code { get; } = code;

    /// <summary>The request field at fault, or null.</summary>
    public string? Field { get; } = field;

    /// <summary>The gRPC status of the same error.</summary>
    public StatusCode GrpcStatus => HttpStatus switch
    {
        400 => StatusCode.InvalidArgument,
        401 => StatusCode.Unauthenticated,
        404 => StatusCode.NotFound,
        409 => StatusCode.FailedPrecondition,
        503 => StatusCode.Unavailable,
        _ => StatusCode.Internal,
    };

    /// <summary>The exception for a refused plan change.</summary>
    public static AdminException From(PlanChangeError error)
    {
        ArgumentNullException.ThrowIfNull(error);
        int status = error.Code switch
        {
            PlanChangeError.UnknownWorker => 404,
            PlanChangeError.UnknownExpert or PlanChangeError.InvalidArgument => 400,
            _ => 409,
        };
        return new AdminException(status, error.Code, error.Message, error.Field);
    }

    /// <summary>The body of the REST answer.</summary>
    public AdminErrorResponse ToResponse() => new(new AdminErrorBody(Code, Message, Field));
}
