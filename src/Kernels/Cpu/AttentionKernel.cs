using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Distributed.Kernels.Cpu;

/// <summary>Shape of one attention call, with the visible-key rule of <see cref="AttentionParams"/>.</summary>
internal readonly struct AttentionShape
{
    public AttentionShape(in AttentionParams p, int keys, int keyPositionStart)
    {
        Heads = p.Heads;
        KvHeads = p.KvHeads;
        HeadDim = p.HeadDim;
        Group = p.Heads / p.KvHeads;
        Scale = p.Scale;
        ChunkSize = p.ChunkSize;
        Keys = keys;
        KeyStart = keyPositionStart;
    }

    public int Heads { get; }
    public int KvHeads { get; }
    public int HeadDim { get; }
    public int Group { get; }
    public float Scale { get; }
    public int ChunkSize { get; }
    public int Keys { get; }
    public int KeyStart { get; }

    /// <summary>Most keys one query can see.</summary>
    public int MaxSpan => ChunkSize > 0 ? Math.Min(Keys, ChunkSize) : Keys;

    /// <summary>
    /// Visible key indices <c>[lo, hi]</c> for a query at <paramref name="position"/>: positions
    /// <c>max(KeyStart, chunkStart) .. min(position, KeyStart + Keys - 1)</c>; empty when hi &lt; lo.
    /// </summary>
    public void VisibleRange(int position, out int lo, out int hi)
    {
        long first = ChunkSize > 0 ? position - (position % ChunkSize) : 0;
        first = Math.Max(first, KeyStart);
        long last = Math.Min(position, (long)KeyStart + Keys - 1);
        lo = (int)(first - KeyStart);
        hi = (int)(last - KeyStart);
        if (hi < lo)
        {
            lo = 0;
            hi = -1;
        }
    }
}

/// <summary>Addresses per (row, head) vectors: <c>Base + row·RowStride + head·HeadStride</c> floats.</summary>
internal readonly unsafe struct QueryView(float* @base, nint rowStride, nint headStride)
{
    public float* At(int row, int head) => @base + (row * rowStride) + (head * headStride);
}

/// <summary>
/// Scaled dot-product attention for a tile of query rows × the query heads of one kv head. Per (row, head) the math
/// is fixed: <c>s_j = fl(dot(q, k_j)) · scale</c> over the visible keys in order (dot = lane FMAs over head_dim, then
/// a fixed horizontal sum: the 16-key tree of <see cref="Reduce16"/> on AVX-512, <see cref="Dot"/> otherwise), a
/// max-subtracting softmax over exactly those scores, then <c>out = Σ_j p_j v_j</c> as one FMA chain per element in
/// key order. Tiling rows and heads only shares K/V loads, so results do not depend on the other rows of the call.
/// </summary>
internal static unsafe class AttentionKernel
{
    /// <summary>
    /// Most query rows per work unit: they share every packed K and V block, so a prefill streams each kv head's
    /// cache once per 16 rows instead of once per row.
    /// </summary>
    public const int RowTile = 16;

    /// <summary>Keys per packed block (64 rows of K or V: 32 KiB at head_dim 128, L1-resident).</summary>
    internal const int KeyBlock = 64;

    /// <summary>Scratch floats one unit of up to <paramref name="rowTile"/> rows needs: scores, a packed K/V block, padded queries.</summary>
    public static long ScratchFloats(in AttentionShape s, int rowTile, int headsPerUnit) =>
        ((long)rowTile * headsPerUnit * Math.Max(1, s.MaxSpan)) + 32 + ((long)KeyBlock * Padded(s.HeadDim))
        + ((long)rowTile * headsPerUnit * Padded(s.HeadDim));

    /// <summary>Head width rounded up to whole 16-float chunks.</summary>
    internal static int Padded(int d) => (d + 15) & ~15;

    /// <summary>
    /// Rows <c>[r0, r0 + rowCount)</c>, kv head <paramref name="kvHead"/>, query heads <c>kvHead · Group + [g0, g1)</c>.
    /// </summary>
    public static void Unit(SimdLevel simd, in AttentionShape s, float* q, int* positions, float* k, float* v,
        float* output, int r0, int rowCount, int kvHead, int g0, int g1, float* scratch)
    {
        int d = s.HeadDim;
        int ng = g1 - g0;
        nint kvStride = (nint)s.KvHeads * d;
        nint qRowStride = (nint)s.Heads * d;
        int* lo = stackalloc int[RowTile];
        int* hi = stackalloc int[RowTile];
        float** scores = stackalloc float*[RowTile * ng];
        int jMin = int.MaxValue;
        int jMax = -1;
        float* next = scratch;
        for (int r = 0; r < rowCount; r++)
        {
            s.VisibleRange(positions[r0 + r], out lo[r], out hi[r]);
            int n = hi[r] - lo[r] + 1;
            for (int g = 0; g < ng; g++)
            {
                scores[(r * ng) + g] = next;
                next += n;
            }
            if (n > 0)
            {
                jMin = Math.Min(jMin, lo[r]);
                jMax = Math.Max(jMax, hi[r]);
            }
        }

        // K/V rows of one kv head sit kvStride floats apart (4 KiB for 8 kv heads × 128): every row is on its own page,
        // which the hardware prefetchers do not follow. Each block is copied into a contiguous buffer while the next
        // block is prefetched, so the dot products and the weighted sums read L1.
        float* pack = (float*)(((nint)next + 63) & ~(nint)63);
        float* kHead = k + ((nint)kvHead * d);
        float* qHeads = q + (r0 * qRowStride) + ((nint)((kvHead * s.Group) + g0) * d);
        QueryView queries;
        if (UsesPaddedQueries(simd))
        {
            int dp = Padded(d);
            float* qPad = pack + ((nint)KeyBlock * dp);
            PadQueries(qHeads, qRowStride, rowCount, ng, d, qPad);
            queries = new QueryView(qPad, (nint)ng * dp, dp);
        }
        else
        {
            queries = new QueryView(qHeads, qRowStride, d);
        }
        for (int jb = jMin; jb <= jMax; jb += KeyBlock)
        {
            ScoreBlock(simd, s, kHead, jb, Math.Min(jMax, jb + KeyBlock - 1), jMax, pack, queries, rowCount, ng, lo, hi, scores);
        }

        float* outHeads = output + (r0 * qRowStride) + ((nint)((kvHead * s.Group) + g0) * d);
        for (int r = 0; r < rowCount; r++)
        {
            int n = hi[r] - lo[r] + 1;
            new Span<float>(outHeads + (r * qRowStride), ng * d).Clear();
            for (int g = 0; g < ng && n > 0; g++)
            {
                VectorOps.SoftmaxRow(simd, scores[(r * ng) + g], n);
            }
        }

        float* vHead = v + ((nint)kvHead * d);
        var outputs = new QueryView(outHeads, qRowStride, d);
        for (int jb = jMin; jb <= jMax; jb += KeyBlock)
        {
            WeightedValuesBlock(simd, s, vHead, jb, Math.Min(jMax, jb + KeyBlock - 1), jMax, pack, outputs, rowCount, ng, lo, hi, scores);
        }
    }

    /// <summary>Whether scores use zero-padded queries and chunk-packed keys (<see cref="Dots16"/>) at this level.</summary>
    internal static bool UsesPaddedQueries(SimdLevel simd) => simd == SimdLevel.Vector512 && Avx512F.IsSupported;

    /// <summary>
    /// Copies the queries of <paramref name="rowCount"/> rows × <paramref name="ng"/> heads (row r, head g at
    /// <c>q + r·rowStride + g·d</c>) into <c>[row][head][Padded(d)]</c>, zero-padded.
    /// </summary>
    internal static void PadQueries(float* q, nint rowStride, int rowCount, int ng, int d, float* dst)
    {
        int dp = Padded(d);
        for (int r = 0; r < rowCount; r++)
        {
            for (int g = 0; g < ng; g++)
            {
                float* o = dst + ((nint)((r * ng) + g) * dp);
                Buffer.MemoryCopy(q + (r * rowStride) + ((nint)g * d), o, (nint)d * sizeof(float), (nint)d * sizeof(float));
                new Span<float>(o + d, dp - d).Clear();
            }
        }
    }

    /// <summary>
    /// Packs key rows <c>[jb, je]</c> of one kv head (row j at <c>kHead + j·KvHeads·d</c>) and writes the scaled
    /// scores of every visible (row, head, key) into <c>scores[r·ng + g][j - lo[r]]</c>.
    /// </summary>
    internal static void ScoreBlock(SimdLevel simd, in AttentionShape s, float* kHead, int jb, int je, int jMax, float* pack,
        QueryView queries, int rowCount, int ng, int* lo, int* hi, float** scores)
    {
        int d = s.HeadDim;
        nint kvStride = (nint)s.KvHeads * d;
        bool chunked = UsesPaddedQueries(simd);
        for (int j = jb; j <= je; j++)
        {
            int ahead = j + KeyBlock;
            if (Sse.IsSupported && ahead <= jMax)
            {
                Prefetch(kHead + (ahead * kvStride), d);
            }
            PackKeyRow(kHead + (j * kvStride), j - jb, d, chunked, pack);
        }
        ScorePacked(simd, s, pack, jb, je, queries, rowCount, ng, lo, hi, scores);
    }

    /// <summary>
    /// Packs key (or value) rows <c>[jb, je]</c> of kv heads <c>[kvHead0, kvHead0 + kvHeadCount)</c> in one pass over
    /// each row, so a cache row (all its kv heads, 4 KiB at 8 × 128) is read front to back; kv head h goes to
    /// <c>dst + (h - kvHead0)·headStride</c>, chunk-major when <paramref name="chunked"/>, else row-major.
    /// </summary>
    internal static void PackAllHeads(float* src, in AttentionShape s, int kvHead0, int kvHeadCount, int jb, int je, int jMax,
        bool chunked, float* dst, nint headStride)
    {
        int d = s.HeadDim;
        nint stride = (nint)s.KvHeads * d;
        for (int j = jb; j <= je; j++)
        {
            int ahead = j + RowPrefetchDistance;
            if (Sse.IsSupported && ahead <= jMax)
            {
                Prefetch(src + (ahead * stride) + ((nint)kvHead0 * d), kvHeadCount * d);
            }
            float* row = src + (j * stride) + ((nint)kvHead0 * d);
            for (int h = 0; h < kvHeadCount; h++)
            {
                PackKeyRow(row + ((nint)h * d), j - jb, d, chunked, dst + (h * headStride));
            }
        }
    }

    /// <summary>Rows ahead that <see cref="PackAllHeads"/> prefetches (2 rows = 8 KiB at 8 kv heads × 128).</summary>
    private const int RowPrefetchDistance = 2;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Prefetch(float* p, int floats)
    {
        byte* b = (byte*)p;
        for (nint off = 0; off < (nint)floats * sizeof(float); off += 64)
        {
            Sse.Prefetch0(b + off);
        }
    }

    /// <summary>Scaled scores of every visible (row, head, key) of a packed key block (see <see cref="ScoreBlock"/>).</summary>
    internal static void ScorePacked(SimdLevel simd, in AttentionShape s, float* pack, int jb, int je, QueryView queries,
        int rowCount, int ng, int* lo, int* hi, float** scores)
    {
        int d = s.HeadDim;
        if (UsesPaddedQueries(simd))
        {
            ScoreBlock512(s, pack, jb, je, queries, rowCount, ng, Padded(d) >> 4, lo, hi, scores);
            return;
        }
        for (int j = jb; j <= je; j++)
        {
            float* kj = pack + ((nint)(j - jb) * d);
            for (int r = 0; r < rowCount; r++)
            {
                if (j < lo[r] || j > hi[r])
                {
                    continue;
                }
                for (int g = 0; g < ng; g++)
                {
                    scores[(r * ng) + g][j - lo[r]] = Dot(simd, queries.At(r, g), kj, d) * s.Scale;
                }
            }
        }
    }

    /// <summary>
    /// Packs value rows <c>[jb, je]</c> of one kv head and accumulates <c>out[r, g] += Σ_j p[r, g, j] · v_j</c> over the
    /// visible keys of the block, in key order (output (r, g) at <c>outputs.At(r, g)</c>). The copy matters: with a
    /// row stride of 4 KiB all 64 rows of a block fall into the same 8 L1 sets, so reading them in place for every
    /// head thrashes L1.
    /// </summary>
    internal static void WeightedValuesBlock(SimdLevel simd, in AttentionShape s, float* vHead, int jb, int je, int jMax,
        float* pack, QueryView outputs, int rowCount, int ng, int* lo, int* hi, float** scores)
    {
        int d = s.HeadDim;
        nint stride = (nint)s.KvHeads * d;
        for (int j = jb; j <= je; j++)
        {
            int ahead = j + KeyBlock;
            if (Sse.IsSupported && ahead <= jMax)
            {
                Prefetch(vHead + (ahead * stride), d);
            }
            CopyRow(vHead + (j * stride), pack + ((nint)(j - jb) * d), d);
        }
        WeightedValuesPacked(simd, s, pack, jb, je, outputs, rowCount, ng, lo, hi, scores);
    }

    /// <summary>The accumulation of <see cref="WeightedValuesBlock"/> over an already packed (row-major) value block.</summary>
    internal static void WeightedValuesPacked(SimdLevel simd, in AttentionShape s, float* pack, int jb, int je,
        QueryView outputs, int rowCount, int ng, int* lo, int* hi, float** scores)
    {
        int d = s.HeadDim;
        for (int r = 0; r < rowCount; r++)
        {
            int a = Math.Max(jb, lo[r]);
            int b = Math.Min(je, hi[r]);
            if (b < a)
            {
                continue;
            }
            for (int g = 0; g < ng; g++)
            {
                AccumulateWeightedValues(simd, outputs.At(r, g), scores[(r * ng) + g] + (a - lo[r]),
                    pack + ((nint)(a - jb) * d), d, b - a + 1, d);
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void CopyRow(float* src, float* dst, int d)
    {
        int e = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            for (; e + 16 <= d; e += 16)
            {
                Vector512.Store(Vector512.Load(src + e), dst + e);
            }
        }
        for (; e + 8 <= d; e += 8)
        {
            Vector256.Store(Vector256.Load(src + e), dst + e);
        }
        for (; e < d; e++)
        {
            dst[e] = src[e];
        }
    }

    /// <summary>
    /// Copies one key row (d floats) to position <paramref name="index"/> of a packed block: row-major
    /// (<c>dst + index·d</c>), or chunk-major <c>[chunk][key in block][16]</c> with the last chunk zero-padded, where
    /// sixteen consecutive keys of one chunk are 64 bytes apart, which <see cref="Dots16"/> addresses with constant
    /// offsets.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PackKeyRow(float* row, int index, int d, bool chunked, float* dst)
    {
        if (!chunked)
        {
            CopyRow(row, dst + ((nint)index * d), d);
            return;
        }
        int full = d >> 4;
        float* o = dst + ((nint)index * 16);
        for (int c = 0; c < full; c++)
        {
            Vector512.Load(row + (c * 16)).Store(o + ((nint)c * KeyBlock * 16));
        }
        if ((d & 15) != 0)
        {
            float* t = o + ((nint)full * KeyBlock * 16);
            int e = 0;
            for (; e < d - (full * 16); e++)
            {
                t[e] = row[(full * 16) + e];
            }
            for (; e < 16; e++)
            {
                t[e] = 0f;
            }
        }
    }

    /// <summary>Scores of every visible (row, head, key) of one packed key block, 16 keys per <see cref="Dots16"/>.</summary>
    private static void ScoreBlock512(in AttentionShape s, float* pack, int jb, int je, QueryView queries, int rowCount, int ng,
        int chunks, int* lo, int* hi, float** scores)
    {
        var scale = Vector512.Create(s.Scale);
        float* lanes = stackalloc float[16];
        for (int j0 = jb; j0 <= je; j0 += 16)
        {
            int j1 = Math.Min(je, j0 + 15);
            float* keys = pack + ((nint)(j0 - jb) * 16);
            for (int r = 0; r < rowCount; r++)
            {
                int a = Math.Max(j0, lo[r]);
                int b = Math.Min(j1, hi[r]);
                if (b < a)
                {
                    continue;
                }
                for (int g = 0; g < ng; g++)
                {
                    var dots = Dots16(queries.At(r, g), keys, chunks) * scale;
                    float* dst = scores[(r * ng) + g] - lo[r];
                    if (a == j0 && b == j0 + 15)
                    {
                        dots.Store(dst + j0);
                    }
                    else
                    {
                        dots.Store(lanes);
                        for (int j = a; j <= b; j++)
                        {
                            dst[j] = lanes[j - j0];
                        }
                    }
                }
            }
        }
    }

    /// <summary>
    /// Dot products of one zero-padded query with 16 packed keys: per key, lane FMAs over the 16-float chunks in order,
    /// then the fixed 16→1 tree of <see cref="Reduce16"/>. Lanes are independent, so a key's result does not depend on
    /// which other keys share the call.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static Vector512<float> Dots16(float* q, float* keys, int chunks)
    {
        Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
        Vector512<float> a8 = default, a9 = default, a10 = default, a11 = default, a12 = default, a13 = default, a14 = default, a15 = default;
        for (int c = 0; c < chunks; c++, q += 16, keys += KeyBlock * 16)
        {
            var qv = Vector512.Load(q);
            a0 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(keys), a0);
            a1 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(keys + 16), a1);
            a2 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(keys + 32), a2);
            a3 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(keys + 48), a3);
            a4 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(keys + 64), a4);
            a5 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(keys + 80), a5);
            a6 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(keys + 96), a6);
            a7 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(keys + 112), a7);
            a8 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(keys + 128), a8);
            a9 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(keys + 144), a9);
            a10 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(keys + 160), a10);
            a11 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(keys + 176), a11);
            a12 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(keys + 192), a12);
            a13 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(keys + 208), a13);
            a14 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(keys + 224), a14);
            a15 = Vector512.FusedMultiplyAdd(qv, Vector512.Load(keys + 240), a15);
        }
        return Reduce16(a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, a10, a11, a12, a13, a14, a15);
    }

    /// <summary>
    /// Horizontal sums of 16 vectors at once, result lane j = Σ lanes of input j. The tree: 256-bit halves, then
    /// 128-bit quarters, then 64-bit pairs, then adjacent floats; a final permute puts the keys in order.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Reduce16(Vector512<float> a0, Vector512<float> a1, Vector512<float> a2, Vector512<float> a3,
        Vector512<float> a4, Vector512<float> a5, Vector512<float> a6, Vector512<float> a7, Vector512<float> a8, Vector512<float> a9,
        Vector512<float> a10, Vector512<float> a11, Vector512<float> a12, Vector512<float> a13, Vector512<float> a14, Vector512<float> a15)
    {
        // Step 1: b holds key 2i in its 128-bit quarters 0-1 and key 2i+1 in quarters 2-3 (8 partial sums each).
        var b0 = Halves(a0, a1);
        var b1 = Halves(a2, a3);
        var b2 = Halves(a4, a5);
        var b3 = Halves(a6, a7);
        var b4 = Halves(a8, a9);
        var b5 = Halves(a10, a11);
        var b6 = Halves(a12, a13);
        var b7 = Halves(a14, a15);
        // Step 2: quarter q of c_m holds key 4m + q (4 partial sums).
        var c0 = Quarters(b0, b1);
        var c1 = Quarters(b2, b3);
        var c2 = Quarters(b4, b5);
        var c3 = Quarters(b6, b7);
        // Step 3: per quarter L, d_n = [key 8n+L, key 8n+L, key 8n+4+L, key 8n+4+L] (2 partial sums each).
        var d0 = Avx512F.UnpackLow(c0.AsDouble(), c1.AsDouble()).AsSingle() + Avx512F.UnpackHigh(c0.AsDouble(), c1.AsDouble()).AsSingle();
        var d1 = Avx512F.UnpackLow(c2.AsDouble(), c3.AsDouble()).AsSingle() + Avx512F.UnpackHigh(c2.AsDouble(), c3.AsDouble()).AsSingle();
        // Step 4: lane 4L + t = key 4t + L.
        var e = Avx512F.Shuffle(d0, d1, 0x88) + Avx512F.Shuffle(d0, d1, 0xDD);
        return Avx512F.PermuteVar16x32(e, Vector512.Create(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Halves(Vector512<float> a, Vector512<float> b) =>
        Avx512F.Shuffle4x128(a, b, 0x44) + Avx512F.Shuffle4x128(a, b, 0xEE);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector512<float> Quarters(Vector512<float> b0, Vector512<float> b1) =>
        Avx512F.Shuffle4x128(b0, b1, 0x88) + Avx512F.Shuffle4x128(b0, b1, 0xDD);

    /// <summary><c>Σ a[i]·b[i]</c>: lane FMAs over full vectors, a fixed horizontal sum, then the tail in order.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Dot(SimdLevel simd, float* a, float* b, int d)
    {
        int i = 0;
        float sum = 0f;
        if (simd == SimdLevel.Vector512)
        {
            if (d >= 16)
            {
                var acc = Vector512<float>.Zero;
                for (; i + 16 <= d; i += 16)
                {
                    acc = Vector512.FusedMultiplyAdd(Vector512.Load(a + i), Vector512.Load(b + i), acc);
                }
                sum = Vector512.Sum(acc);
            }
        }
        else if (simd == SimdLevel.Vector256)
        {
            if (d >= 8)
            {
                var acc = Vector256<float>.Zero;
                for (; i + 8 <= d; i += 8)
                {
                    acc = Vector256.FusedMultiplyAdd(Vector256.Load(a + i), Vector256.Load(b + i), acc);
                }
                sum = Vector256.Sum(acc);
            }
        }
        for (; i < d; i++)
        {
            sum = MathF.FusedMultiplyAdd(a[i], b[i], sum);
        }
        return sum;
    }

    /// <summary><c>o[e] = fma(p[j], v[j, e], o[e])</c> for j = 0..count-1 in order, every element e of the head.</summary>
    private static void AccumulateWeightedValues(SimdLevel simd, float* o, float* p, float* v, nint vStride, int count, int d)
    {
        int e = 0;
        if (simd == SimdLevel.Vector512)
        {
            // 8 accumulators (128 floats) per pass: 8 independent FMA chains keep both FMA pipes busy; then 4, then 1.
            for (; e + 128 <= d; e += 128)
            {
                WeightedValues512<Rows8>(o + e, p, v + e, vStride, count);
            }
            for (; e + 64 <= d; e += 64)
            {
                WeightedValues512<Rows4>(o + e, p, v + e, vStride, count);
            }
            for (; e + 16 <= d; e += 16)
            {
                WeightedValues512<Rows1>(o + e, p, v + e, vStride, count);
            }
        }
        else if (simd == SimdLevel.Vector256)
        {
            for (; e + 32 <= d; e += 32)
            {
                WeightedValues256<Rows4>(o + e, p, v + e, vStride, count);
            }
            for (; e + 8 <= d; e += 8)
            {
                WeightedValues256<Rows1>(o + e, p, v + e, vStride, count);
            }
        }
        for (; e < d; e++)
        {
            float acc = o[e];
            float* vj = v + e;
            for (int j = 0; j < count; j++, vj += vStride)
            {
                acc = MathF.FusedMultiplyAdd(p[j], *vj, acc);
            }
            o[e] = acc;
        }
    }

    /// <summary>
    /// <see cref="AccumulateWeightedValues"/> over <c>TN.Rows</c> (1, 4 or 8) consecutive vectors of 16 floats from
    /// <paramref name="o"/>: one accumulator per vector (the JIT drops the unused ones), each element's FMA chain over j
    /// in order, so the vector count changes registers only, never results.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WeightedValues512<TN>(float* o, float* p, float* v, nint vStride, int count)
        where TN : struct, IRowCount
    {
        var a0 = Vector512.Load(o);
        var a1 = TN.Rows > 1 ? Vector512.Load(o + 16) : default;
        var a2 = TN.Rows > 1 ? Vector512.Load(o + 32) : default;
        var a3 = TN.Rows > 1 ? Vector512.Load(o + 48) : default;
        var a4 = TN.Rows > 4 ? Vector512.Load(o + 64) : default;
        var a5 = TN.Rows > 4 ? Vector512.Load(o + 80) : default;
        var a6 = TN.Rows > 4 ? Vector512.Load(o + 96) : default;
        var a7 = TN.Rows > 4 ? Vector512.Load(o + 112) : default;
        float* vj = v;
        for (int j = 0; j < count; j++, vj += vStride)
        {
            var pj = Vector512.Create(p[j]);
            a0 = Vector512.FusedMultiplyAdd(pj, Vector512.Load(vj), a0);
            a1 = TN.Rows > 1 ? Vector512.FusedMultiplyAdd(pj, Vector512.Load(vj + 16), a1) : a1;
            a2 = TN.Rows > 1 ? Vector512.FusedMultiplyAdd(pj, Vector512.Load(vj + 32), a2) : a2;
            a3 = TN.Rows > 1 ? Vector512.FusedMultiplyAdd(pj, Vector512.Load(vj + 48), a3) : a3;
            a4 = TN.Rows > 4 ? Vector512.FusedMultiplyAdd(pj, Vector512.Load(vj + 64), a4) : a4;
            a5 = TN.Rows > 4 ? Vector512.FusedMultiplyAdd(pj, Vector512.Load(vj + 80), a5) : a5;
            a6 = TN.Rows > 4 ? Vector512.FusedMultiplyAdd(pj, Vector512.Load(vj + 96), a6) : a6;
            a7 = TN.Rows > 4 ? Vector512.FusedMultiplyAdd(pj, Vector512.Load(vj + 112), a7) : a7;
        }
        a0.Store(o);
        if (TN.Rows > 1)
        {
            a1.Store(o + 16);
            a2.Store(o + 32);
            a3.Store(o + 48);
        }
        if (TN.Rows > 4)
        {
            a4.Store(o + 64);
            a5.Store(o + 80);
            a6.Store(o + 96);
            a7.Store(o + 112);
        }
    }

    /// <summary>The same over <c>TN.Rows</c> (1 or 4) vectors of 8 floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WeightedValues256<TN>(float* o, float* p, float* v, nint vStride, int count)
        where TN : struct, IRowCount
    {
        var a0 = Vector256.Load(o);
        var a1 = TN.Rows > 1 ? Vector256.Load(o + 8) : default;
        var a2 = TN.Rows > 1 ? Vector256.Load(o + 16) : default;
        var a3 = TN.Rows > 1 ? Vector256.Load(o + 24) : default;
        float* vj = v;
        for (int j = 0; j < count; j++, vj += vStride)
        {
            var pj = Vector256.Create(p[j]);
            a0 = Vector256.FusedMultiplyAdd(pj, Vector256.Load(vj), a0);
            a1 = TN.Rows > 1 ? Vector256.FusedMultiplyAdd(pj, Vector256.Load(vj + 8), a1) : a1;
            a2 = TN.Rows > 1 ? Vector256.FusedMultiplyAdd(pj, Vector256.Load(vj + 16), a2) : a2;
            a3 = TN.Rows > 1 ? Vector256.FusedMultiplyAdd(pj, Vector256.Load(vj + 24), a3) : a3;
        }
        a0.Store(o);
        if (TN.Rows > 1)
        {
            a1.Store(o + 8);
            a2.Store(o + 16);
            a3.Store(o + 24);
        }
    }
}
