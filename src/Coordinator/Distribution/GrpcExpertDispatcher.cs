using System.Collections.Concurrent;
using System.Diagnostics;
using Distributed.Coordinator.Moe;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Grpc.Core;
using Microsoft.Extensions.Logging.Abstractions;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// The production <see cref="IExpertDispatcher"/>: per MoE layer it groups the routed rows by the worker chosen for
/// their expert (<see cref="ExpertPlacementTable"/>), sends ONE request per worker on that worker's long-lived stream,
/// all workers in flight at once, and returns; the model computes the shared expert meanwhile.
/// <list type="bullet">
/// <item>Replicas: when an expert has several healthy holders, its rows go to the less loaded of two random holders
/// (power of two choices on rows in flight), and an expert with at least <see cref="DistributionOptions.SplitRows"/>
/// rows is split into contiguous slices over its least loaded holders.</item>
/// <item>Failures: a worker whose stream breaks, whose connection fails, or that does not answer before the
/// deadline is suspected (not chosen again for this plan version); its slices are re-sent to another healthy holder,
/// or, when none is left, the placement source re-places its experts on the survivors (<see cref="IPlacementSource.RecoverAsync"/>)
/// and the slices go out again under the new plan. A worker refusing a plan version as stale makes the slices wait for
/// the newer table and go out again. Everything else (bad request, malformed reply) fails the call.</item>
/// </list>
/// Combine decodes every reply into its fixed place in the grouped row order and sums slots per token with
/// <see cref="DispatchPlan.Combine"/>, so results never depend on arrival order, placement, replicas, splits or
/// retries. With FP32 on the wire the output is bitwise what <see cref="LocalExpertDispatcher"/> computes.
/// </summary>
public sealed partial class GrpcExpertDispatcher : IExpertDispatcher
{
    private readonly IPlacementSource _placement;
    private readonly WorkerChannelPool _pool;
    private readonly DistributionOptions _options;
    private readonly ILogger _logger;
    private readonly ConcurrentDictionary<string, Suspicion> _suspects = new(StringComparer.Ordinal);
    private long _resentSlices;
    private long _recoveries;
    private long _lastLossTicks;
    private long _lastRecoveryTicks;

    /// <summary>Creates the dispatcher.</summary>
    public GrpcExpertDispatcher(IPlacementSource placement, WorkerChannelPool pool, ILogger? logger = null)
    {
        _placement = placement ?? throw new ArgumentNullException(nameof(placement));
        _pool = pool ?? throw new ArgumentNullException(nameof(pool));
        _options = pool.Options;
        _logger = logger ?? NullLogger.Instance;
        Load = new ExpertLoadStatistics(pool.Model);
    }

    /// <summary>Where dispatch time goes.</summary>
    public DispatchStatistics Statistics { get; } = new();

    /// <summary>Routed tokens per expert and data-plane figures per worker.</summary>
    public ExpertLoadStatistics Load { get; }

    /// <summary>Where the serving plan comes from (readiness and metrics read it).</summary>
    public IPlacementSource Placement => _placement;

    /// <summary>Metrics and spans (issue #6); null records nothing. Set once before the first dispatch.</summary>
    public Diagnostics.CoordinatorInstruments? Instruments { get; set; }

    /// <summary>Slices re-sent after a worker failed or refused a stale plan version.</summary>
    public long ResentSlices => Interlocked.Read(ref _resentSlices);

    /// <summary>Times the placement source was asked to re-place the experts of unreachable workers.</summary>
    public long Recoveries => Interlocked.Read(ref _recoveries);

    /// <summary><see cref="Stopwatch.GetTimestamp"/> when a worker was last found lost (0 = never).</summary>
    public long LastLossTimestamp => Interlocked.Read(ref _lastLossTicks);

    /// <summary><see cref="Stopwatch.GetTimestamp"/> when a recovery last returned a plan to retry with (0 = never).</summary>
    public long LastRecoveryTimestamp => Interlocked.Read(ref _lastRecoveryTicks);

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
        var slices = new List<Slice>(plan.Experts.Length);
        for (int g = 0, row = 0; g < plan.Experts.Length; row += plan.RowCounts[g], g++)
        {
            slices.Add(new Slice(plan.Experts[g], row, plan.RowCounts[g]));
        }
        var handle = new GrpcHandle(layer, plan, hidden, routing) { Traceparent = dispatchSpan?.Id ?? "" };
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
    public async ValueTask CombineAsync(DispatchHandle handle, Memory<float> output, CancellationToken cancellationToken)
    {
        if (handle is not GrpcHandle dispatch)
        {
            throw new ArgumentException("handle was not produced by this dispatcher", nameof(handle));
        }
        var plan = dispatch.Plan;
        int h = _pool.Model.HiddenSize;
        if (output.Length != plan.Tokens * h)
        {
            throw new ArgumentException($"output has {output.Length} values, expected {plan.Tokens} x {h}", nameof(output));
        }
        long t0 = Stopwatch.GetTimestamp();
        float[] expertOut = System.Buffers.ArrayPool<float>.Shared.Rent(Math.Max(1, plan.Rows * h));
        long waitTicks = 0, receivedBytes = 0, workerNanos = 0, computeNanos = 0;
        try
        {
            for (int attempt = 1; ; attempt++)
            {
                var parts = dispatch.TakeParts();
                foreach (var part in parts)
                {
                    long w0 = Stopwatch.GetTimestamp();
                    var outcome = await AwaitPartAsync(dispatch, part, expertOut, cancellationToken).ConfigureAwait(false);
                    waitTicks += Stopwatch.GetTimestamp() - w0;
                    receivedBytes += outcome.Bytes;
                    workerNanos += outcome.WorkerNanos;
                    computeNanos += outcome.ComputeNanos;
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
                await RetryAsync(dispatch, cancellationToken).ConfigureAwait(false);
            }
            plan.Combine(expertOut.AsSpan(0, plan.Rows * h), h, output.Span);
        }
        finally
        {
            System.Buffers.ArrayPool<float>.Shared.Return(expertOut);
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
        Statistics.AddCombine(waitTicks, combineTicks - waitTicks, receivedBytes, workerNanos, computeNanos);
        Instruments?.Combined(dispatch.Layer, combineTicks);
    }

    private async Task RetryAsync(GrpcHandle dispatch, CancellationToken cancellationToken)
    {
        var failed = dispatch.Failed.ToList();
        dispatch.Failed.Clear();
        var lost = dispatch.Lost.ToList();
        dispatch.Lost.Clear();
        bool stale = dispatch.Stale;
        dispatch.Stale = false;
        var version = dispatch.TableVersion;
        var table = _placement.GetServingTable();
        if (table.Version == version && lost.Count > 0 && failed.Any(s => !HasHealthyOwner(table, dispatch.Layer, s.Expert)))
        {
            if (!_placement.CanRecover)
            {
                // Fixed placement and no other holder: the worker's own failure is the answer.
                throw dispatch.LastFailure!;
            }
            Interlocked.Increment(ref _recoveries);
            long r0 = Stopwatch.GetTimestamp();
            var recovery = await _placement.RecoverAsync(lost.Select(w => w.WorkerId).ToList(), version, dispatch.LastFailure?.Message ?? "unreachable",
                cancellationToken).ConfigureAwait(false);
            foreach (var alive in recovery.AliveWorkers)
            {
                foreach (var w in lost.Where(l => l.WorkerId == alive))
                {
                    _suspects.TryRemove(w.Endpoint, out _);
                }
            }
            table = recovery.Table;
            Interlocked.Exchange(ref _lastRecoveryTicks, Stopwatch.GetTimestamp());
            LogRecovered(dispatch.Layer, string.Join(", ", lost.Select(w => w.WorkerId)), version, table.Version, Stopwatch.GetElapsedTime(r0).TotalMilliseconds);
        }
        else if (stale && table.Version == version)
        {
            table = await _placement.WaitForNewerAsync(version, _options.DispatchTimeout, cancellationToken).ConfigureAwait(false);
        }
        foreach (var w in lost)
        {
            _placement.ReportUnreachable(w.WorkerId, dispatch.LastFailure?.Message ?? "unreachable");
        }
        Interlocked.Add(ref _resentSlices, failed.Count);
        await SendAsync(dispatch, table, failed, cancellationToken).ConfigureAwait(false);
    }

    private bool HasHealthyOwner(ExpertPlacementTable table, int layer, int expert)
    {
        foreach (int w in table.OwnersOf(layer, expert))
        {
            if (!IsSuspect(table, w))
            {
                return true;
            }
        }
        return false;
    }

    private bool IsSuspect(ExpertPlacementTable table, int worker)
        => _suspects.TryGetValue(table.Workers[worker].Endpoint, out var s) && s.Version == table.Version && Stopwatch.GetTimestamp() < s.UntilTicks;

    private void Suspect(ExpertPlacementTable table, WorkerEndpoint worker)
        => _suspects[worker.Endpoint] = new Suspicion(table.Version, Stopwatch.GetTimestamp() + (long)(_options.SuspectDuration.TotalSeconds * Stopwatch.Frequency));

    /// <summary>Assigns <paramref name="slices"/> to holders under <paramref name="table"/> and sends one request per
    /// worker; slices whose worker cannot be reached land in the handle's failed list.</summary>
    private async Task SendAsync(GrpcHandle dispatch, ExpertPlacementTable table, List<Slice> slices, CancellationToken cancellationToken)
    {
        int layer = dispatch.Layer;
        dispatch.TableVersion = table.Version;
        var byWorker = new SortedDictionary<int, List<Slice>>();
        var added = new Dictionary<int, long>();
        foreach (var slice in slices)
        {
            var owners = table.OwnersOf(layer, slice.Expert);
            if (owners.IsEmpty)
            {
                throw new ExpertDispatchException(StatusCode.FailedPrecondition,
                    $"expert {slice.Expert} of layer {layer} has no worker in placement plan {table.Version}", layer: layer);
            }
            var healthy = new List<int>(owners.Length);
            foreach (int w in owners)
            {
                if (!IsSuspect(table, w))
                {
                    healthy.Add(w);
                }
            }
            if (healthy.Count == 0)
            {
                // Every holder is suspected: try the primary again (the retry path then asks for re-placement).
                healthy.Add(owners[0]);
            }
            long LoadOf(int w) => Load.Worker(table.Workers[w].WorkerId).OutstandingRows + added.GetValueOrDefault(w);
            int pieces = healthy.Count == 1 || slice.Rows < _options.SplitRows ? 1 : Math.Min(healthy.Count, slice.Rows / Math.Max(1, _options.SplitRows / 2));
            if (pieces <= 1)
            {
                int pick = healthy[0];
                if (healthy.Count > 1)
                {
                    int a = Random.Shared.Next(healthy.Count);
                    int b = (a + 1 + Random.Shared.Next(healthy.Count - 1)) % healthy.Count;
                    pick = LoadOf(healthy[b]) < LoadOf(healthy[a]) ? healthy[b] : healthy[a];
                }
                Add(pick, slice);
            }
            else
            {
                var chosen = healthy.OrderBy(LoadOf).ThenBy(w => w).Take(pieces).ToArray();
                int first = slice.FirstRow;
                for (int i = 0; i < chosen.Length; i++)
                {
                    int n = slice.Rows / chosen.Length + (i < slice.Rows % chosen.Length ? 1 : 0);
                    Add(chosen[i], new Slice(slice.Expert, first, n));
                    first += n;
                }
            }
            void Add(int w, Slice s)
            {
                if (!byWorker.TryGetValue(w, out var list))
                {
                    byWorker[w] = list = [];
                }
                list.Add(s);
                added[w] = added.GetValueOrDefault(w) + s.Rows;
            }
        }

        int h = _pool.Model.HiddenSize;
        var wire = _options.WireDType;
        // The larger of a request row and a reply row (FP8 requests are answered in bf16 or fp32): what a message must fit.
        int rowBytes = (int)Math.Max(WireCodec.RowBytes(h, wire), WireCodec.RowBytes(h, _options.ReplyWireDType));
        float[] row = new float[h];
        var connects = byWorker.Keys.ToDictionary(w => w, w => _pool.GetAsync(table.Workers[w], cancellationToken));
        foreach (var (w, workerSlices) in byWorker)
        {
            var worker = table.Workers[w];
            WorkerConnection connection;
            try
            {
                connection = await connects[w].ConfigureAwait(false);
            }
            catch (ExpertDispatchException ex) when (IsWorkerLoss(ex.Status))
            {
                Lose(dispatch, table, worker, workerSlices, ex);
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
                EncodeRows(dispatch, chunk, lease.Span, row);
                foreach (var s in chunk)
                {
                    header.Segments.Add(new ExpertSegment { Expert = (uint)s.Expert, Rows = (uint)s.Rows });
                }
                Task<TensorFrame<ExpertReply>> reply;
                try
                {
                    reply = await connection.SendAsync(header, lease, cancellationToken).ConfigureAwait(false);
                }
                catch (ExpertDispatchException ex) when (IsWorkerLoss(ex.Status))
                {
                    lease.Dispose();
                    Lose(dispatch, table, worker, [.. chunks.Skip(c).SelectMany(x => x)], ex);
                    break;
                }
                catch
                {
                    lease.Dispose();
                    throw;
                }
                Load.Worker(worker.WorkerId).Sent(workerRows, length);
                Instruments?.WorkerSent(worker.WorkerId, workerRows, length);
                var part = new Part(connection, header, lease, [.. chunk], reply, Stopwatch.GetTimestamp(), table);
                dispatch.Parts.Add(part);
                dispatch.AllParts.Add(part);
            }
        }
    }

    // Rows one request may carry: the worker's max_rows_per_dispatch (0 = no limit) and what fits its largest accepted
    // message, less 64 KiB for the header and framing.
    private static int RowsPerRequest(HelloReply hello, int rowBytes)
    {
        long rows = hello.MaxRowsPerDispatch == 0 ? int.MaxValue : hello.MaxRowsPerDispatch;
        if (hello.MaxMessageBytes > 0)
        {
            rows = Math.Min(rows, Math.Max(1, ((long)hello.MaxMessageBytes - (64 << 10)) / Math.Max(1, rowBytes)));
        }
        return (int)Math.Clamp(rows, 1, int.MaxValue);
    }

    /// <summary>
    /// Cuts expert-ordered <paramref name="slices"/> into requests of at most <paramref name="maxRows"/> rows each, every
    /// expert at most once per request (a slice may be cut across requests; two slices of one expert go to different requests).
    /// </summary>
    internal static List<List<Slice>> Chunk(List<Slice> slices, int maxRows)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxRows, 1);
        var chunks = new List<List<Slice>>();
        var current = new List<Slice>();
        int rows = 0;
        foreach (var slice in slices)
        {
            int first = slice.FirstRow, left = slice.Rows;
            while (left > 0)
            {
                if (rows == maxRows || (current.Count > 0 && current[^1].Expert == slice.Expert))
                {
                    chunks.Add(current);
                    current = [];
                    rows = 0;
                }
                int n = Math.Min(left, maxRows - rows);
                current.Add(new Slice(slice.Expert, first, n));
                first += n;
                left -= n;
                rows += n;
            }
        }
        if (current.Count > 0)
        {
            chunks.Add(current);
        }
        return chunks;
    }

    // Row r of the grouped order is score(token, slot) × hidden[token], encoded in the wire dtype (FP8: quantized per row).
    private void EncodeRows(GrpcHandle dispatch, List<Slice> slices, Span<byte> destination, float[] row)
    {
        var plan = dispatch.Plan;
        var hidden = dispatch.Hidden.Span;
        var weights = dispatch.Routing.Weights.Span;
        int h = row.Length;
        int bytesPerRow = (int)WireCodec.RowBytes(h, _options.WireDType);
        int offset = 0;
        foreach (var s in slices)
        {
            for (int r = s.FirstRow; r < s.FirstRow + s.Rows; r++)
            {
                int t = plan.PairTokens[r];
                float score = weights[t * plan.TopK + plan.PairSlots[r]];
                var src = hidden.Slice(t * h, h);
                for (int j = 0; j < h; j++)
                {
                    row[j] = src[j] * score;
                }
                WireCodec.EncodeRows(row, h, _options.WireDType, destination.Slice(offset, bytesPerRow));
                offset += bytesPerRow;
            }
        }
    }

    private static bool IsWorkerLoss(StatusCode status) => status is StatusCode.Unavailable or StatusCode.DeadlineExceeded or StatusCode.Cancelled or StatusCode.Aborted;

    private void Lose(GrpcHandle dispatch, ExpertPlacementTable table, WorkerEndpoint worker, List<Slice> slices, ExpertDispatchException ex)
    {
        Suspect(table, worker);
        Interlocked.Exchange(ref _lastLossTicks, Stopwatch.GetTimestamp());
        if (!dispatch.Lost.Contains(worker))
        {
            dispatch.Lost.Add(worker);
        }
        dispatch.Failed.AddRange(slices);
        dispatch.LastFailure = ex;
        LogWorkerLost(dispatch.Layer, worker.WorkerId, worker.Endpoint, ex.Status, ex.Message);
    }

    private async Task<PartOutcome> AwaitPartAsync(GrpcHandle dispatch, Part part, float[] expertOut, CancellationToken cancellationToken)
    {
        var worker = part.Connection.Worker;
        var counters = Load.Worker(worker.WorkerId);
        int rows = (int)part.Header.Rows;
        TensorFrame<ExpertReply> reply;
        try
        {
            long deadline = part.SentTicks + (long)(_options.DispatchTimeout.TotalSeconds * Stopwatch.Frequency);
            var left = TimeSpan.FromSeconds(Math.Max(0, deadline - Stopwatch.GetTimestamp()) / (double)Stopwatch.Frequency);
            reply = await part.Reply.WaitAsync(left, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException ex)
        {
            part.Done = true;
            part.Connection.Abandon(part.Header.RequestId);
            counters.Failed(rows);
            Lose(dispatch, part.Table, worker, [.. part.Slices], new ExpertDispatchException(StatusCode.DeadlineExceeded,
                $"MoE layer {dispatch.Layer}: worker {worker.WorkerId} at {worker.Endpoint} did not answer request {part.Header.RequestId} ({rows} rows) within the {_options.DispatchTimeout.TotalMilliseconds:F0} ms dispatch deadline",
                worker.WorkerId, dispatch.Layer, ex));
            part.ReleaseWhenAnswered();
            return default;
        }
        catch (ExpertDispatchException ex) when (IsWorkerLoss(ex.Status))
        {
            part.Done = true;
            counters.Failed(rows);
            Lose(dispatch, part.Table, worker, [.. part.Slices], ex);
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
            int h = _pool.Model.HiddenSize;
            var replyDType = WireCodec.ReplyDType(part.Header);
            int rowBytes = (int)WireCodec.RowBytes(h, replyDType);
            int offset = 0;
            foreach (var s in part.Slices)
            {
                WireCodec.DecodeRows(payload.Slice(offset, s.Rows * rowBytes), h, replyDType, expertOut.AsSpan(s.FirstRow * h, s.Rows * h));
                offset += s.Rows * rowBytes;
            }
            long latency = Stopwatch.GetTimestamp() - part.SentTicks;
            counters.Answered(rows, payload.Length, latency);
            Instruments?.WorkerReplied(worker.WorkerId, payload.Length, latency);
            var t = reply.Header.Timings;
            var outcome = new PartOutcome(payload.Length, t is null ? 0 : (long)(t.DecodeNanos + t.ComputeNanos + t.EncodeNanos), t is null ? 0 : (long)t.ComputeNanos);
            part.Release();
            return outcome;
        }
    }

    /// <summary>Rows [<paramref name="FirstRow"/>, +<paramref name="Rows"/>) of the grouped order, all routed to <paramref name="Expert"/>.</summary>
    internal readonly record struct Slice(int Expert, int FirstRow, int Rows);

    private readonly record struct Suspicion(ulong Version, long UntilTicks);

    private readonly record struct PartOutcome(long Bytes, long WorkerNanos, long ComputeNanos);

    private sealed class Part(WorkerConnection connection, ExpertRequest header, RowLease lease, Slice[] slices, Task<TensorFrame<ExpertReply>> reply,
        long sentTicks, ExpertPlacementTable table)
    {
        private int _released;

        public WorkerConnection Connection { get; } = connection;
        public ExpertRequest Header { get; } = header;
        public RowLease Lease { get; } = lease;
        public Slice[] Slices { get; } = slices;
        public Task<TensorFrame<ExpertReply>> Reply { get; } = reply;
        public long SentTicks { get; } = sentTicks;
        public ExpertPlacementTable Table { get; } = table;
        public bool Done { get; set; }

        public void Release()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0)
            {
                Lease.Dispose();
            }
        }

        // A shared-ring region may still be written by a worker that never answered: it is then abandoned (kept
        // allocated, bounded by the ring size) rather than handed to another request.
        public void ReleaseWhenAnswered()
        {
            if (Volatile.Read(ref _released) != 0)
            {
                return;
            }
            _ = Reply.ContinueWith(t =>
            {
                if (t.IsCompletedSuccessfully)
                {
                    t.Result.Dispose();
                    Release();
                }
                else if (Interlocked.Exchange(ref _released, 1) == 0)
                {
                    Lease.Abandon();
                }
            }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
    }

    private sealed class GrpcHandle(int layer, DispatchPlan plan, ReadOnlyMemory<float> hidden, RoutingResult routing)
        : DispatchHandle(layer, plan.Tokens)
    {
        private List<Part> _parts = [];

        public DispatchPlan Plan { get; } = plan;
        public ReadOnlyMemory<float> Hidden { get; } = hidden;
        public RoutingResult Routing { get; } = routing;
        public List<Part> Parts => _parts;
        public List<Part> AllParts { get; } = [];
        public List<Slice> Failed { get; } = [];
        public List<WorkerEndpoint> Lost { get; } = [];
        public bool Stale { get; set; }
        public ulong TableVersion { get; set; }
        public string Traceparent { get; init; } = "";
        public ExpertDispatchException? LastFailure { get; set; }

        public List<Part> TakeParts()
        {
            var taken = _parts;
            _parts = [];
            return taken;
        }
    }

    [LoggerMessage(EventId = 3120, Level = LogLevel.Warning,
        Message = "MoE layer {LayerId}: worker {WorkerId} at {Endpoint} lost ({Status}): {Reason}; its rows will be re-sent")]
    private partial void LogWorkerLost(int layerId, string workerId, string endpoint, StatusCode status, string reason);

    [LoggerMessage(EventId = 3121, Level = LogLevel.Warning,
        Message = "MoE layer {LayerId}: experts of {WorkerIds} re-placed (plan {FromVersion} -> {ToVersion}) in {ElapsedMs:F0} ms")]
    private partial void LogRecovered(int layerId, string workerIds, ulong fromVersion, ulong toVersion, double elapsedMs);
}
