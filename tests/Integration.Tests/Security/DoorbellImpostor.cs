using System.Net;
using System.Security.Cryptography;
using Distributed.ExpertWorker.Services;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Distributed.Integration.Tests.Security;

/// <summary>
/// A hostile worker for the coordinator's side of the ring doorbell: an in-process gRPC server on a loopback port that
/// shakes hands like a real worker (shared memory and the doorbell agreed, the ring attached through a real
/// <see cref="RingRendezvousListener"/>), keeps the Dispatch stream open, takes the requests out of the ring, and then
/// misbehaves as told instead of computing.
/// </summary>
public sealed class DoorbellImpostor : IAsyncDisposable
{
    /// <summary>What the impostor does with each doorbell request.</summary>
    public enum Misbehaviour
    {
        /// <summary>Takes it and never answers (never rings back).</summary>
        Silent,

        /// <summary>Publishes a reply slot whose bytes are no ExpertReply.</summary>
        Garbage,

        /// <summary>Publishes a reply slot announcing more bytes than a slot holds.</summary>
        ImpossibleLength,

        /// <summary>Answers "done" naming a ring region other than the request's.</summary>
        WrongRegion,
    }

    private readonly WebApplication _app;
    private readonly RingRendezvousListener _listener;
    private readonly SessionRegistry _sessions;

    private DoorbellImpostor(WebApplication app, RingRendezvousListener listener, SessionRegistry sessions, string address)
    {
        _app = app;
        _listener = listener;
        _sessions = sessions;
        Address = address;
    }

    /// <summary>The impostor's data-plane address (<c>http://127.0.0.1:PORT</c>).</summary>
    public string Address { get; }

    /// <summary>Doorbell requests taken so far.</summary>
    public int RequestsSeen => Volatile.Read(ref _seen);

    private int _seen;

    public static async Task<DoorbellImpostor> StartAsync(ModelDescriptor model, Misbehaviour how)
    {
        var sessions = new SessionRegistry(16, TimeSpan.Zero, TimeProvider.System);
        var listener = RingRendezvousListener.Start(Path.GetTempPath(), request => sessions.AttachRing(request, 1L << 30), _ => { });
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0, o => o.Protocols = HttpProtocols.Http2));
        builder.Services.AddGrpc();
        DoorbellImpostor? self = null;
        builder.Services.AddSingleton(_ => new Service(model, sessions, listener, how, () => Interlocked.Increment(ref self!._seen)));
        var app = builder.Build();
        app.MapGrpcService<Service>();
        await app.StartAsync();
        string address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        self = new DoorbellImpostor(app, listener, sessions, address);
        return self;
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
        await _listener.DisposeAsync();
        _sessions.Dispose();
    }

    private sealed class Service(ModelDescriptor model, SessionRegistry sessions, RingRendezvousListener listener, Misbehaviour how, Action seen)
        : ExpertWorkerServiceBase
    {
        public override Task<HelloReply> Hello(HelloRequest request, ServerCallContext context)
        {
            var nonce = RandomNumberGenerator.GetBytes(RingRendezvous.NonceBytes);
            var session = new WorkerSession(Guid.NewGuid().ToString("N"), request.CoordinatorId, RowTransport.SharedMemoryFd, TimeProvider.System, nonce,
                (long)request.SharedRing.SizeBytes, TimeSpan.FromSeconds(30), doorbell: true);
            Assert.True(sessions.TryAdd(session, out _));
            var reply = new HelloReply
            {
                ProtocolMajor = ProtocolVersion.Major,
                ProtocolMinor = ProtocolVersion.Minor,
                ModelFingerprint = model.Fingerprint,
                WorkerId = "impostor",
                HiddenSize = (uint)model.HiddenSize,
                NumExperts = (uint)model.NumExperts,
                Transport = RowTransport.SharedMemoryFd,
                SessionId = session.Id,
                SharedRing = new SharedRingRendezvous { SocketPath = listener.SocketPath, Nonce = ByteString.CopyFrom(nonce), Doorbell = true },
            };
            foreach (int layer in model.MoeLayers)
            {
                var shard = new ExpertShard { Layer = (uint)layer };
                shard.Experts.AddRange(Enumerable.Range(0, model.NumExperts).Select(e => (uint)e));
                reply.Shards.Add(shard);
            }
            return Task.FromResult(reply);
        }

        public override async Task Dispatch(IAsyncStreamReader<TensorFrame<ExpertRequest>> requestStream,
            IServerStreamWriter<TensorFrame<ExpertReply>> responseStream, ServerCallContext context)
        {
            string id = context.RequestHeaders.GetValue(ProtocolVersion.SessionHeader)!;
            Assert.True(sessions.TryGet(id, out var session) && session.TryEnter());
            var ring = session.Ring!;
            RingDoorbellEndpoint<ExpertReply, ExpertRequest>? endpoint = null;
            endpoint = new RingDoorbellEndpoint<ExpertReply, ExpertRequest>(ring, coordinator: false, ExpertRequest.Parser, TimeSpan.Zero, request =>
                {
                    seen();
                    switch (how)
                    {
                        case Misbehaviour.Garbage:
                            Publish(ring, [0xFF, 0xFF, 0xFF], 3);
                            break;
                        case Misbehaviour.ImpossibleLength:
                            Publish(ring, [], int.MaxValue);
                            break;
                        case Misbehaviour.WrongRegion:
                            endpoint!.TrySend(new ExpertReply
                            {
                                RequestId = request.RequestId, Status = new ReplyStatus(), Dtype = request.Dtype, Rows = request.Rows, HiddenSize = request.HiddenSize,
                                SharedRows = new SharedRows { Offset = request.SharedRows.Offset + 64, Length = request.SharedRows.Length },
                            });
                            break;
                        default:
                            break;
                    }
                }, _ => { }, "impostor-doorbell");
            endpoint.Start();
            try
            {
                while (await requestStream.MoveNext(context.CancellationToken))
                {
                    requestStream.Current.Dispose();
                }
            }
            catch (OperationCanceledException)
            {
            }
            finally
            {
                endpoint.Dispose();
                session.Exit();
            }
        }

        // Publishes the first reply slot by hand: sequence 1, the given length, the given bytes.
        private static void Publish(SharedRing ring, byte[] bytes, int length)
        {
            if (!ring.TryGetSpan((ulong)(RingControl.ReplyQueueOffset + RingControl.HeaderBytes), RingControl.SlotBytes, out var slot))
            {
                return;
            }
            bytes.CopyTo(slot[RingControl.SlotHeaderBytes..]);
            System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(slot[8..], length);
            Volatile.Write(ref System.Runtime.InteropServices.MemoryMarshal.AsRef<long>(slot), 1);
            // Rung like a real producer (a futex wake when the coordinator's reader sleeps).
            using var bell = new RingQueue(ring, RingControl.ReplyQueueOffset);
            bell.Ring();
        }
    }
}
