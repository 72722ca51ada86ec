using System.Buffers;
using System.Diagnostics;
using Distributed.Coordinator.Moe;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Grpc.Core;
using Microsoft.Extensions.Logging.Abstractions;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// The production <see cref="IExpertDispatcher"/>: per MoE layer it groups the routed rows by the worker chosen for
/// their expert, sends ONE request per worker (more when a worker's share exceeds its <c>max_rows_per_dispatch</c>) on
/// that worker's long-lived stream, all workers in flight at once, and returns; the model computes the shared expert
/// meanwhile. Its parts, each replaceable and unit-tested alone:
/// <list type="bullet">
/// <item><see cref="ReplicaSelector"/>: which holder computes which slice (power of two choices, splitting of large
/// groups over replicas, suspected workers avoided);</item>
/// <item><see cref="WorkerSuspicion"/>: workers not chosen again for a while after a failure (on a <see cref="TimeProvider"/>);</item>
/// <item><see cref="DispatchRecovery"/>: after a round with failures, the table to re-send under (another replica, a
/// re-placement by the placement source, or a newer plan after a stale-version refusal);</item>
/// <item><see cref="DispatchStatistics"/> and <see cref="ExpertLoadStatistics"/>: where time goes, and the load per expert and worker;</item>
/// <item><see cref="IWorkerConnectionSource"/> / <see cref="IWorkerConnection"/>: the links to the workers.</item>
/// </list>
/// A worker whose stream breaks, whose connection fails, or that does not answer before the deadline is lost for the
/// round (its slices go out again, up to <see cref="DistributionOptions.MaxDispatchAttempts"/> rounds). Everything else
/// (bad request, malformed reply) fails the call.
/// Combine places every reply row at its fixed place in the grouped row order and sums slots per token in slot order
/// (<see cref="DispatchPlan.Combine"/>), so results never depend on arrival order, placement, replicas, splits or
/// retries. With FP32 on the wire the output is bitwise what <see cref="LocalExpertDispatcher"/> computes.
/// </summary>
public sealed partial class GrpcExpertDispatcher : IExpertDispatcher
{
    private readonly IPlacementSource _placement;
    private readonly IWorkerConnectionSource _connections;
    private readonly DistributionOptions _options;
    private readonly TimeProvider _time;
    private readonly ReplicaSelector _replicas;
    private readonly DispatchRecovery _recovery;

    /// <summary>Creates the dispatcher over a pool of real worker connections.</summary>
    public GrpcExpertDispatcher(IPlacementSource placement, WorkerChannelPool pool, ILogger? logger = null)
        : this(placement, (IWorkerConnectionSource)pool, logger)
    {
    }

    /// <summary>Creates the dispatcher over any source of worker links (unit tests use fakes).</summary>
    /// <param name="placement">The serving plan and recovery.</param>
    /// <param name="connections">The worker links, the model and the data-plane options.</param>
    /// <param name="logger">Log sink; null = none.</param>
    /// <param name="time">Clock of deadlines and suspicion; null = <see cref="TimeProvider.System"/>.</param>
    /// <param name="random">Source of the replica choice; null = <see cref="Random.Shared"/>.</param>
    public GrpcExpertDispatcher(IPlacementSource placement, IWorkerConnectionSource connections, ILogger? logger = null, TimeProvider? time = null,
        Random? random = null)
    {
        _placement = placement ?? throw new ArgumentNullException(nameof(placement));
        _connections = connections ?? throw new ArgumentNullException(nameof(connections));
        _options = connections.Options;
        _time = time ?? TimeProvider.System;
        Load = new ExpertLoadStatistics(connections.Model);
        Suspicion = new WorkerSuspicion(_options.SuspectDuration, _time);
        _replicas = new ReplicaSelector(_options.SplitRows, Suspicion, id => Load.Worker(id).OutstandingRows, random ?? Random.Shared);
        _recovery = new DispatchRecovery(_placement, Suspicion, _options, _time, logger ?? NullLogger.Instance);
    }

    /// <summary>The worker links this dispatcher sends through (a <see cref="WorkerChannelPool"/> for real workers).</summary>
    public IWorkerConnectionSource ConnectionSource => _connections;

    /// <summary>Where dispatch time goes.</summary>
    public DispatchStatistics Statistics { get; } = new();

    /// <summary>Routed tokens per expert and data-plane figures per worker.</summary>
    public ExpertLoadStatistics Load { get; }

    /// <summary>Workers not chosen while suspected.</summary>
    public WorkerSuspicion Suspicion { get; }

    /// <summary>Where the serving plan comes from (readiness and metrics read it).</summary>
    public IPlacementSource Placement => _placement;

    /// <summary>Metrics and spans (issue #6); null records nothing. Set once before the first dispatch.</summary>
    public Diagnostics.CoordinatorInstruments? Instruments { get; set; }

    /// <summary>Slices re-sent after a worker failed or refused a stale plan version.</summary>
    public long ResentSlices => _recovery.ResentSlices;

    /// <summary>Times the placement source was asked to re-place the experts of unreachable workers.</summary>
    public long Recoveries => _recovery.Recoveries;

    /// <summary>The clock's timestamp (<see cref="Stopwatch.GetTimestamp"/> with the system clock) when a worker was last found lost (0 = never).</summary>
    public long LastLossTimestamp => _recovery.LastLossTimestamp;

    /// <summary>The clock's timestamp when a recovery last returned a plan to retry with (0 = never).</summary>
    public long LastRecoveryTimestamp => _recovery.LastRecoveryTimestamp;

    /// <inheritdoc />
    /// <exception cref="ExpertDispatchException">No serving plan, or an expert without any worker in the plan.</exception>
    public async ValueTask<DispatchHandle> DispatchAsync(int layer, ReadOnlyMemory<float> hidden, RoutingResult routing, CancellationToken cancellationToken)
    {
        long t0 = Stopwatch.GetTimestamp();
        // Null unless a trace exporter listens; its W3C id rides in every request so the worker's span joins the trace.
        using var dispatchSpan = Diagnostics.CoordinatorInstruments.Tracing.StartActivity("moe.dispatch", ActivityKind.Client);
        dispatchSpan?.SetTag("moe.layer", layer);
        var table = await _placement.GetServingTableAsync(_options.RecoveryTimeout, cancellationToken).ConfigureAwait(false);
        var model = table.Model;
        if ((uint)layer >= (uint)model.NumLayers || !model.IsMoeLayer(layer))
        {
            throw new ArgumentOutOfRangeException(nameof(layer), layer, "not a MoE layer");
        }
        int h = model.HiddenSize;
        var plan = DispatchPlan.Build(routing, model.NumExperts);
        if (hidden.Length != plan.Tokens * h)
        {
            throw new ArgumentException($"hidden has {hidden.Length} values, expected {plan.Tokens} x {h}", nameof(hidden));
        }
        Load.RecordRouting(layer, plan.Experts, plan.RowCounts);
        var slices = new List<RowSlice>(plan.Experts.Length);
        for (int g = 0, row = 0; g < plan.Experts.Length; row += plan.RowCounts[g], g++)
        {
            slices.Add(new RowSlice(plan.Experts[g], row, plan.RowCounts[g]));
        }
        var handle = new GrpcDispatchHandle(layer, plan, hidden, routing, dispatchSpan?.Id ?? "");
        await SendAsync(handle, table, slices, cancellationToken).ConfigureAwait(false);
        long dispatchTicks = Stopwatch.GetTimestamp() - t0;
        Statistics.AddDispatch(dispatchTicks, handle.Parts.Count, handle.Parts.Sum(p => (long)p.Lease.Span.Length));
        Instruments?.Dispatched(layer, dispatchTicks, plan.Experts, plan.RowCounts, table.Version);
        return handle;
    }

    /// <inheritdoc />
    /// <exception cref="ExpertDispatchException">A worker rejected the request for a reason a retry cannot fix (its
    /// status), sent a malformed reply (DataLoss), or the failed workers' experts could not be re-placed within the
    /// recovery timeout or <see cref="DistributionOptions.MaxDispatchAttempts"/> (Unavailable, DeadlineExceeded).</exception>
    public ValueTask CombineAsync(DispatchHandle handle, Memory<float> output, CancellationToken cancellationToken)
        => CombineCoreAsync(handle, output, accumulate: false, cancellationToken);

    /// <inheritdoc />
    /// <exception cref="ExpertDispatchException">As <see cref="CombineAsync"/>; <paramref name="output"/> may then be partly updated.</exception>
    public ValueTask CombineAddAsync(DispatchHandle handle, Memory<float> output, CancellationToken cancellationToken)
        => CombineCoreAsync(handle, output, accumulate: true, cancellationToken);

    private async ValueTask CombineCoreAsync(DispatchHandle handle, Memory<float> output, bool accumulate, CancellationToken cancellationToken)
    {
        if (handle is not GrpcDispatchHandle dispatch)
        {
            throw new ArgumentException("handle was not produced by this dispatcher", nameof(handle));
        }
        var plan = dispatch.Plan;
        int h = _connections.Model.HiddenSize;
        if (output.Length != plan.Tokens * h)
        {
            throw new ArgumentException($"output has {output.Length} values, expected {plan.Tokens} x {h}", nameof(output));
        }
        long t0 = Stopwatch.GetTimestamp();
        // Top-1 (Llama 4): every token has exactly one routed row, so replies are decoded straight into the token's
        // output row (added to it when accumulating); with several slots the rows go through the grouped buffer and
        // are summed in slot order first.
        var sink = plan.TopK == 1 ? new RowSink(output, plan, accumulate) : new RowSink(ArrayPool<float>.Shared.Rent(Math.Max(1, plan.Rows * h)), plan);
        long waitTicks = 0, receivedBytes = 0, workerNanos = 0, computeNanos = 0, lastReceived = 0;
        try
        {
            for (int attempt = 1; ; attempt++)
            {
                foreach (var part in dispatch.TakeParts())
                {
                    long w0 = Stopwatch.GetTimestamp();
                    var outcome = await AwaitPartAsync(dispatch, part, sink, h, cancellationToken).ConfigureAwait(false);
                    waitTicks += Stopwatch.GetTimestamp() - w0;
                    receivedBytes += outcome.Bytes;
                    workerNanos += outcome.WorkerNanos;
                    computeNanos += outcome.ComputeNanos;
                    lastReceived = Math.Max(lastReceived, outcome.ReceivedTimestamp);
                }
                if (dispatch.Failed.Count == 0)
                {
                    break;
                }
                if (attempt >= _options.MaxDispatchAttempts)
                {
                    var last = dispatch.LastFailure!;
                    throw new ExpertDispatchException(last.Status,
                        $"MoE layer {dispatch.Layer}: gave up after {attempt} attempts: {last.Message}", last.WorkerId, dispatch.Layer, last);
                }
                var (table, failed) = await _recovery.PrepareRetryAsync(dispatch, cancellationToken).ConfigureAwait(false);
                await SendAsync(dispatch, table, failed, cancellationToken).ConfigureAwait(false);
            }
            if (sink.Grouped is { } grouped)
            {
                if (accumulate)
                {
                    plan.CombineAdd(grouped.AsSpan(0, plan.Rows * h), h, output.Span);
                }
                else
                {
                    plan.Combine(grouped.AsSpan(0, plan.Rows * h), h, output.Span);
                }
            }
        }
        finally
        {
            if (sink.Grouped is { } grouped)
            {
                ArrayPool<float>.Shared.Return(grouped);
            }
            foreach (var part in dispatch.AllParts)
            {
                if (!part.Done)
                {
                    Load.Worker(part.Connection.Worker.WorkerId).Failed((int)part.Header.Rows);
                    part.ReleaseWhenAnswered();
                }
            }
        }
        long combineTicks = Stopwatch.GetTimestamp() - t0;
        long inFlight = dispatch.FirstSentTimestamp > 0 && lastReceived > dispatch.FirstSentTimestamp ? lastReceived - dispatch.FirstSentTimestamp : 0;
        Statistics.AddCombine(waitTicks, combineTicks - waitTicks, receivedBytes, workerNanos, computeNanos, inFlight);
        Instruments?.Combined(dispatch.Layer, combineTicks);
    }

    /// <summary>Assigns <paramref name="slices"/> to holders under <paramref name="table"/> and sends them, one request per
    /// worker and chunk; slices whose worker cannot be reached land in the handle's failed list.</summary>
    private async Task SendAsync(GrpcDispatchHandle dispatch, ExpertPlacementTable table, List<RowSlice> slices, CancellationToken cancellationToken)
    {
        int layer = dispatch.Layer;
        dispatch.TableVersion = table.Version;
        var byWorker = _replicas.Assign(table, layer, slices);
        int h = _connections.Model.HiddenSize;
        var wire = _options.WireDType;
        // The larger of a request row and a reply row (FP8 requests are answered in bf16 or fp32): what a message must fit.
        int rowBytes = (int)Math.Max(WireCodec.RowBytes(h, wire), WireCodec.RowBytes(h, _options.ReplyWireDType));
        var connects = byWorker.Keys.ToDictionary(w => w, w => _connections.ConnectAsync(table.Workers[w], cancellationToken));
        foreach (var (w, workerSlices) in byWorker)
        {
            var worker = table.Workers[w];
            IWorkerConnection connection;
            try
            {
                connection = await connects[w].ConfigureAwait(false);
            }
            catch (ExpertDispatchException ex) when (DispatchRecovery.IsWorkerLoss(ex.Status))
            {
                _recovery.Lose(dispatch, table, worker, workerSlices, ex);
                continue;
            }
            // Segments must name each expert once, ascending; a request carries at most the worker's
            // max_rows_per_dispatch rows (and fits its message limit), so a larger share is split into several requests
            // on the same stream (combine places rows by their grouped position, whichever request carried them).
            workerSlices.Sort((x, y) => x.Expert.CompareTo(y.Expert));
            var chunks = Chunk(workerSlices, RowsPerRequest(connection.Hello, rowBytes));
            for (int c = 0; c < chunks.Count; c++)
            {
                var chunk = chunks[c];
                int workerRows = chunk.Sum(s => s.Rows);
                int length = checked((int)(workerRows * WireCodec.RowBytes(h, wire)));
                // FP8 rows travel inline: their replies (bf16 or fp32) are larger than the request and would not fit a ring region.
                var lease = wire == WireDType.Fp8E4M3 ? RowLease.Inline(length) : connection.RentRows(length);
                var header = new ExpertRequest
                {
                    Layer = (uint)layer,
                    PlanVersion = table.Version,
                    Dtype = wire,
                    ReplyDtype = wire == WireDType.Fp8E4M3 ? _options.ReplyWireDType : WireDType.Unspecified,
                    HiddenSize = (uint)h,
                    Rows = (uint)workerRows,
                    Traceparent = dispatch.Traceparent,
                };
                EncodeRows(dispatch, chunk, lease.Span, h);
                foreach (var s in chunk)
                {
                    header.Segments.Add(new ExpertSegment { Expert = (uint)s.Expert, Rows = (uint)s.Rows });
                }
                Task<TensorFrame<ExpertReply>> reply;
                try
                {
                    reply = await connection.SendAsync(header, lease, cancellationToken).ConfigureAwait(false);
                }
                catch (ExpertDispatchException ex) when (DispatchRecovery.IsWorkerLoss(ex.Status))
                {
                    lease.Dispose();
                    _recovery.Lose(dispatch, table, worker, chunks.Skip(c).SelectMany(x => x), ex);
                    break;
                }
                catch
                {
                    lease.Dispose();
                    throw;
                }
                long sent = _time.GetTimestamp();
                if (dispatch.FirstSentTimestamp == 0)
                {
                    dispatch.FirstSentTimestamp = Stopwatch.GetTimestamp();
                }
                Load.Worker(worker.WorkerId).Sent(workerRows, length);
                Instruments?.WorkerSent(worker.WorkerId, workerRows, length);
                var part = new DispatchPart(connection, header, lease, [.. chunk], reply, sent, table);
                dispatch.Parts.Add(part);
                dispatch.AllParts.Add(part);
            }
        }
    }

    private async Task<PartOutcome> AwaitPartAsync(GrpcDispatchHandle dispatch, DispatchPart part, RowSink sink, int h, CancellationToken cancellationToken)
    {
        var worker = part.Connection.Worker;
        var counters = Load.Worker(worker.WorkerId);
        int rows = (int)part.Header.Rows;
        TensorFrame<ExpertReply> reply;
        try
        {
            var left = _options.DispatchTimeout - _time.GetElapsedTime(part.SentTimestamp);
            reply = await part.Reply.WaitAsync(left > TimeSpan.Zero ? left : TimeSpan.Zero, _time, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException ex)
        {
            part.Done = true;
            part.Connection.Abandon(part.Header.RequestId);
            counters.Failed(rows);
            _recovery.Lose(dispatch, part.Table, worker, part.Slices, new ExpertDispatchException(StatusCode.DeadlineExceeded,
                $"MoE layer {dispatch.Layer}: worker {worker.WorkerId} at {worker.Endpoint} did not answer request {part.Header.RequestId} ({rows} rows) within the {_options.DispatchTimeout.TotalMilliseconds:F0} ms dispatch deadline",
                worker.WorkerId, dispatch.Layer, ex));
            part.ReleaseWhenAnswered();
            return default;
        }
        catch (ExpertDispatchException ex) when (DispatchRecovery.IsWorkerLoss(ex.Status))
        {
            part.Done = true;
            counters.Failed(rows);
            _recovery.Lose(dispatch, part.Table, worker, part.Slices, ex);
            part.Release();
            return default;
        }
        part.Done = true;
        using (reply)
        {
            var verdict = TensorFrameValidator.ValidateReply(reply.Header, reply.Payload.Length, part.Header);
            ReadOnlySpan<byte> payload = reply.Payload.Span;
            if (verdict.IsOk && part.Header.SharedRows is { } shared)
            {
                var got = reply.Header.SharedRows;
                if (got is null || got.Offset != shared.Offset || got.Length != shared.Length)
                {
                    verdict = FrameValidationResult.Fail(StatusCode.DataLoss, $"worker reply to request {part.Header.RequestId} names another shared region");
                }
                payload = part.Lease.Span;
            }
            if (!verdict.IsOk)
            {
                counters.Failed(rows);
                part.Release();
                var ex = new ExpertDispatchException(verdict.Code,
                    $"MoE layer {dispatch.Layer}: worker {worker.WorkerId} at {worker.Endpoint} answered {verdict.Code}: {verdict.Message}",
                    worker.WorkerId, dispatch.Layer);
                if (verdict.Code == StatusCode.FailedPrecondition
                    && verdict.Violations.Any(v => v.Field == "plan_version" || v.Field.StartsWith("segments", StringComparison.Ordinal)))
                {
                    // The worker moved on to a newer plan (or released an expert this older table still routes to it).
                    dispatch.Failed.AddRange(part.Slices);
                    dispatch.Stale = true;
                    dispatch.LastFailure = ex;
                    return default;
                }
                throw ex;
            }
            sink.Accept(payload, WireCodec.ReplyDType(part.Header), part.Slices, h);
            long latency = _time.GetTimestamp() - part.SentTimestamp;
            long latencyTicks = (long)(latency * (double)Stopwatch.Frequency / _time.TimestampFrequency);
            counters.Answered(rows, payload.Length, latencyTicks);
            Instruments?.WorkerReplied(worker.WorkerId, payload.Length, latencyTicks);
            var t = reply.Header.Timings;
            var outcome = new PartOutcome(payload.Length, t is null ? 0 : (long)(t.DecodeNanos + t.ComputeNanos + t.EncodeNanos), t is null ? 0 : (long)t.ComputeNanos,
                reply.ReceivedTimestamp);
            part.Release();
            return outcome;
        }
    }

    private readonly record struct PartOutcome(long Bytes, long WorkerNanos, long ComputeNanos, long ReceivedTimestamp);
}
