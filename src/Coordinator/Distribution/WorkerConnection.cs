using System.Collections.Concurrent;
using System.Net.Sockets;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Grpc.Core;
using Grpc.Net.Client;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// The coordinator's link to one worker: a gRPC channel, the handshake, and ONE long-lived <c>Dispatch</c> stream
/// carrying every request to that worker. Writes are serialized; a reader loop completes requests by id, so replies
/// may arrive in any order. When the stream breaks, every pending request fails with the stream's status and the
/// connection reports itself broken (the pool then reconnects).
/// <para>With the ring doorbell (<see cref="RingControl"/>, negotiated in Hello), a request whose rows are in the ring
/// goes through the ring's request queue instead of the stream, and its reply comes back through the reply queue, read
/// by a dedicated thread; the stream stays open for everything else and its end still fails every pending request.
/// At most <see cref="RingControl.Slots"/> doorbell requests are unanswered at once (so the worker's reply queue never
/// overflows); beyond that, and for a header that does not fit a slot, requests use the stream.</para>
/// </summary>
public sealed partial class WorkerConnection : IWorkerConnection, IAsyncDisposable
{
    private readonly GrpcChannel _channel;
    private readonly AsyncDuplexStreamingCall<TensorFrame<ExpertRequest>, TensorFrame<ExpertReply>> _call;
    private readonly ConcurrentDictionary<ulong, TaskCompletionSource<TensorFrame<ExpertReply>>> _pending = new();
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly CancellationTokenSource _stop = new();
    private readonly SharedRingAllocator? _ring;
    private readonly RingDoorbellEndpoint<ExpertRequest, ExpertReply>? _doorbell;
    // Request ids sent through the doorbell and not yet answered (by either path), and their count: the credit.
    private readonly ConcurrentDictionary<ulong, byte> _doorbellIds = new();
    private int _doorbellOutstanding;
    private long _doorbellRequests;
    private readonly Task _reader;
    private readonly ILogger _logger;
    private long _nextRequestId;
    private volatile Exception? _broken;

    private WorkerConnection(WorkerEndpoint worker, GrpcChannel channel, HelloReply hello, SharedRing? ring, bool doorbell, TimeSpan doorbellSpin,
        AsyncDuplexStreamingCall<TensorFrame<ExpertRequest>, TensorFrame<ExpertReply>> call, ILogger logger)
    {
        Worker = worker;
        _channel = channel;
        Hello = hello;
        _call = call;
        _logger = logger;
        if (ring is not null)
        {
            _ring = new SharedRingAllocator(ring, doorbell ? RingControl.ControlBytes : 0);
            if (doorbell)
            {
                _doorbell = new RingDoorbellEndpoint<ExpertRequest, ExpertReply>(ring, coordinator: true, ExpertReply.Parser, doorbellSpin,
                    reply => Deliver(new TensorFrame<ExpertReply>(reply, ReadOnlyMemory<byte>.Empty) { ReceivedTimestamp = System.Diagnostics.Stopwatch.GetTimestamp() }),
                    ex => MarkBroken(new ExpertDispatchException(StatusCode.DataLoss, $"worker {worker.WorkerId} broke the ring doorbell: {ex.Message}", worker.WorkerId, inner: ex)),
                    "doorbell-" + worker.WorkerId);
                _doorbell.Start();
            }
        }
        _reader = Task.Run(ReadLoopAsync);
    }

    /// <summary>The worker.</summary>
    public WorkerEndpoint Worker { get; }

    /// <summary>The worker's handshake reply.</summary>
    public HelloReply Hello { get; }

    /// <summary>The row transport in use: <see cref="RowTransport.SharedMemoryFd"/> once the worker attached this
    /// connection's ring, else <see cref="RowTransport.Inline"/>.</summary>
    public RowTransport Transport => _ring is null ? RowTransport.Inline : RowTransport.SharedMemoryFd;

    /// <summary>True when requests and replies with rows in the ring are signalled through the ring's doorbell.</summary>
    public bool UsesDoorbell => _doorbell is not null;

    /// <summary>Requests sent through the doorbell so far (the rest went over the stream).</summary>
    public long DoorbellRequests => Interlocked.Read(ref _doorbellRequests);

    /// <summary>Why the stream ended, or null while it is usable.</summary>
    public Exception? Broken => _broken;

    /// <summary>Requests sent and not yet answered.</summary>
    public int PendingCount => _pending.Count;

    /// <summary>
    /// Connects: channel, <c>Hello</c> (checks the worker's protocol major, fingerprint and hidden size), on the same
    /// host the shared ring (a sealed memfd passed over the worker's rendezvous socket; any failure there only means
    /// inline rows, said once in the log), then the stream. Every call carries <see cref="DistributionOptions.ClusterToken"/>.
    /// </summary>
    /// <exception cref="ExpertDispatchException">The worker is unreachable, refuses the handshake or the credential, or disagrees on the model.</exception>
    /// <param name="worker">The worker and its advertised endpoint (<c>https://</c> when it serves TLS).</param>
    /// <param name="model">The model both sides must serve.</param>
    /// <param name="options">Timeouts, transports.</param>
    /// <param name="logger">Where stream failures are logged.</param>
    /// <param name="cancellationToken">Cancels the handshake.</param>
    /// <param name="tls">This coordinator's cluster credentials; required for an <c>https://</c> endpoint.</param>
    public static async Task<WorkerConnection> ConnectAsync(WorkerEndpoint worker, ModelDescriptor model, DistributionOptions options,
        ILogger logger, CancellationToken cancellationToken, Distributed.Hosting.ClusterCredentials? tls = null)
    {
        ArgumentNullException.ThrowIfNull(worker);
        if (worker.Endpoint.StartsWith("https://", StringComparison.OrdinalIgnoreCase) && tls is null)
        {
            throw new ExpertDispatchException(StatusCode.FailedPrecondition,
                $"worker {worker.WorkerId} serves its data plane over TLS ({worker.Endpoint}) but this coordinator has no cluster certificate (set Tls:CertificatePath, Tls:KeyPath and Tls:CaPath)",
                worker.WorkerId);
        }
        var channel = CreateChannel(worker.Endpoint, model, options, tls);
        SharedRing? ring = null;
        try
        {
            var invoker = channel.CreateCallInvoker();
            var hello = new HelloRequest
            {
                ProtocolMajor = ProtocolVersion.Major,
                ProtocolMinor = ProtocolVersion.Minor,
                ModelFingerprint = model.Fingerprint,
                CoordinatorId = options.CoordinatorId,
            };
            bool offered = options.PreferSharedMemory && SharedRing.IsSupported;
            bool doorbellOffered = offered && options.RingDoorbell && RingControl.CanUse(options.SharedRingBytes);
            if (offered)
            {
                hello.Transports.Add(RowTransport.SharedMemoryFd);
                hello.SharedRing = new SharedRingOffer { SizeBytes = (ulong)options.SharedRingBytes, HostId = SharedRing.LocalHostId, Doorbell = doorbellOffered };
            }
            hello.Transports.Add(RowTransport.Inline);
            var credential = new Metadata();
            if (options.ClusterToken is { } token)
            {
                credential.Add(ClusterToken.MetadataKey, "Bearer " + token);
            }
            HelloReply reply;
            try
            {
                reply = await invoker.AsyncUnaryCall(ExpertWorkerMethods.Hello, null,
                    new CallOptions(credential, DateTime.UtcNow + options.ConnectTimeout, cancellationToken), hello);
            }
            catch (RpcException ex) when (FindInner<System.Security.Authentication.AuthenticationException>(ex) is { } tlsFailure)
            {
                // A refused TLS handshake is a credential problem (another cluster's CA, no client certificate), not a
                // transient loss: retrying the same worker cannot help.
                throw new ExpertDispatchException(StatusCode.Unauthenticated,
                    $"TLS handshake with worker {worker.WorkerId} at {worker.Endpoint} failed: {tlsFailure.Message} (both sides need certificates signed by the same cluster CA, Tls:CaPath)",
                    worker.WorkerId, inner: ex);
            }
            catch (RpcException ex)
            {
                string hint = ex.StatusCode == StatusCode.Unauthenticated
                    ? $" (set {ClusterToken.EnvironmentVariable} to the cluster's token{(options.ClusterToken is null ? "; none is set" : "")})"
                    : "";
                throw new ExpertDispatchException(ex.StatusCode,
                    $"handshake with worker {worker.WorkerId} at {worker.Endpoint} failed: {ex.StatusCode} {ex.Status.Detail}{hint}", worker.WorkerId, inner: ex);
            }
            Check(reply.ProtocolMajor == ProtocolVersion.Major, $"speaks protocol {reply.ProtocolMajor}.{reply.ProtocolMinor}");
            Check(reply.ModelFingerprint == model.Fingerprint, $"serves model {reply.ModelFingerprint}");
            Check(reply.HiddenSize == (uint)model.HiddenSize, $"reports hidden size {reply.HiddenSize}");
            Check(reply.Transport is RowTransport.Inline || (reply.Transport is RowTransport.SharedMemoryFd && offered && reply.SharedRing is not null),
                $"chose transport {reply.Transport} that was not offered");
            // Workers from before FP8 send nothing: they compute weight-only.
            string activations = reply.ExpertActivations is { Length: > 0 } a ? a : "weight-only";
            Check(activations == options.ExpertActivations,
                $"computes its FP8 experts with {activations} activations, this coordinator with {options.ExpertActivations} (start both with or without --fp8-activations)");
            void Check(bool ok, string what)
            {
                if (!ok)
                {
                    throw new ExpertDispatchException(StatusCode.FailedPrecondition,
                        $"worker {worker.WorkerId} at {worker.Endpoint} {what}; this coordinator needs protocol {ProtocolVersion.Major}, model {model.Fingerprint}, hidden {model.HiddenSize}",
                        worker.WorkerId);
                }
            }
            // A worker of protocol 1.3 never agrees (it does not know the field): the stream carries every request.
            bool doorbell = doorbellOffered && reply.Transport == RowTransport.SharedMemoryFd && reply.SharedRing?.Doorbell == true;
            if (reply.Transport == RowTransport.SharedMemoryFd)
            {
                ring = await AttachRingAsync(worker, reply, options, doorbell, logger, cancellationToken).ConfigureAwait(false);
            }
            var headers = new Metadata
            {
                { ProtocolVersion.MajorHeader, ProtocolVersion.Major.ToString(System.Globalization.CultureInfo.InvariantCulture) },
                { ProtocolVersion.FingerprintHeader, model.Fingerprint },
                { ProtocolVersion.SessionHeader, reply.SessionId },
            };
            foreach (var entry in credential)
            {
                headers.Add(entry);
            }
            var call = invoker.AsyncDuplexStreamingCall(ExpertWorkerMethods.Dispatch, null, new CallOptions(headers));
            return new WorkerConnection(worker, channel, reply, ring, doorbell && ring is not null, options.DoorbellSpin, call, logger);
        }
        catch
        {
            ring?.Dispose();
            channel.Dispose();
            throw;
        }
    }

    // Creates this connection's sealed ring and passes it to the worker; null (rows go inline) when that fails.
    private static async Task<SharedRing?> AttachRingAsync(WorkerEndpoint worker, HelloReply reply, DistributionOptions options, bool doorbell,
        ILogger logger, CancellationToken cancellationToken)
    {
        SharedRing? ring = null;
        try
        {
            ring = SharedRing.CreateSealed(options.SharedRingBytes);
            if (doorbell)
            {
                // Before the worker maps it: the worker reads slot sequences from its first request on.
                RingControl.Initialize(ring);
            }
            await RingRendezvous.AttachAsync(reply.SharedRing.SocketPath, reply.SessionId, reply.SharedRing.Nonce.Memory, ring, options.ConnectTimeout,
                cancellationToken).ConfigureAwait(false);
            return ring;
        }
        catch (Exception ex) when (ex is SharedRingException or ArgumentException or PlatformNotSupportedException)
        {
            ring?.Dispose();
            LogRingUnavailable(logger, worker.WorkerId, worker.Endpoint, ex.Message);
            return null;
        }
    }

    private static T? FindInner<T>(Exception ex)
        where T : Exception
    {
        for (Exception? e = ex; e is not null; e = e.InnerException)
        {
            if (e is T found)
            {
                return found;
            }
        }
        return null;
    }

    private static GrpcChannel CreateChannel(string endpoint, ModelDescriptor model, DistributionOptions options, Distributed.Hosting.ClusterCredentials? tls)
    {
        var handler = new SocketsHttpHandler
        {
            EnableMultipleHttp2Connections = true,
            PooledConnectionIdleTimeout = Timeout.InfiniteTimeSpan,
            KeepAlivePingDelay = TimeSpan.FromSeconds(30),
            KeepAlivePingTimeout = TimeSpan.FromSeconds(20),
            // 16 MiB is the largest SocketsHttpHandler accepts; the default 64 KiB stalls multi-MiB replies.
            InitialHttp2StreamWindowSize = 16 << 20,
            ConnectTimeout = options.ConnectTimeout,
        };
        if (tls is not null && endpoint.StartsWith("https://", StringComparison.OrdinalIgnoreCase))
        {
            // Mutual TLS: this coordinator proves itself with the cluster certificate and accepts only a worker whose
            // certificate the cluster CA signed.
            handler.SslOptions = new System.Net.Security.SslClientAuthenticationOptions
            {
                ClientCertificates = [tls.Certificate],
                RemoteCertificateValidationCallback = (_, certificate, chain, errors) => tls.ValidatePeer(certificate, chain, errors),
            };
        }
        string address = endpoint;
        if (endpoint.StartsWith("unix:", StringComparison.Ordinal))
        {
            string socketPath = endpoint["unix:".Length..];
            handler.ConnectCallback = async (_, ct) =>
            {
                var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), ct);
                    return new NetworkStream(socket, ownsSocket: true);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
            };
            address = "http://localhost";
        }
        int maxMessage = (int)Math.Min(int.MaxValue, 4096L * model.HiddenSize * 4 * 16 + (1 << 20));
        return GrpcChannel.ForAddress(address, new GrpcChannelOptions
        {
            HttpHandler = handler,
            MaxReceiveMessageSize = maxMessage,
            MaxSendMessageSize = maxMessage,
        });
    }

    /// <inheritdoc />
    public RowLease RentRows(int bytes) => _ring?.TryRent(bytes) ?? RowLease.Inline(bytes);

    /// <summary>
    /// Sends one request (the header's <c>request_id</c> is assigned here) whose rows are in <paramref name="rows"/>,
    /// and returns the task of its reply. The task faults with <see cref="ExpertDispatchException"/> when the stream breaks.
    /// </summary>
    public async Task<Task<TensorFrame<ExpertReply>>> SendAsync(ExpertRequest header, RowLease rows, CancellationToken cancellationToken)
    {
        if (_broken is { } broken)
        {
            throw new ExpertDispatchException(StatusCode.Unavailable, $"stream to worker {Worker.WorkerId} at {Worker.Endpoint} is broken: {broken.Message}", Worker.WorkerId, inner: broken);
        }
        header.RequestId = (ulong)Interlocked.Increment(ref _nextRequestId);
        var tcs = new TaskCompletionSource<TensorFrame<ExpertReply>>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pending[header.RequestId] = tcs;
        TensorFrame<ExpertRequest> frame;
        if (rows.Descriptor is { } shared)
        {
            header.SharedRows = shared;
            if (TrySendThroughDoorbell(header))
            {
                return tcs.Task;
            }
            frame = new TensorFrame<ExpertRequest>(header, ReadOnlyMemory<byte>.Empty);
        }
        else
        {
            frame = new TensorFrame<ExpertRequest>(header, rows.InlineMemory);
        }
        await _writeLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await _call.RequestStream.WriteAsync(frame, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is RpcException or InvalidOperationException or IOException or OperationCanceledException)
        {
            _pending.TryRemove(header.RequestId, out _);
            if (ex is OperationCanceledException && cancellationToken.IsCancellationRequested)
            {
                throw;
            }
            MarkBroken(ex);
            throw new ExpertDispatchException(StatusCode.Unavailable, $"sending to worker {Worker.WorkerId} at {Worker.Endpoint} failed: {ex.Message}", Worker.WorkerId, inner: ex);
        }
        finally
        {
            _writeLock.Release();
        }
        return tcs.Task;
    }

    // Within the credit (so the worker's reply queue cannot overflow), through the ring's request queue; false = use the stream.
    private bool TrySendThroughDoorbell(ExpertRequest header)
    {
        if (_doorbell is null)
        {
            return false;
        }
        if (Interlocked.Increment(ref _doorbellOutstanding) > RingControl.Slots)
        {
            Interlocked.Decrement(ref _doorbellOutstanding);
            return false;
        }
        // Registered before it is published: the reply may come back before TrySend returns.
        _doorbellIds[header.RequestId] = 0;
        if (_doorbell.TrySend(header))
        {
            Interlocked.Increment(ref _doorbellRequests);
            return true;
        }
        Answered(header.RequestId);
        return false;
    }

    // A reply to a doorbell request (by either path) gives its credit back.
    private void Answered(ulong requestId)
    {
        if (_doorbellIds.TryRemove(requestId, out _))
        {
            Interlocked.Decrement(ref _doorbellOutstanding);
        }
    }

    // Completes the pending request a reply answers (from the stream or the doorbell); a reply nobody waits for is dropped.
    private void Deliver(TensorFrame<ExpertReply> reply)
    {
        Answered(reply.Header.RequestId);
        if (!_pending.TryRemove(reply.Header.RequestId, out var tcs) || !tcs.TrySetResult(reply))
        {
            reply.Dispose();
        }
    }

    /// <summary>Forgets a request (its deadline passed): its reply task is cancelled and a late reply is dropped. A doorbell
    /// request keeps its credit until its reply arrives: the worker may still put that reply in the reply queue.</summary>
    public void Abandon(ulong requestId)
    {
        if (_pending.TryRemove(requestId, out var tcs))
        {
            tcs.TrySetCanceled();
        }
    }

    private async Task ReadLoopAsync()
    {
        try
        {
            while (await _call.ResponseStream.MoveNext(_stop.Token).ConfigureAwait(false))
            {
                var reply = _call.ResponseStream.Current;
                reply.ReceivedTimestamp = System.Diagnostics.Stopwatch.GetTimestamp();
                if (reply.Malformed is { } reason)
                {
                    throw new ExpertDispatchException(StatusCode.DataLoss, $"worker {Worker.WorkerId} sent a malformed reply: {reason}", Worker.WorkerId);
                }
                Deliver(reply);
            }
            MarkBroken(new RpcException(new Status(StatusCode.Unavailable, "the worker closed the stream")));
        }
        catch (Exception ex)
        {
            MarkBroken(ex);
        }
    }

    private void MarkBroken(Exception ex)
    {
        _broken ??= ex;
        if (!_stop.IsCancellationRequested)
        {
            LogBroken(Worker.WorkerId, Worker.Endpoint, ex.Message);
        }
        var status = ex is RpcException rpc ? rpc.StatusCode : ex is ExpertDispatchException d ? d.Status : StatusCode.Unavailable;
        foreach (var id in _pending.Keys)
        {
            if (_pending.TryRemove(id, out var tcs))
            {
                tcs.TrySetException(new ExpertDispatchException(status,
                    $"stream to worker {Worker.WorkerId} at {Worker.Endpoint} ended: {(ex is RpcException r ? $"{r.StatusCode} {r.Status.Detail}" : ex.Message)}",
                    Worker.WorkerId, inner: ex));
            }
        }
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        try
        {
            await _call.RequestStream.CompleteAsync().WaitAsync(TimeSpan.FromSeconds(1)).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is RpcException or InvalidOperationException or TimeoutException or IOException or OperationCanceledException)
        {
            // The stream is already gone; disposing the call below releases it.
        }
        _call.Dispose();
        try
        {
            await _reader.WaitAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
        }
        _channel.Dispose();
        _doorbell?.Dispose();
        _ring?.Ring.Dispose();
        _writeLock.Dispose();
        _stop.Dispose();
    }

    [LoggerMessage(EventId = 3100, Level = LogLevel.Warning, Message = "Stream to worker {WorkerId} at {Endpoint} ended: {Reason}")]
    private partial void LogBroken(string workerId, string endpoint, string reason);

    [LoggerMessage(EventId = 3101, Level = LogLevel.Warning,
        Message = "Worker {WorkerId} at {Endpoint} is on this host but the shared ring could not be passed ({Reason}); rows travel inline")]
    private static partial void LogRingUnavailable(ILogger logger, string workerId, string endpoint, string reason);
}
