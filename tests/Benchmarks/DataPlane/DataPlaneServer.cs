using System.Net;
using System.Net.Sockets;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Grpc.Core;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Distributed.Benchmarks.DataPlane;

/// <summary>
/// The echo servers of the data-plane benchmark, in their own process (<c>dataplane-server</c>): a raw TCP echo
/// (8-byte length prefix), a plain HTTP/2 POST echo (Kestrel, no gRPC), and the ExpertWorker gRPC service shape
/// (same Kestrel limits, same <see cref="TensorFrameMarshaller"/>, one bidi stream) answering each request with its own
/// rows, inline or through the shared ring. Prints <c>DATAPLANE_READY tcp=PORT http=URL</c>.
/// </summary>
internal static class DataPlaneServer
{
    public static async Task<int> RunAsync()
    {
        var tcp = new TcpListener(IPAddress.Loopback, 0);
        tcp.Start();
        _ = Task.Run(() => TcpEchoAsync(tcp));

        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Listen(IPAddress.Loopback, 0, o => o.Protocols = HttpProtocols.Http2);
            k.Limits.MaxRequestBodySize = null;
            k.Limits.Http2.InitialConnectionWindowSize = 64 << 20;
            k.Limits.Http2.InitialStreamWindowSize = 32 << 20;
            k.Limits.Http2.MaxFrameSize = 1 << 20;
        });
        builder.Services.AddGrpc(o =>
        {
            o.MaxReceiveMessageSize = 256 << 20;
            o.MaxSendMessageSize = 256 << 20;
        });
        builder.Services.AddSingleton<EchoService>();
        var app = builder.Build();
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
        string http = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        Console.WriteLine($"DATAPLANE_READY tcp={((IPEndPoint)tcp.LocalEndpoint).Port} http={http}");
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

    private sealed class EchoService : ExpertWorkerServiceBase
    {
        private SharedRing? _ring;

        public override Task<HelloReply> Hello(HelloRequest request, ServerCallContext context)
        {
            var transport = RowTransport.Inline;
            if (request.SharedRing is { } offer && request.Transports.Contains(RowTransport.SharedMemory))
            {
                _ring = SharedRing.Open(offer.Path, (long)offer.SizeBytes);
                transport = RowTransport.SharedMemory;
            }
            return Task.FromResult(new HelloReply
            {
                ProtocolMajor = ProtocolVersion.Major,
                ModelFingerprint = request.ModelFingerprint,
                HiddenSize = DataPlaneBenchmark.Hidden,
                Transport = transport,
                SessionId = "bench",
                WorkerId = "echo",
            });
        }

        public override async Task Dispatch(IAsyncStreamReader<TensorFrame<ExpertRequest>> requestStream,
            IServerStreamWriter<TensorFrame<ExpertReply>> responseStream, ServerCallContext context)
        {
            byte[] scratch = [];
            while (await requestStream.MoveNext(context.CancellationToken))
            {
                using var frame = requestStream.Current;
                var h = frame.Header;
                var reply = new ExpertReply { RequestId = h.RequestId, Status = new ReplyStatus(), Dtype = h.Dtype, Rows = h.Rows, HiddenSize = h.HiddenSize };
                if (h.SharedRows is { } rows && _ring is not null && _ring.TryGetSpan(rows.Offset, rows.Length, out var span))
                {
                    // Read the rows out and write the answer back in place, as a worker decodes then encodes.
                    if (scratch.Length < span.Length)
                    {
                        scratch = new byte[span.Length];
                    }
                    span.CopyTo(scratch);
                    scratch.AsSpan(0, span.Length).CopyTo(span);
                    reply.SharedRows = rows;
                    await responseStream.WriteAsync(new TensorFrame<ExpertReply>(reply, ReadOnlyMemory<byte>.Empty));
                }
                else
                {
                    await responseStream.WriteAsync(new TensorFrame<ExpertReply>(reply, frame.Payload));
                }
            }
        }
    }
}
