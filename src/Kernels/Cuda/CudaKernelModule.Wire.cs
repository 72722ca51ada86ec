namespace Distributed.Kernels.Cuda;

/// <summary>Launchers of the wire-row and routed-expert kernels (<c>wire_*</c>, <c>gather_scaled_rows</c>, <c>combine_rows</c> in kernels.cu).</summary>
internal sealed unsafe partial class CudaKernelModule
{
    /// <summary>
    /// x [rows, hidden] fp32 and bad [rows] (1 = the row is refused, 0 = usable) from wire rows <paramref name="src"/> in
    /// <paramref name="format"/> (0 fp32, 1 bf16, 2 FP8 rows with a leading fp32 scale); one block per row.
    /// </summary>
    public void WireDecodeRows(nint stream, ulong src, ulong x, ulong bad, long rows, int hidden, int format)
    {
        void** a = stackalloc void*[5];
        a[0] = &src;
        a[1] = &x;
        a[2] = &bad;
        a[3] = &hidden;
        a[4] = &format;
        Launch("wire_decode_rows", rows, ReduceThreads, stream, a);
    }

    /// <summary>out [n] bf16 bits = round-to-nearest-even of y [n] fp32 (NaN quieted).</summary>
    public void WireEncodeBf16(nint stream, ulong y, ulong output, long n)
    {
        void** a = stackalloc void*[3];
        a[0] = &y;
        a[1] = &output;
        a[2] = &n;
        Launch("wire_encode_bf16", ElementwiseBlocks(n), ElementwiseThreads, stream, a);
    }

    /// <summary>rows[r] = x[token[r]] · score[r] (optionally rounded through bf16), rows [n, cols].</summary>
    public void GatherScaledRows(nint stream, ulong x, ulong token, ulong score, ulong rows, long count, int cols, bool roundBf16)
    {
        int round = roundBf16 ? 1 : 0;
        void** a = stackalloc void*[7];
        a[0] = &x;
        a[1] = &token;
        a[2] = &score;
        a[3] = &rows;
        a[4] = &count;
        a[5] = &cols;
        a[6] = &round;
        Launch("gather_scaled_rows", ElementwiseBlocks(count * cols), ElementwiseThreads, stream, a);
    }

    /// <summary>out[t] = Σ_s e[rowOf[t·topK + s]] in slot order from the slot-0 row (each term optionally rounded through bf16).</summary>
    public void CombineRows(nint stream, ulong e, ulong rowOf, ulong output, long tokens, int topK, int cols, bool roundBf16)
    {
        int round = roundBf16 ? 1 : 0;
        void** a = stackalloc void*[7];
        a[0] = &e;
        a[1] = &rowOf;
        a[2] = &output;
        a[3] = &tokens;
        a[4] = &topK;
        a[5] = &cols;
        a[6] = &round;
        Launch("combine_rows", ElementwiseBlocks(tokens * cols), ElementwiseThreads, stream, a);
    }
}
