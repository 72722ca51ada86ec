using Distributed.Coordinator.Distribution;
using Distributed.Checkpoint;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Grpc.Core;
using Grpc.Net.Client;

namespace Distributed.Integration.Tests;

/// <summary>One real ExpertWorker process serving a static shard of tiny-maverick (no silo: starts in ~1 s).</summary>
public sealed class StaticWorker : IAsyncLifetime
{
    private readonly TestLog _log = new();
    private WorkerProcess? _process;

    internal TestLog Log => _log;

    public WorkerProcess Process => _process ?? throw new InvalidOperationException("not started");

    public string Address { get; private set; } = "";

    public ModelDescriptor Model { get; private set; } = null!;

    public GrpcChannel Channel { get; private set; } = null!;

    /// <summary>Shard spec the worker serves.</summary>
    public const string Shard = "1:0-63,3:0-127,5:0-127";

    /// <summary>Plan version the worker serves.</summary>
    public const ulong PlanVersion = 5;

    /// <summary>Rows per request the worker accepts.</summary>
    public const int MaxRows = 64;

    public async Task InitializeAsync()
    {
        using (var checkpoint = CheckpointReader.Open(TestPaths.Fixture("tiny-maverick")))
        {
            Model = ModelDescriptors.FromCheckpoint(checkpoint);
        }
        _process = WorkerProcess.Start(WorkerProcess.LocateWorker(),
            ["--model", TestPaths.Fixture("tiny-maverick"), "--experts", Shard, "--plan-version", PlanVersion.ToString(),
             "--max-rows", MaxRows.ToString(), "--threads", "1", "--worker-id", "static"],
            "static-worker", _log.Write);
        Address = await _process.WaitReadyAsync(TimeSpan.FromSeconds(60), CancellationToken.None);
        Channel = GrpcChannel.ForAddress(Address, new GrpcChannelOptions { MaxSendMessageSize = 64 << 20, MaxReceiveMessageSize = 64 << 20 });
    }

    public async Task DisposeAsync()
    {
        Channel?.Dispose();
        if (_process is not null)
        {
            await _process.DisposeAsync();
        }
    }

    /// <summary>Data-plane call metadata: protocol major, fingerprint and the cluster credential.</summary>
    public Metadata Headers(string? fingerprint = null, string major = "1") => new()
    {
        { ProtocolVersion.MajorHeader, major },
        { ProtocolVersion.FingerprintHeader, fingerprint ?? Model.Fingerprint },
        TestCredential.Authorization,
    };

    /// <summary>A valid request for layer 1 with <paramref name="rows"/> rows of expert 3 and payload of random finite values.</summary>
    public (ExpertRequest Header, byte[] Payload) Valid(WireDType dtype = WireDType.Fp32, int rows = 2)
    {
        var header = new ExpertRequest
        {
            RequestId = 7, Layer = 1, PlanVersion = PlanVersion, Dtype = dtype, HiddenSize = (uint)Model.HiddenSize, Rows = (uint)rows,
            Segments = { new ExpertSegment { Expert = 3, Rows = (uint)rows } },
            // FP8 dispatch must name its reply dtype.
            ReplyDtype = dtype == WireDType.Fp8E4M3 ? WireDType.Bf16 : WireDType.Unspecified,
        };
        var values = new float[rows * Model.HiddenSize];
        var rng = new Random(rows);
        for (int i = 0; i < values.Length; i++)
        {
            values[i] = (float)(rng.NextDouble() - 0.5);
        }
        var payload = new byte[WireCodec.PayloadBytes(rows, Model.HiddenSize, dtype)];
        WireCodec.EncodeRows(values, Model.HiddenSize, dtype, payload);
        return (header, payload);
    }

    public async Task<TensorFrame<ExpertReply>> CallOnceAsync(ExpertRequest header, byte[] payload, Metadata? headers = null)
    {
        var invoker = Channel.CreateCallInvoker();
        return await invoker.AsyncUnaryCall(ExpertWorkerMethods.DispatchOnce, null,
            new CallOptions(headers ?? Headers(), DateTime.UtcNow.AddSeconds(20)), new TensorFrame<ExpertRequest>(header, payload));
    }
}
