using Distributed.Protocol.Grpc;
using Google.Protobuf;
using Grpc.Core;

namespace Distributed.Protocol.Wire;

/// <summary>
/// The <c>ExpertWorker</c> service's methods as <c>expert_worker.proto</c> declares them, with
/// <see cref="TensorFrameMarshaller"/> for the two data-plane messages (same bytes on the wire as the generated
/// stubs, fewer copies). Server and client both bind through these descriptors.
/// </summary>
public static class ExpertWorkerMethods
{
    /// <summary><c>distributed.expertworker.v1.ExpertWorker</c>, from the proto descriptor.</summary>
    public static readonly string ServiceName = ExpertWorkerReflection.Descriptor.Services[0].FullName;

    /// <summary>Marshaller of inbound/outbound requests.</summary>
    public static readonly Marshaller<TensorFrame<ExpertRequest>> RequestMarshaller = TensorFrameMarshaller.Create(ExpertRequest.Parser);

    /// <summary>Marshaller of replies.</summary>
    public static readonly Marshaller<TensorFrame<ExpertReply>> ReplyMarshaller = TensorFrameMarshaller.Create(ExpertReply.Parser);

    /// <summary>The versioned handshake.</summary>
    public static readonly Method<HelloRequest, HelloReply> Hello = new(
        MethodType.Unary, ServiceName, "Hello", ProtoMarshaller(HelloRequest.Parser), ProtoMarshaller(HelloReply.Parser));

    /// <summary>The long-lived data-plane stream.</summary>
    public static readonly Method<TensorFrame<ExpertRequest>, TensorFrame<ExpertReply>> Dispatch = new(
        MethodType.DuplexStreaming, ServiceName, "Dispatch", RequestMarshaller, ReplyMarshaller);

    /// <summary>One request, one reply.</summary>
    public static readonly Method<TensorFrame<ExpertRequest>, TensorFrame<ExpertReply>> DispatchOnce = new(
        MethodType.Unary, ServiceName, "DispatchOnce", RequestMarshaller, ReplyMarshaller);

    // A message that does not parse is the caller's error (INVALID_ARGUMENT), not an exception of the server: gRPC
    // would answer UNKNOWN and log a stack trace for every such message.
    private static Marshaller<T> ProtoMarshaller<T>(MessageParser<T> parser)
        where T : class, IMessage<T>
        => Marshallers.Create(m => m.ToByteArray(), bytes =>
        {
            try
            {
                return parser.ParseFrom(bytes);
            }
            catch (InvalidProtocolBufferException ex)
            {
                throw new RpcException(new Status(StatusCode.InvalidArgument, $"malformed {typeof(T).Name}: {ex.Message}"));
            }
        });
}
