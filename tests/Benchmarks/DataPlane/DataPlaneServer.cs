using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using Distributed.ExpertWorker.Hosting;
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
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Distributed.Benchmarks.DataPlane;

/// <summary>
/// The echo servers of the data-plane benchmark, in their own process (<c>dataplane-server</c>): a raw TCP echo
/// (8-byte length prefix), a plain HTTP/2 POST echo (Kestrel, no gRPC), and the ExpertWorker gRPC service shape
/// (same Kestrel limits, same <see cref="TensorFrameMarshaller"/>, one bidi stream, behind the worker's own
/// <see cref="DataPlaneSecurity"/>: cluster credential, frame guard, sessions, ring rendezvous) answering each request
/// with its own rows, inline or through the shared ring; a second listener serves it without the guard, a third over
/// cluster TLS (mutual, as a worker with <c>Tls:DataPlane</c>). Prints <c>DATAPLANE_READY tcp=PORT http=URL unguarded=URL tls=URL</c>.
/// </summary>
internal static class DataPlaneServer
{
    public static async Task<int> RunAsync(string[] args)
    {
        // --spin MICROSECONDS: how long the echo's doorbell reader spins before it sleeps (the worker's DoorbellSpin).
        var spin = TimeSpan.FromMicroseconds(double.Parse(args.SkipWhile(a => a != "--spin").Skip(1).FirstOrDefault() ?? "0", System.Globalization.CultureInfo.InvariantCulture));
        var tcp = new TcpListener(IPAddress.Loopback, 0);
        tcp.Start();
        _ = Task.Run(() => TcpEchoAsync(tcp));

        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        ListenOptions? unguarded = null;
        ListenOptions? tlsListen = null;
        // Cluster TLS as a worker serves it (mutual, the cluster CA), from the DISTRIBUTED_Tls__* paths the benchmark sets.
        var tls = Distributed.Hosting.ClusterCredentials.Load(new Distributed.Hosting.ClusterTlsOptions
        {
            CertificatePath = Environment.GetEnvironmentVariable("DISTRIBUTED_Tls__CertificatePath"),
            KeyPath = Environment.GetEnvironmentVariable("DISTRIBUTED_Tls__KeyPath"),
            CaPath = Environment.GetEnvironmentVariable("DISTRIBUTED_Tls__CaPath"),
        }) ?? throw new InvalidOperationException("DISTRIBUTED_Tls__CertificatePath, KeyPath and CaPath must be set");
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Listen(IPAddress.Loopback, 0, o => o.Protocols = HttpProtocols.Http2);
            k.Listen(IPAddress.Loopback, 0, o =>
            {
                o.Protocols = HttpProtocols.Http2;
                o.UseHttps(https =>
                {
                    https.ServerCertificate = tls.Certificate;
                    https.ServerCertificateChain = tls.Intermediates;
                    https.ClientCertificateMode = Microsoft.AspNetCore.Server.Kestrel.Https.ClientCertificateMode.RequireCertificate;
                    https.ClientCertificateValidation = (certificate, chain, errors) => tls.ValidatePeer(certificate, chain, errors);
                });
                tlsListen = o;
            });
            // The same service without the guard in front, to measure what the guard costs.
            k.Listen(IPAddress.Loopback, 0, o =>
            {
                o.Protocols = HttpProtocols.Http2;
                unguarded = o;
            });
            k.Limits.MaxRequestBodySize = null;
            k.Limits.Http2.InitialConnectionWindowSize = 64 << 20;
            k.Limits.Http2.InitialStreamWindowSize = 32 << 20;
            k.Limits.Http2.MaxFrameSize = 1 << 20;
        });
        const int MaxMessage = 256 << 20;
        builder.Services.AddGrpc(o =>
        {
            o.MaxReceiveMessageSize = MaxMessage;
            o.MaxSendMessageSize = MaxMessage;
        });
        // The worker's own data-plane security in front of the echo service: the cluster credential (from the
        // environment the benchmark sets), the frame guard, the sessions and the shared-ring rendezvous.
        var worker = new ExpertWorkerOptions { ModelDirectory = "(echo)", MaxSharedRingBytes = 1L << 30 };
        builder.Services.AddSingleton(Options.Create(worker));
        var credential = ClusterToken.Create(ClusterToken.Resolve().Token
            ?? throw new InvalidOperationException($"{ClusterToken.EnvironmentVariable} is not set"));
        DataPlaneSecurity.Add(builder, worker, credential, MaxMessage, ctx => ctx.Connection.LocalPort == unguarded!.IPEndPoint!.Port);
        builder.Services.AddSingleton(sp => new EchoService(sp.GetRequiredService<SessionRegistry>(), sp.GetRequiredService<SharedRingRendezvousService>(), spin));
        var app = builder.Build();
        DataPlaneSecurity.Use(app);
        app.MapGrpcService<EchoService>();
        app.MapPost("/echo", async (HttpContext ctx) =>
        {
            var buffer = new byte[(int)ctx.Request.ContentLength!.Value];
            int read = 0;
            while (read < buffer.Length)
            {
                int n = await ctx.Request.Body.ReadAsync(buffer.AsMemory(read));
                if (n == 0)
                {
                    break;
                }
                read += n;
            }
            ctx.Response.ContentLength = read;
            await ctx.Response.Body.WriteAsync(buffer.AsMemory(0, read));
        });
        await app.StartAsync();
        int unguardedPort = unguarded!.IPEndPoint!.Port;
        int tlsPort = tlsListen!.IPEndPoint!.Port;
        var addresses = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses;
        string http = addresses.First(a => new Uri(a).Port != unguardedPort && new Uri(a).Port != tlsPort);
        Console.WriteLine($"DATAPLANE_READY tcp={((IPEndPoint)tcp.LocalEndpoint).Port} http={http} unguarded=http://127.0.0.1:{unguardedPort} tls=https://localhost:{tlsPort}");
        Console.Out.Flush();
        await Task.Run(Console.In.ReadLine);
        await app.StopAsync();
        return 0;
    }

    private static async Task TcpEchoAsync(TcpListener listener)
    {
        while (true)
        {
            var client = await listener.AcceptTcpClientAsync();
            client.NoDelay = true;
            _ = Task.Run(async () =>
            {
                using var c = client;
                var stream = c.GetStream();
                var header = new byte[8];
                byte[] buffer = [];
                while (true)
                {
                    if (!await ReadExactAsync(stream, header))
                    {
                        return;
                    }
                    long length = BitConverter.ToInt64(header);
                    if (buffer.Length < length)
                    {
                        buffer = new byte[length];
                    }
                    if (!await ReadExactAsync(stream, buffer.AsMemory(0, (int)length)))
                    {
                        return;
                    }
                    await stream.WriteAsync(header);
                    await stream.WriteAsync(buffer.AsMemory(0, (int)length));
                }
            });
        }
    }

    internal static async Task<bool> ReadExactAsync(NetworkStream stream, Memory<byte> buffer)
    {
        int read = 0;
        while (read < buffer.Length)
        {
            int n = await stream.ReadAsync(buffer[read..]);
            if (n == 0)
            {
                return false;
            }
            read += n;
        }
        return true;
    }

    private sealed class EchoService(SessionRegistry sessions, SharedRingRendezvousService rendezvous, TimeSpan spin) : ExpertWorkerServiceBase
    {
        public override Task<HelloReply> Hello(HelloRequest request, ServerCallContext context)
        {
            var transport = RowTransport.Inline;
            byte[]? nonce = null;
            bool doorbell = false;
            if (request.SharedRing is { } offer && request.Transports.Contains(RowTransport.SharedMemoryFd) && rendezvous.SocketPath is not null)
            {
                transport = RowTransport.SharedMemoryFd;
                nonce = RandomNumberGenerator.GetBytes(RingRendezvous.NonceBytes);
                doorbell = offer.Doorbell && RingControl.IsSupported && offer.SizeBytes >= RingControl.MinRingBytes;
            }
            var session = new WorkerSession(Guid.NewGuid().ToString("N"), request.CoordinatorId, transport, TimeProvider.System, nonce,
                (long)(request.SharedRing?.SizeBytes ?? 0), DataPlaneSecurity.RendezvousLifetime, doorbell);
            if (!sessions.TryAdd(session, out _))
            {
                throw new RpcException(new Status(StatusCode.ResourceExhausted, "sessions"));
            }
            return Task.FromResult(new HelloReply
            {
                ProtocolMajor = ProtocolVersion.Major,
                ModelFingerprint = request.ModelFingerprint,
                HiddenSize = DataPlaneBenchmark.Hidden,
                Transport = transport,
                SessionId = session.Id,
                WorkerId = "echo",
                SharedRing = nonce is null ? null : new SharedRingRendezvous { SocketPath = rendezvous.SocketPath, Nonce = ByteString.CopyFrom(nonce), Doorbell = doorbell },
            });
        }

        public override async Task Dispatch(IAsyncStreamReader<TensorFrame<ExpertRequest>> requestStream,
            IServerStreamWriter<TensorFrame<ExpertReply>> responseStream, ServerCallContext context)
        {
            WorkerSession? session = null;
            if (context.RequestHeaders.GetValue(ProtocolVersion.SessionHeader) is { } id && sessions.TryGet(id, out var s) && s.TryEnter())
            {
                session = s;
            }
            byte[] scratch = [];
            byte[] bellScratch = [];
            RingDoorbellEndpoint<ExpertReply, ExpertRequest>? doorbell = null;
            if (session is { Doorbell: true, Ring: { } bellRing })
            {
                // Doorbell requests are echoed on the doorbell's reader thread, as the stream's are in its read loop.
                doorbell = new RingDoorbellEndpoint<ExpertReply, ExpertRequest>(bellRing, coordinator: false, ExpertRequest.Parser, spin,
                    h => doorbell!.TrySend(Echo(h, bellRing, ref bellScratch) ?? throw new InvalidOperationException("doorbell request without shared rows")),
                    ex => Console.Error.WriteLine(ex.Message), "echo-doorbell");
                doorbell.Start();
            }
            try
            {
                while (await requestStream.MoveNext(context.CancellationToken))
                {
                    using var frame = requestStream.Current;
                    var h = frame.Header;
                    if (session?.Ring is { } ring && Echo(h, ring, ref scratch) is { } shared)
                    {
                        await responseStream.WriteAsync(new TensorFrame<ExpertReply>(shared, ReadOnlyMemory<byte>.Empty));
                    }
                    else
                    {
                        var reply = new ExpertReply { RequestId = h.RequestId, Status = new ReplyStatus(), Dtype = h.Dtype, Rows = h.Rows, HiddenSize = h.HiddenSize };
                        await responseStream.WriteAsync(new TensorFrame<ExpertReply>(reply, frame.Payload));
                    }
                }
            }
            finally
            {
                doorbell?.Dispose();
                session?.Exit();
            }
        }

        // Reads a shared-rows request's rows out and writes the answer back in place, as a worker decodes then encodes;
        // null when the request's rows are inline.
        private static ExpertReply? Echo(ExpertRequest h, SharedRing ring, ref byte[] scratch)
        {
            if (h.SharedRows is not { } rows || !ring.TryAcquire())
            {
                return null;
            }
            try
            {
                if (!ring.TryGetSpan(rows.Offset, rows.Length, out var span))
                {
                    throw new RpcException(new Status(StatusCode.InvalidArgument, "shared_rows"));
                }
                if (scratch.Length < span.Length)
                {
                    scratch = new byte[span.Length];
                }
                span.CopyTo(scratch);
                scratch.AsSpan(0, span.Length).CopyTo(span);
            }
            finally
            {
                ring.Release();
            }
            return new ExpertReply { RequestId = h.RequestId, Status = new ReplyStatus(), Dtype = h.Dtype, Rows = h.Rows, HiddenSize = h.HiddenSize, SharedRows = rows };
        }
    }
}
