using Distributed.Protocol.Grpc;
using Grpc.Core;

namespace Distributed.Protocol.Wire;

/// <summary>
/// Server base of the <c>ExpertWorker</c> service bound through <see cref="ExpertWorkerMethods"/> (what Grpc.Tools
/// would generate, but with the <see cref="TensorFrame{THeader}"/> marshallers). Unoverridden methods answer
/// UNIMPLEMENTED.
/// </summary>
[BindServiceMethod(typeof(ExpertWorkerServiceBase), nameof(BindService))]
public abstract class ExpertWorkerServiceBase
{
    /// <summary>The versioned handshake.</summary>
    public virtual Task<HelloReply> Hello(HelloRequest request, ServerCallContext context)
        => throw new RpcException(new Status(StatusCode.Unimplemented, "Hello"));

    /// <summary>The long-lived data-plane stream.</summary>
    public virtual Task Dispatch(IAsyncStreamReader<TensorFrame<ExpertRequest>> requestStream,
        IServerStreamWriter<TensorFrame<ExpertReply>> responseStream, ServerCallContext context)
        => throw new RpcException(new Status(StatusCode.Unimplemented, "Dispatch"));

    /// <summary>One request, one reply.</summary>
    public virtual Task<TensorFrame<ExpertReply>> DispatchOnce(TensorFrame<ExpertRequest> request, ServerCallContext context)
        => throw new RpcException(new Status(StatusCode.Unimplemented, "DispatchOnce"));

    /// <summary>Binds the service's methods (called by the gRPC server).</summary>
    public static void BindService(ServiceBinderBase binder, ExpertWorkerServiceBase? service)
    {
        ArgumentNullException.ThrowIfNull(binder);
        binder.AddMethod(ExpertWorkerMethods.Hello, service is null ? null : service.Hello);
        binder.AddMethod(ExpertWorkerMethods.Dispatch, service is null ? null : service.Dispatch);
        binder.AddMethod(ExpertWorkerMethods.DispatchOnce, service is null ? null : service.DispatchOnce);
    }
}
