using Distributed.Coordinator.Moe;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;

namespace Distributed.Coordinator.Distribution;

// Building requests and taking replies apart: chunking at the worker's limits, scale-and-encode into the outgoing
// buffer, decode into the output.
public sealed partial class GrpcExpertDispatcher
{
    // Rows one request may carry: the worker's max_rows_per_dispatch (0 = no limit) and what fits its largest accepted
    // message, less 64 KiB for the header and framing.
    internal static int RowsPerRequest(HelloReply hello, int rowBytes)
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
    internal static List<List<RowSlice>> Chunk(List<RowSlice> slices, int maxRows)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxRows, 1);
        var chunks = new List<List<RowSlice>>();
        var current = new List<RowSlice>();
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
                current.Add(new RowSlice(slice.Expert, first, n));
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

    // Row r of the grouped order is score(token, slot) × hidden[token], scaled and encoded in one pass straight into the
    // request's buffer (pooled, or the shared ring).
    private void EncodeRows(GrpcDispatchHandle dispatch, List<RowSlice> slices, Span<byte> destination, int h)
    {
        var plan = dispatch.Plan;
        var hidden = dispatch.Hidden.Span;
        var weights = dispatch.Routing.Weights.Span;
        int bytesPerRow = (int)WireCodec.RowBytes(h, _options.WireDType);
        int offset = 0;
        foreach (var s in slices)
        {
            for (int r = s.FirstRow; r < s.FirstRow + s.Rows; r++)
            {
                int t = plan.PairTokens[r];
                float score = plan.RowScore(r, weights);
                WireCodec.EncodeScaled(hidden.Slice(t * h, h), score, _options.WireDType, destination.Slice(offset, bytesPerRow));
                offset += bytesPerRow;
            }
        }
    }

    /// <summary>Where reply rows go: straight into the token's output row (top-1), or into the grouped buffer.</summary>
    private readonly struct RowSink
    {
        private readonly Memory<float> _output;
        private readonly DispatchPlan _plan;
        private readonly bool _accumulate;

        public RowSink(Memory<float> output, DispatchPlan plan, bool accumulate)
        {
            _output = output;
            _plan = plan;
            _accumulate = accumulate;
            Grouped = null;
        }

        public RowSink(float[] grouped, DispatchPlan plan)
        {
            _output = grouped;
            _plan = plan;
            _accumulate = false;
            Grouped = grouped;
        }

        /// <summary>The grouped buffer <c>[Rows, hidden]</c> still to combine, or null when rows went to the output directly.</summary>
        public float[]? Grouped { get; }

        public void Accept(ReadOnlySpan<byte> payload, WireDType dtype, RowSlice[] slices, int h)
        {
            int rowBytes = h * WireCodec.ElementSize(dtype);
            var dst = _output.Span;
            int offset = 0;
            foreach (var s in slices)
            {
                if (Grouped is not null)
                {
                    WireCodec.Decode(payload.Slice(offset, s.Rows * rowBytes), dtype, dst.Slice(s.FirstRow * h, s.Rows * h));
                    offset += s.Rows * rowBytes;
                    continue;
                }
                for (int r = s.FirstRow; r < s.FirstRow + s.Rows; r++, offset += rowBytes)
                {
                    var row = dst.Slice(_plan.PairTokens[r] * h, h);
                    if (_accumulate)
                    {
                        WireCodec.DecodeAdd(payload.Slice(offset, rowBytes), dtype, row);
                    }
                    else
                    {
                        WireCodec.Decode(payload.Slice(offset, rowBytes), dtype, row);
                    }
                }
            }
        }
    }
}
