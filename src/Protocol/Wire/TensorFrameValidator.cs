using Distributed.Protocol.Grpc;
using Grpc.Core;

namespace Distributed.Protocol.Wire;

/// <summary>
/// The one validator of data-plane frames. It trusts no field: every count is bounded before any arithmetic, the
/// arithmetic is checked, and the payload is only touched after its length matched the header exactly.
/// <list type="bullet">
/// <item><c>InvalidArgument</c> (all problems listed as field violations): unknown dtype, a reply dtype other than BF16
/// or FP32 (FP8 requests must name one), wrong hidden size, a layer that is not a MoE layer, no segments, an expert id
/// out of range, a duplicate expert, an empty segment, segment rows not summing to <c>rows</c>, a payload length other
/// than <c>rows × row bytes</c> (checked arithmetic; FP8 rows are 4 + hidden bytes), both or neither of payload and
/// shared rows, FP8 rows on the shared ring, NaN/Inf in a row, and for FP8 a scale that is not finite and positive or a
/// NaN code (<see cref="CheckFinite"/>).</item>
/// <item><c>ResourceExhausted</c>: more rows than <see cref="IShardView.MaxRowsPerDispatch"/>.</item>
/// <item><c>FailedPrecondition</c>: a plan version the worker does not serve (<see cref="IShardView.AcceptsPlanVersion"/>), an
/// expert this worker does not hold.</item>
/// </list>
/// </summary>
public static class TensorFrameValidator
{
    /// <summary>At most this many violations are reported per frame (a hostile frame could list millions).</summary>
    public const int MaxReportedViolations = 16;

    /// <summary>Validates a request header against the worker's shard.</summary>
    /// <param name="request">The header (payload field excluded).</param>
    /// <param name="payloadLength">Bytes of the inline payload.</param>
    /// <param name="sharedRowsAllowed">True when the stream's session negotiated the shared-memory transport.</param>
    /// <param name="shard">What this worker serves.</param>
    public static FrameValidationResult ValidateRequest(ExpertRequest request, int payloadLength, bool sharedRowsAllowed, IShardView shard)
    {
        ArgumentNullException.ThrowIfNull(request);
        ArgumentNullException.ThrowIfNull(shard);
        var model = shard.Model;
        var violations = new List<FieldViolation>();
        void Add(string field, string description)
        {
            if (violations.Count < MaxReportedViolations)
            {
                violations.Add(new FieldViolation { Field = field, Description = description });
            }
        }

        bool dtypeOk = WireCodec.IsDefined(request.Dtype);
        if (!dtypeOk)
        {
            Add("dtype", $"{(int)request.Dtype} is not a wire dtype (BF16 = 1, FP32 = 2, FP8_E4M3 = 3)");
        }
        else if (!WireCodec.IsReplyDType(WireCodec.ReplyDType(request)))
        {
            Add("reply_dtype", request.ReplyDtype == WireDType.Unspecified
                ? $"must be BF16 or FP32 for {request.Dtype} rows (replies are never FP8)"
                : $"{(int)request.ReplyDtype} is not a reply dtype (BF16 = 1, FP32 = 2)");
        }
        if (request.HiddenSize != (uint)model.HiddenSize)
        {
            Add("hidden_size", $"{request.HiddenSize} != model hidden size {model.HiddenSize}");
        }
        bool layerOk = request.Layer < (uint)model.NumLayers && model.IsMoeLayer((int)request.Layer);
        if (!layerOk)
        {
            Add("layer", $"{request.Layer} is not a MoE layer (moe layers [{string.Join(", ", model.MoeLayers)}])");
        }
        if (request.Segments.Count == 0)
        {
            Add("segments", "at least one segment is required");
        }
        else if (request.Segments.Count > model.NumExperts)
        {
            Add("segments", $"{request.Segments.Count} segments but the model has {model.NumExperts} experts");
        }
        ulong rowSum = 0;
        if (request.Segments.Count <= model.NumExperts)
        {
            var seen = new bool[model.NumExperts];
            for (int i = 0; i < request.Segments.Count; i++)
            {
                var seg = request.Segments[i];
                if (seg.Expert >= (uint)model.NumExperts)
                {
                    Add($"segments[{i}].expert", $"{seg.Expert} is out of range [0, {model.NumExperts})");
                }
                else if (seen[seg.Expert])
                {
                    Add($"segments[{i}].expert", $"expert {seg.Expert} appears in more than one segment");
                }
                else
                {
                    seen[seg.Expert] = true;
                }
                if (seg.Rows == 0)
                {
                    Add($"segments[{i}].rows", "a segment must hold at least one row");
                }
                rowSum += seg.Rows;
            }
            if (request.Segments.Count > 0 && rowSum != request.Rows)
            {
                Add("rows", $"{request.Rows} != {rowSum}, the sum of segment rows");
            }
        }

        bool hasShared = request.SharedRows is not null;
        if (hasShared && !sharedRowsAllowed)
        {
            Add("shared_rows", "this stream did not negotiate the shared-memory transport");
        }
        if (hasShared && payloadLength != 0)
        {
            Add("payload", "must be empty when shared_rows is set");
        }
        if (hasShared && request.Dtype == WireDType.Fp8E4M3)
        {
            Add("shared_rows", "FP8_E4M3 rows travel inline (their bf16 or fp32 replies would not fit the region)");
        }
        bool oversize = request.Rows > (uint)shard.MaxRowsPerDispatch;
        if (dtypeOk && !oversize && request.HiddenSize == (uint)model.HiddenSize)
        {
            long expected = WireCodec.PayloadBytes(request.Rows, request.HiddenSize, request.Dtype);
            long rowBytes = WireCodec.RowBytes(request.HiddenSize, request.Dtype);
            if (hasShared)
            {
                if (request.SharedRows!.Length != (ulong)expected)
                {
                    Add("shared_rows.length", $"{request.SharedRows.Length} bytes != rows {request.Rows} × {rowBytes} bytes per {request.Dtype} row of hidden {request.HiddenSize}");
                }
            }
            else if (payloadLength != expected)
            {
                Add("payload", $"{payloadLength} bytes != rows {request.Rows} × {rowBytes} bytes per {request.Dtype} row of hidden {request.HiddenSize} = {expected}");
            }
            var replyDType = WireCodec.ReplyDType(request);
            if (WireCodec.IsReplyDType(replyDType) && WireCodec.PayloadBytes(request.Rows, request.HiddenSize, replyDType) < 0)
            {
                Add("rows", $"a {replyDType} reply of {request.Rows} rows × hidden {request.HiddenSize} exceeds one message");
            }
        }
        if (violations.Count > 0)
        {
            return FrameValidationResult.FromViolations(StatusCode.InvalidArgument, $"request {request.RequestId} is invalid", violations);
        }
        if (oversize)
        {
            return FrameValidationResult.Fail(StatusCode.ResourceExhausted,
                $"request {request.RequestId}: {request.Rows} rows exceed MaxRowsPerDispatch {shard.MaxRowsPerDispatch}",
                new FieldViolation { Field = "rows", Description = $"at most {shard.MaxRowsPerDispatch}" });
        }

        ulong plan = shard.PlanVersion;
        if (!shard.AcceptsPlanVersion(request.PlanVersion))
        {
            string why = request.PlanVersion < plan ? "stale" : "ahead of this worker";
            return FrameValidationResult.Fail(StatusCode.FailedPrecondition,
                $"request {request.RequestId}: plan_version {request.PlanVersion} is {why} (worker serves placement plan version {plan})",
                new FieldViolation { Field = "plan_version", Description = $"{why}: worker serves version {plan}" });
        }
        for (int i = 0; i < request.Segments.Count; i++)
        {
            var seg = request.Segments[i];
            if (!shard.Holds((int)request.Layer, (int)seg.Expert))
            {
                Add($"segments[{i}].expert", $"expert {seg.Expert} of layer {request.Layer} is not held by this worker");
            }
        }
        if (violations.Count > 0)
        {
            return FrameValidationResult.FromViolations(StatusCode.FailedPrecondition, $"request {request.RequestId} routed to the wrong shard", violations);
        }
        return FrameValidationResult.Ok;
    }

    /// <summary>
    /// InvalidArgument naming the first row (and its expert) holding NaN or ±Inf, or for FP8 rows a scale that is not
    /// finite and positive or a NaN code; else OK.
    /// </summary>
    /// <param name="payload">The validated <c>[rows, hidden]</c> payload.</param>
    public static FrameValidationResult CheckFinite(ExpertRequest request, ReadOnlySpan<byte> payload)
    {
        ArgumentNullException.ThrowIfNull(request);
        int bad = WireCodec.FirstInvalidRow(payload, request.Dtype, (int)request.HiddenSize, out string why);
        return NonFiniteRow(request, bad, why);
    }

    /// <summary>InvalidArgument naming row <paramref name="bad"/> (and its expert) and what is wrong with it
    /// (<paramref name="why"/>, e.g. from <see cref="WireCodec.TryDecodeFinite(ReadOnlySpan{byte}, WireDType, int, Span{float}, out int, out string)"/>);
    /// OK when <paramref name="bad"/> is negative (every row usable).</summary>
    public static FrameValidationResult NonFiniteRow(ExpertRequest request, int bad, string why = "holds NaN or Inf")
    {
        ArgumentNullException.ThrowIfNull(request);
        if (bad < 0)
        {
            return FrameValidationResult.Ok;
        }
        long start = 0;
        uint expert = 0;
        foreach (var seg in request.Segments)
        {
            if (bad < start + seg.Rows)
            {
                expert = seg.Expert;
                break;
            }
            start += seg.Rows;
        }
        return FrameValidationResult.FromViolations(StatusCode.InvalidArgument, $"request {request.RequestId} is invalid",
            [new FieldViolation { Field = "payload", Description = $"row {bad} (expert {expert}) {why}" }]);
    }

    /// <summary>
    /// Checks a worker's reply against the request it answers (the coordinator trusts workers no more than workers
    /// trust it). A non-OK status in the reply is returned as is.
    /// </summary>
    public static FrameValidationResult ValidateReply(ExpertReply reply, int payloadLength, ExpertRequest request)
    {
        ArgumentNullException.ThrowIfNull(reply);
        ArgumentNullException.ThrowIfNull(request);
        if (reply.Status is { Code: not 0 } status)
        {
            var code = Enum.IsDefined((StatusCode)status.Code) ? (StatusCode)status.Code : StatusCode.Unknown;
            return FrameValidationResult.Fail(code, status.Message, [.. status.Violations]);
        }
        var violations = new List<FieldViolation>();
        if (reply.RequestId != request.RequestId)
        {
            violations.Add(new FieldViolation { Field = "request_id", Description = $"{reply.RequestId} != {request.RequestId}" });
        }
        var replyDType = WireCodec.ReplyDType(request);
        if (reply.Dtype != replyDType)
        {
            violations.Add(new FieldViolation { Field = "dtype", Description = $"{reply.Dtype} != {replyDType}" });
        }
        if (reply.Rows != request.Rows)
        {
            violations.Add(new FieldViolation { Field = "rows", Description = $"{reply.Rows} != {request.Rows}" });
        }
        if (reply.HiddenSize != request.HiddenSize)
        {
            violations.Add(new FieldViolation { Field = "hidden_size", Description = $"{reply.HiddenSize} != {request.HiddenSize}" });
        }
        if (violations.Count == 0 && WireCodec.IsReplyDType(replyDType))
        {
            long expected = WireCodec.PayloadBytes(request.Rows, request.HiddenSize, replyDType);
            long actual = reply.SharedRows is null ? payloadLength : (long)Math.Min(reply.SharedRows.Length, long.MaxValue);
            if (actual != expected)
            {
                violations.Add(new FieldViolation { Field = "payload", Description = $"{actual} bytes != {expected} expected" });
            }
        }
        return violations.Count == 0
            ? FrameValidationResult.Ok
            : FrameValidationResult.FromViolations(StatusCode.DataLoss, $"worker reply to request {request.RequestId} is malformed", violations);
    }
}
