using System.Security.Cryptography;
using Distributed.ExpertWorker.Compute;
using Distributed.ExpertWorker.Diagnostics;
using Distributed.ExpertWorker.Hosting;
using Distributed.ExpertWorker.Weights;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.Options;

namespace Distributed.ExpertWorker.Services;

/// <summary>
/// The data-plane gRPC service (thin: validate → <see cref="ExpertExecutor"/> → reply). Every inbound field is checked
/// by <see cref="TensorFrameValidator"/> before any payload byte is used; a bad request gets a precise status and never
/// affects other requests or the process.
/// </summary>
public sealed partial class ExpertComputeService(
    ShardStore store,
    ExpertExecutor executor,
    SessionRegistry sessions,
    SharedRingRendezvousService rendezvous,
    IOptions<ExpertWorkerOptions> options,
    Diagnostics.ExpertWorkerInstruments instruments,
    DataPlaneRejections rejections,
    TimeProvider time,
    ILogger<ExpertComputeService> logger) : ExpertWorkerServiceBase
{
    private readonly int _maxConcurrent = options.Value.MaxConcurrentRequestsPerStream;

    /// <inheritdoc />
    public override Task<HelloReply> Hello(HelloRequest request, ServerCallContext context)
    {
        var model = store.Model;
        if (request.ProtocolMajor != ProtocolVersion.Major)
        {
            throw Precondition("protocol_major", $"coordinator speaks protocol {request.ProtocolMajor}.{request.ProtocolMinor}, worker speaks {ProtocolVersion.Major}.{ProtocolVersion.Minor}");
        }
        if (!string.Equals(request.ModelFingerprint, model.Fingerprint, StringComparison.Ordinal))
        {
            throw Precondition("model_fingerprint", $"coordinator model {Short(request.ModelFingerprint)} != worker model {Short(model.Fingerprint)}");
        }
        // Shared memory only with a coordinator on this host that offers a ring this worker may map; the ring itself
        // arrives later as a descriptor over the rendezvous socket (never a path), bound to this session by the nonce.
        var transport = RowTransport.Inline;
        byte[]? nonce = null;
        long ringBytes = 0;
        bool doorbell = false;
        if (rendezvous.SocketPath is not null && request.Transports.Contains(RowTransport.SharedMemoryFd) && request.SharedRing is { } offer
            && offer.HostId == SharedRing.LocalHostId)
        {
            if (offer.SizeBytes >= SharedRing.MinSize && offer.SizeBytes <= (ulong)options.Value.MaxSharedRingBytes)
            {
                transport = RowTransport.SharedMemoryFd;
                nonce = RandomNumberGenerator.GetBytes(RingRendezvous.NonceBytes);
                ringBytes = (long)offer.SizeBytes;
                doorbell = offer.Doorbell && options.Value.RingDoorbell && RingControl.CanUse(ringBytes);
            }
            else
            {
                LogRingDeclined(offer.SizeBytes, options.Value.MaxSharedRingBytes);
            }
        }
        string coordinatorId = DataPlaneRejections.Printable(request.CoordinatorId);
        var session = new WorkerSession(Guid.NewGuid().ToString("N"), coordinatorId, transport, time, nonce, ringBytes, DataPlaneSecurity.RendezvousLifetime,
            doorbell);
        if (!sessions.TryAdd(session, out var evicted))
        {
            string message = $"all {sessions.Capacity} handshake sessions are in use or were used within the last {sessions.IdleGrace.TotalSeconds:F0} s; retry later";
            rejections.Report(RejectionKind.SessionsExhausted, StatusCode.ResourceExhausted, $"Hello from {coordinatorId}: {message}");
            throw new RpcException(new Status(StatusCode.ResourceExhausted, message));
        }
        if (evicted is not null)
        {
            LogEvicted(evicted.Id[..8], evicted.CoordinatorId);
        }
        var reply = new HelloReply
        {
            ProtocolMajor = ProtocolVersion.Major,
            ProtocolMinor = ProtocolVersion.Minor,
            ModelFingerprint = model.Fingerprint,
            WorkerId = store.WorkerId,
            PlanVersion = store.PlanVersion,
            HiddenSize = (uint)model.HiddenSize,
            NumExperts = (uint)model.NumExperts,
            MaxRowsPerDispatch = (uint)store.MaxRowsPerDispatch,
            MaxMessageBytes = (ulong)options.Value.MaxMessageBytes(model.HiddenSize),
            Transport = transport,
            SessionId = session.Id,
            KernelNumerics = executor.Numerics,
            ExpertActivations = executor.ExpertActivations,
            SharedRing = nonce is null ? null : new SharedRingRendezvous { SocketPath = rendezvous.SocketPath, Nonce = ByteString.CopyFrom(nonce), Doorbell = doorbell },
            ClusterManaged = string.IsNullOrWhiteSpace(options.Value.StaticExperts),
        };
        foreach (var (layer, experts) in store.Manifest.Layers)
        {
            var shard = new ExpertShard { Layer = (uint)layer };
            shard.Experts.AddRange(experts.Select(e => (uint)e));
            reply.Shards.Add(shard);
        }
        LogHello(coordinatorId, transport, store.PlanVersion);
        return Task.FromResult(reply);
    }

    /// <inheritdoc />
    /// <remarks>With a doorbell session (<see cref="WorkerSession.Doorbell"/>) a reader thread also takes requests from
    /// the ring's request queue for as long as this stream is open; they are validated and computed exactly as stream
    /// requests (same concurrency limit, same duplicate-id rule) and answered through the reply queue (on this stream
    /// when a reply header does not fit a slot or no slot is free). A slot that breaks the doorbell's protocol ends
    /// this stream with INVALID_ARGUMENT, as a malformed frame does.</remarks>
    public override async Task Dispatch(
        IAsyncStreamReader<TensorFrame<ExpertRequest>> requestStream,
        IServerStreamWriter<TensorFrame<ExpertReply>> responseStream,
        ServerCallContext context)
    {
        var session = EnterSession(context);
        // Cancelled by the client going away, or by the doorbell reader when the coordinator broke its protocol.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(context.CancellationToken);
        var ct = stop.Token;
        using var writeLock = new SemaphoreSlim(1, 1);
        using var slots = new SemaphoreSlim(_maxConcurrent, _maxConcurrent);
        var pending = new List<Task>();
        // Request ids not yet answered (from the stream and the doorbell): a second request with one of them would make
        // the replies ambiguous.
        var inFlight = new HashSet<ulong>();
        RingDoorbellEndpoint<ExpertReply, ExpertRequest>? doorbell = null;
        string? doorbellFault = null;

        bool Admit(ulong requestId)
        {
            lock (inFlight)
            {
                return inFlight.Add(requestId);
            }
        }

        void Settle(ulong requestId)
        {
            // No longer in flight from here: the peer may reuse the id once it has this reply.
            lock (inFlight)
            {
                inFlight.Remove(requestId);
            }
        }

        // Computes one admitted request (a slot is held; on the thread pool, or on the caller when inline) and answers it: through the doorbell when it
        // came that way and the reply fits a slot, else on the stream.
        void Start(TensorFrame<ExpertRequest> frame, bool viaDoorbell, bool inline = false)
        {
            ulong requestId = frame.Header.RequestId;
            async Task AnswerAsync()
            {
                try
                {
                    using var reply = Process(frame, session, pooledReply: true);
                    if (viaDoorbell && reply.Payload.IsEmpty)
                    {
                        Settle(requestId);
                        if (doorbell!.TrySend(reply.Header))
                        {
                            return;
                        }
                    }
                    await writeLock.WaitAsync(ct).ConfigureAwait(false);
                    try
                    {
                        Settle(requestId);
                        await responseStream.WriteAsync(reply, ct).ConfigureAwait(false);
                    }
                    finally
                    {
                        writeLock.Release();
                    }
                }
                finally
                {
                    frame.Dispose();
                    slots.Release();
                }
            }
            var task = inline ? AnswerAsync() : Task.Run(AnswerAsync, CancellationToken.None);
            lock (pending)
            {
                pending.RemoveAll(t => t.IsCompleted);
                pending.Add(task);
            }
        }

        void Fault(RejectionKind kind, string reason)
        {
            if (Interlocked.CompareExchange(ref doorbellFault, reason, null) is null)
            {
                rejections.Report(kind, StatusCode.InvalidArgument, $"Dispatch stream ended: {reason}");
                stop.Cancel();
            }
        }

        // On the doorbell's reader thread, one request at a time, in ring order.
        void OnDoorbellRequest(ExpertRequest header)
        {
            if (!Admit(header.RequestId))
            {
                doorbell!.StopReceiving();
                Fault(RejectionKind.DuplicateRequestId, $"request_id {header.RequestId} is already in flight on this stream (doorbell)");
                return;
            }
            try
            {
                slots.Wait(ct);
            }
            catch (OperationCanceledException)
            {
                Settle(header.RequestId);
                return;
            }
            // A lone request is computed right here (no thread-pool hop on the latency path); one with others queued behind
            // it goes to the pool so that they run concurrently, up to the same limit as the stream's.
            Start(new TensorFrame<ExpertRequest>(header, ReadOnlyMemory<byte>.Empty), viaDoorbell: true, inline: !doorbell!.MoreReceived);
        }

        try
        {
            // One stream per session runs the doorbell (a second stream of the same session carries its own requests only).
            if (session is { Ring: { } ring } && session.TryClaimDoorbell(out var positions))
            {
                try
                {
                    doorbell = new RingDoorbellEndpoint<ExpertReply, ExpertRequest>(ring, coordinator: false, ExpertRequest.Parser, options.Value.DoorbellSpin,
                        OnDoorbellRequest, ex => Fault(RejectionKind.MalformedFrame, $"malformed doorbell request: {ex.Message}"), "doorbell-" + session.Id[..8], positions);
                    doorbell.Start();
                }
                catch (SharedRingException)
                {
                    // The ring is being torn down: this stream carries everything.
                    session.ReleaseDoorbell(positions);
                }
            }
            while (await requestStream.MoveNext(ct).ConfigureAwait(false))
            {
                var frame = requestStream.Current;
                if (frame.Malformed is { } reason)
                {
                    rejections.Report(RejectionKind.MalformedFrame, StatusCode.InvalidArgument, $"Dispatch stream ended: malformed ExpertRequest frame ({reason})");
                    throw new RpcException(new Status(StatusCode.InvalidArgument, $"malformed ExpertRequest frame: {reason}"));
                }
                ulong requestId = frame.Header.RequestId;
                if (!Admit(requestId))
                {
                    frame.Dispose();
                    string message = $"request_id {requestId} is already in flight on this stream";
                    rejections.Report(RejectionKind.DuplicateRequestId, StatusCode.InvalidArgument, $"Dispatch stream ended: {message}");
                    throw new RpcException(new Status(StatusCode.InvalidArgument, message));
                }
                await slots.WaitAsync(ct).ConfigureAwait(false);
                Start(frame, viaDoorbell: false);
            }
        }
        catch (OperationCanceledException) when (Volatile.Read(ref doorbellFault) is not null)
        {
            // Reported below.
        }
        catch (IOException) when (Volatile.Read(ref doorbellFault) is null)
        {
            // The peer reset the stream or its connection dropped (a coordinator that went away): nothing is left to
            // answer, and it is no error of this worker (gRPC would log it as one, with a stack trace).
        }
        finally
        {
            // The reader first (no request is admitted after it), then the requests in progress, then the queues.
            doorbell?.StopReceiving();
            Task[] all;
            lock (pending)
            {
                all = [.. pending];
            }
            try
            {
                await Task.WhenAll(all).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or IOException or InvalidOperationException)
            {
                // The peer went away mid-reply; nothing left to answer.
            }
            if (doorbell is not null)
            {
                doorbell.Dispose();
                session!.ReleaseDoorbell(doorbell.Positions);
            }
            session?.Exit();
        }
        if (Volatile.Read(ref doorbellFault) is { } fault)
        {
            throw new RpcException(new Status(StatusCode.InvalidArgument, fault));
        }
    }

    /// <inheritdoc />
    public override Task<TensorFrame<ExpertReply>> DispatchOnce(TensorFrame<ExpertRequest> request, ServerCallContext context)
    {
        var session = EnterSession(context);
        using (request)
        {
            try
            {
                if (request.Malformed is { } reason)
                {
                    rejections.Report(RejectionKind.MalformedFrame, StatusCode.InvalidArgument, $"DispatchOnce: malformed ExpertRequest frame ({reason})");
                    throw new RpcException(new Status(StatusCode.InvalidArgument, $"malformed ExpertRequest frame: {reason}"));
                }
                var reply = Process(request, session, pooledReply: false);
                if (reply.Header.Status is { Code: not 0 })
                {
                    using (reply)
                    {
                        var status = reply.Header.Status;
                        throw FrameValidationResult.Fail((StatusCode)status.Code, status.Message, [.. status.Violations]).ToRpcException();
                    }
                }
                return Task.FromResult(reply);
            }
            finally
            {
                session?.Exit();
            }
        }
    }

    // Checks the call's metadata and marks its session in use until the caller's Exit (so it is never evicted meanwhile).
    private WorkerSession? EnterSession(ServerCallContext context)
    {
        string? major = context.RequestHeaders.GetValue(ProtocolVersion.MajorHeader);
        if (major != ProtocolVersion.Major.ToString(System.Globalization.CultureInfo.InvariantCulture))
        {
            throw Precondition(ProtocolVersion.MajorHeader, $"'{major}' is not protocol major {ProtocolVersion.Major}");
        }
        string? fingerprint = context.RequestHeaders.GetValue(ProtocolVersion.FingerprintHeader);
        if (!string.Equals(fingerprint, store.Model.Fingerprint, StringComparison.Ordinal))
        {
            throw Precondition(ProtocolVersion.FingerprintHeader, $"coordinator model {Short(fingerprint)} != worker model {Short(store.Model.Fingerprint)}");
        }
        string? sessionId = context.RequestHeaders.GetValue(ProtocolVersion.SessionHeader);
        if (sessionId is null)
        {
            return null;
        }
        if (!sessions.TryGet(sessionId, out var session) || !session.TryEnter())
        {
            throw Precondition(ProtocolVersion.SessionHeader, $"unknown session '{Short(sessionId)}' (shake hands again)");
        }
        return session;
    }

    private TensorFrame<ExpertReply> Process(TensorFrame<ExpertRequest> frame, WorkerSession? session, bool pooledReply)
    {
        using var span = instruments.StartCompute(frame.Header);
        var reply = ProcessCore(frame, session, pooledReply);
        instruments.Answered(frame.Header, reply.Header, span);
        return reply;
    }

    private TensorFrame<ExpertReply> ProcessCore(TensorFrame<ExpertRequest> frame, WorkerSession? session, bool pooledReply)
    {
        // A reference keeps the ring mapped while this request reads and writes it, whatever happens to the session.
        var ring = session?.Ring;
        if (ring is not null && !ring.TryAcquire())
        {
            ring = null;
        }
        try
        {
            return ProcessRows(frame, ring, session?.RowsStart ?? 0, pooledReply);
        }
        finally
        {
            ring?.Release();
        }
    }

    // rowsStart: where row regions may begin (after the doorbell's control area, whose slots a region must never alias).
    private TensorFrame<ExpertReply> ProcessRows(TensorFrame<ExpertRequest> frame, SharedRing? ring, ulong rowsStart, bool pooledReply)
    {
        var request = frame.Header;
        using var snapshot = store.Acquire();
        var view = new SnapshotView(store, snapshot);
        var verdict = TensorFrameValidator.ValidateRequest(request, frame.Payload.Length, ring is not null, view);
        Span<byte> shared = default;
        if (verdict.IsOk && request.SharedRows is { } rows && (rows.Offset < rowsStart || !ring!.TryGetSpan(rows.Offset, rows.Length, out shared)))
        {
            string where = rows.Offset < rowsStart
                ? $"starts inside the doorbell's control area [0, {rowsStart})"
                : $"is outside the {ring!.Size}-byte ring";
            verdict = FrameValidationResult.FromViolations(StatusCode.InvalidArgument, $"request {request.RequestId} is invalid",
                [new FieldViolation { Field = "shared_rows", Description = $"[{rows.Offset}, +{rows.Length}) {where}" }]);
        }
        ReadOnlySpan<byte> input = request.SharedRows is null ? frame.Payload.Span : shared;
        if (!verdict.IsOk)
        {
            return Refuse(request, verdict);
        }

        var reply = new ExpertReply
        {
            RequestId = request.RequestId,
            Status = new ReplyStatus { Code = 0 },
            Dtype = WireCodec.ReplyDType(request),
            Rows = request.Rows,
            HiddenSize = request.HiddenSize,
        };
        PooledBuffer? buffer = null;
        // The reply's size in its own dtype (FP8 requests are answered in bf16 or fp32; validated, so it fits an int).
        int replyBytes = (int)WireCodec.PayloadBytes(request.Rows, request.HiddenSize, reply.Dtype);
        try
        {
            // The rows are decoded and checked for NaN/Inf in one pass; a non-finite row is refused before any expert
            // runs (and, on the ring, before any output row overwrites the input).
            WorkerTimings timings;
            int nonFinite;
            string why;
            byte[]? bytes = null;
            bool computed;
            if (request.SharedRows is not null)
            {
                // Output rows overwrite the input rows in place: the executor decodes every input row before encoding.
                computed = executor.TryExecute(request, input, snapshot, shared, out timings, out nonFinite, out why);
            }
            else if (pooledReply)
            {
                buffer = PooledBuffer.Rent(replyBytes);
                computed = executor.TryExecute(request, input, snapshot, buffer.Span, out timings, out nonFinite, out why);
            }
            else
            {
                bytes = new byte[replyBytes];
                computed = executor.TryExecute(request, input, snapshot, bytes, out timings, out nonFinite, out why);
            }
            if (!computed)
            {
                buffer?.Dispose();
                return Refuse(request, TensorFrameValidator.NonFiniteRow(request, nonFinite, why));
            }
            reply.Timings = timings;
            if (request.SharedRows is { } sr)
            {
                reply.SharedRows = new SharedRows { Offset = sr.Offset, Length = sr.Length };
                return new TensorFrame<ExpertReply>(reply, ReadOnlyMemory<byte>.Empty);
            }
            return buffer is not null ? new TensorFrame<ExpertReply>(reply, buffer.Memory, buffer) : new TensorFrame<ExpertReply>(reply, bytes!);
        }
        catch (Exception ex) when (ex is ArgumentException or InvalidOperationException or OverflowException)
        {
            buffer?.Dispose();
            LogFailed(ex, request.RequestId, request.Layer);
            return Failure(request, new ReplyStatus { Code = (int)StatusCode.Internal, Message = $"request {request.RequestId} failed in the worker: {ex.Message}" });
        }
    }

    private TensorFrame<ExpertReply> Refuse(ExpertRequest request, FrameValidationResult verdict)
    {
        rejections.Report(RejectionKind.InvalidRequest, verdict.Code, $"request {request.RequestId} for layer {request.Layer}: {verdict.Message}");
        return Failure(request, verdict.ToReplyStatus());
    }

    private static TensorFrame<ExpertReply> Failure(ExpertRequest request, ReplyStatus status)
        => new(new ExpertReply { RequestId = request.RequestId, Status = status, Dtype = request.Dtype }, ReadOnlyMemory<byte>.Empty);

    private static RpcException Precondition(string field, string message)
        => FrameValidationResult.Fail(StatusCode.FailedPrecondition, message, new FieldViolation { Field = field, Description = message }).ToRpcException();

    private static string Short(string? s) => s is null ? "(none)" : DataPlaneRejections.Printable(s, 12);

    private sealed class SnapshotView(ShardStore store, ShardSnapshot snapshot) : IShardView
    {
        public ModelDescriptor Model => store.Model;
        public ulong PlanVersion => snapshot.Version;
        public bool AcceptsPlanVersion(ulong version) => Array.IndexOf(snapshot.AcceptedVersions, version) >= 0;
        public int MaxRowsPerDispatch => store.MaxRowsPerDispatch;
        public bool Holds(int layer, int expert) => snapshot.Manifest.Contains(new ExpertKey(layer, expert));
    }

    [LoggerMessage(EventId = Diagnostics.LogEvents.HelloAccepted, Level = LogLevel.Information,
        Message = "Hello from coordinator {CoordinatorId}: transport {Transport}, plan {PlanVersion}")]
    private partial void LogHello(string coordinatorId, RowTransport transport, ulong planVersion);

    [LoggerMessage(EventId = Diagnostics.LogEvents.HelloAccepted + 100, Level = LogLevel.Information,
        Message = "A shared ring of {Bytes} bytes was offered; this worker maps at most {MaxBytes} (ExpertWorker:MaxSharedRingBytes): rows travel inline")]
    private partial void LogRingDeclined(ulong bytes, long maxBytes);

    [LoggerMessage(EventId = Diagnostics.LogEvents.SessionEvicted, Level = LogLevel.Information,
        Message = "Session {SessionPrefix}… of coordinator {CoordinatorId} evicted (idle) to make room for a new one")]
    private partial void LogEvicted(string sessionPrefix, string coordinatorId);

    [LoggerMessage(EventId = Diagnostics.LogEvents.RequestFailed, Level = LogLevel.Error,
        Message = "Request {RequestId} for layer {LayerId} failed")]
    private partial void LogFailed(Exception exception, ulong requestId, uint layerId);
}
