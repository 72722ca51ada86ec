using System.Buffers;
using System.Diagnostics;
using Distributed.Coordinator.Moe;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Grpc.Core;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// The production <see cref="IExpertDispatcher"/>: per MoE layer it groups the routed rows by the worker holding
/// their expert (<see cref="ExpertPlacementTable"/>), sends ONE request per worker on that worker's long-lived stream,
/// all workers in flight at once, and returns; the model computes the shared expert meanwhile. Combine waits (bounded
/// by <see cref="DistributionOptions.DispatchTimeout"/>), decodes every reply into its fixed place in the grouped row
/// order and sums slots per token with <see cref="DispatchPlan.Combine"/>, so results never depend on arrival order
/// or placement. With FP32 on the wire the output is bitwise what <see cref="LocalExpertDispatcher"/> computes.
/// </summary>
public sealed class GrpcExpertDispatcher(IPlacementSource placement, WorkerChannelPool pool) : IExpertDispatcher
{
    private readonly DistributionOptions _options = pool.Options;

    /// <summary>Where dispatch time goes.</summary>
    public DispatchStatistics Statistics { get; } = new();

    /// <inheritdoc />
    /// <exception cref="ExpertDispatchException">No serving plan, an expert without a worker, or a worker that cannot be reached.</exception>
    public async ValueTask<DispatchHandle> DispatchAsync(int layer, ReadOnlyMemory<float> hidden, RoutingResult routing, CancellationToken cancellationToken)
    {
        long t0 = Stopwatch.GetTimestamp();
        var table = placement.GetServingTable();
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
        var starts = new int[plan.Experts.Length];
        for (int g = 1; g < starts.Length; g++)
        {
            starts[g] = starts[g - 1] + plan.RowCounts[g - 1];
        }
        // Worker index -> its groups (ascending expert order, the order segments go on the wire).
        var groupsByWorker = new SortedDictionary<int, List<int>>();
        for (int g = 0; g < plan.Experts.Length; g++)
        {
            var owners = table.OwnersOf(layer, plan.Experts[g]);
            if (owners.IsEmpty)
            {
                throw new ExpertDispatchException(StatusCode.FailedPrecondition,
                    $"expert {plan.Experts[g]} of layer {layer} has no worker in placement plan {table.Version}", layer: layer);
            }
            int w = owners[0];
            if (!groupsByWorker.TryGetValue(w, out var list))
            {
                groupsByWorker[w] = list = [];
            }
            list.Add(g);
        }

        int elementSize = WireCodec.ElementSize(_options.WireDType);
        float[] rows = ArrayPool<float>.Shared.Rent(Math.Max(1, plan.Rows * h));
        var parts = new List<Part>(groupsByWorker.Count);
        long bytes = 0;
        try
        {
            plan.GatherScaled(hidden.Span, h, routing.Weights.Span, rows);
            var connections = await Task.WhenAll(groupsByWorker.Keys.Select(w => pool.GetAsync(table.Workers[w], cancellationToken))).ConfigureAwait(false);
            int ci = 0;
            foreach (var (w, groups) in groupsByWorker)
            {
                var connection = connections[ci++];
                int workerRows = groups.Sum(g => plan.RowCounts[g]);
                int length = checked(workerRows * h * elementSize);
                var lease = connection.RentRows(length);
                var header = new ExpertRequest
                {
                    Layer = (uint)layer,
                    PlanVersion = table.Version,
                    Dtype = _options.WireDType,
                    HiddenSize = (uint)h,
                    Rows = (uint)workerRows,
                };
                int offset = 0;
                var span = lease.Span;
                foreach (int g in groups)
                {
                    int n = plan.RowCounts[g] * h;
                    WireCodec.Encode(rows.AsSpan(starts[g] * h, n), _options.WireDType, span.Slice(offset, n * elementSize));
                    offset += n * elementSize;
                    header.Segments.Add(new ExpertSegment { Expert = (uint)plan.Experts[g], Rows = (uint)plan.RowCounts[g] });
                }
                Task<Protocol.Wire.TensorFrame<ExpertReply>> reply;
                try
                {
                    reply = await connection.SendAsync(header, lease, cancellationToken).ConfigureAwait(false);
                }
                catch
                {
                    lease.Dispose();
                    throw;
                }
                parts.Add(new Part(connection, header, lease, [.. groups], reply));
                bytes += length;
            }
        }
        catch
        {
            foreach (var part in parts)
            {
                part.Release();
            }
            throw;
        }
        finally
        {
            ArrayPool<float>.Shared.Return(rows);
        }
        Statistics.AddDispatch(Stopwatch.GetTimestamp() - t0, parts.Count, bytes);
        return new GrpcHandle(layer, plan, starts, parts, Stopwatch.GetTimestamp() + (long)(_options.DispatchTimeout.TotalSeconds * Stopwatch.Frequency));
    }

    /// <inheritdoc />
    /// <exception cref="ExpertDispatchException">A worker rejected the request (its status), sent a malformed reply
    /// (DataLoss), its stream broke (Unavailable), or it did not answer before the deadline (DeadlineExceeded).</exception>
    public async ValueTask CombineAsync(DispatchHandle handle, Memory<float> output, CancellationToken cancellationToken)
    {
        if (handle is not GrpcHandle dispatch)
        {
            throw new ArgumentException("handle was not produced by this dispatcher", nameof(handle));
        }
        var plan = dispatch.Plan;
        int h = placement.GetServingTable().Model.HiddenSize;
        if (output.Length != plan.Tokens * h)
        {
            throw new ArgumentException($"output has {output.Length} values, expected {plan.Tokens} x {h}", nameof(output));
        }
        long t0 = Stopwatch.GetTimestamp();
        float[] expertOut = ArrayPool<float>.Shared.Rent(Math.Max(1, plan.Rows * h));
        long waitTicks = 0, receivedBytes = 0, workerNanos = 0, computeNanos = 0;
        int completed = 0;
        try
        {
            long remaining = dispatch.DeadlineTicks - Stopwatch.GetTimestamp();
            var timeout = TimeSpan.FromSeconds(Math.Max(0, remaining) / (double)Stopwatch.Frequency);
            foreach (var part in dispatch.Parts)
            {
                long w0 = Stopwatch.GetTimestamp();
                Protocol.Wire.TensorFrame<ExpertReply> reply;
                try
                {
                    var left = timeout - Stopwatch.GetElapsedTime(t0);
                    reply = await part.Reply.WaitAsync(left > TimeSpan.Zero ? left : TimeSpan.Zero, cancellationToken).ConfigureAwait(false);
                }
                catch (TimeoutException ex)
                {
                    part.Connection.Abandon(part.Header.RequestId);
                    throw new ExpertDispatchException(StatusCode.DeadlineExceeded,
                        $"MoE layer {dispatch.Layer}: worker {part.Connection.Worker.WorkerId} at {part.Connection.Worker.Endpoint} did not answer request {part.Header.RequestId} ({part.Header.Rows} rows) within the {_options.DispatchTimeout.TotalMilliseconds:F0} ms dispatch deadline",
                        part.Connection.Worker.WorkerId, dispatch.Layer, ex);
                }
                waitTicks += Stopwatch.GetTimestamp() - w0;
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
                        throw new ExpertDispatchException(verdict.Code,
                            $"MoE layer {dispatch.Layer}: worker {part.Connection.Worker.WorkerId} at {part.Connection.Worker.Endpoint} answered {verdict.Code}: {verdict.Message}",
                            part.Connection.Worker.WorkerId, dispatch.Layer);
                    }
                    int elementSize = WireCodec.ElementSize(part.Header.Dtype);
                    int offset = 0;
                    foreach (int g in part.Groups)
                    {
                        int n = plan.RowCounts[g] * h;
                        WireCodec.Decode(payload.Slice(offset, n * elementSize), part.Header.Dtype, expertOut.AsSpan(dispatch.Starts[g] * h, n));
                        offset += n * elementSize;
                    }
                    receivedBytes += payload.Length;
                    if (reply.Header.Timings is { } t)
                    {
                        workerNanos += (long)(t.DecodeNanos + t.ComputeNanos + t.EncodeNanos);
                        computeNanos += (long)t.ComputeNanos;
                    }
                }
                part.Release();
                completed++;
            }
            plan.Combine(expertOut.AsSpan(0, plan.Rows * h), h, output.Span);
        }
        finally
        {
            ArrayPool<float>.Shared.Return(expertOut);
            for (int i = completed; i < dispatch.Parts.Count; i++)
            {
                dispatch.Parts[i].ReleaseWhenAnswered();
            }
        }
        Statistics.AddCombine(waitTicks, Stopwatch.GetTimestamp() - t0 - waitTicks, receivedBytes, workerNanos, computeNanos);
    }

    private sealed class Part(WorkerConnection connection, ExpertRequest header, RowLease lease, int[] groups, Task<Protocol.Wire.TensorFrame<ExpertReply>> reply)
    {
        private int _released;

        public WorkerConnection Connection { get; } = connection;
        public ExpertRequest Header { get; } = header;
        public RowLease Lease { get; } = lease;
        public int[] Groups { get; } = groups;
        public Task<Protocol.Wire.TensorFrame<ExpertReply>> Reply { get; } = reply;

        public void Release()
        {
            if (Interlocked.Exchange(ref _released, 1) == 0)
            {
                Lease.Dispose();
            }
        }

        // A shared-ring region may still be written by a worker that never answered: it is then leaked (bounded by the
        // ring size) rather than handed to another request.
        public void ReleaseWhenAnswered()
        {
            _ = Reply.ContinueWith(t =>
            {
                if (t.IsCompletedSuccessfully)
                {
                    t.Result.Dispose();
                    Release();
                }
                else if (Lease.Descriptor is null)
                {
                    Release();
                }
            }, CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        }
    }

    private sealed class GrpcHandle(int layer, DispatchPlan plan, int[] starts, List<Part> parts, long deadlineTicks)
        : DispatchHandle(layer, plan.Tokens)
    {
        public DispatchPlan Plan { get; } = plan;
        public int[] Starts { get; } = starts;
        public List<Part> Parts { get; } = parts;
        public long DeadlineTicks { get; } = deadlineTicks;
    }
}
