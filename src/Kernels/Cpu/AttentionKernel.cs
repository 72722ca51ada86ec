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

/// <summary>
/// Scaled dot-product attention for a tile of query rows × the query heads of one kv head. Per (row, head) the math
/// is fixed: <c>s_j = fl(dot(q, k_j)) · scale</c> over the visible keys in order (dot = lane FMAs over head_dim, then
/// a fixed horizontal sum), a max-subtracting softmax over exactly those scores, then <c>out = Σ_j p_j v_j</c> as one
/// FMA chain per element in key order. Tiling rows and heads only shares K/V loads, so results do not depend on
/// the other rows of the call.
/// </summary>
internal static unsafe class AttentionKernel
{
    /// <summary>Query rows per work unit: they share every K and V load.</summary>
    public const int RowTile = 4;

    private const int KeyBlock = 64;

    /// <summary>Scratch floats one unit needs: the scores, then one packed block of K or V rows.</summary>
    public static long ScratchFloats(in AttentionShape s, int headsPerUnit) =>
        ((long)RowTile * headsPerUnit * Math.Max(1, s.MaxSpan)) + 16 + ((long)KeyBlock * s.HeadDim);

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
        for (int jb = jMin; jb <= jMax; jb += KeyBlock)
        {
            int je = Math.Min(jMax, jb + KeyBlock - 1);
            PackRows(kHead, kvStride, jb, je, jMax, d, pack);
            for (int j = jb; j <= je; j++)
            {
                float* kj = pack + ((nint)(j - jb) * d);
                for (int r = 0; r < rowCount; r++)
                {
                    if (j < lo[r] || j > hi[r])
                    {
                        continue;
                    }
                    float* qr = q + ((r0 + r) * qRowStride) + ((nint)((kvHead * s.Group) + g0) * d);
                    for (int g = 0; g < ng; g++)
                    {
                        scores[(r * ng) + g][j - lo[r]] = Dot(simd, qr + ((nint)g * d), kj, d) * s.Scale;
                    }
                }
            }
        }

        for (int r = 0; r < rowCount; r++)
        {
            int n = hi[r] - lo[r] + 1;
            float* outRow = output + ((r0 + r) * qRowStride) + ((nint)((kvHead * s.Group) + g0) * d);
            new Span<float>(outRow, ng * d).Clear();
            for (int g = 0; g < ng && n > 0; g++)
            {
                VectorOps.SoftmaxRow(simd, scores[(r * ng) + g], n);
            }
        }

        float* vHead = v + ((nint)kvHead * d);
        for (int jb = jMin; jb <= jMax; jb += KeyBlock)
        {
            int je = Math.Min(jMax, jb + KeyBlock - 1);
            PackRows(vHead, kvStride, jb, je, jMax, d, pack);
            for (int r = 0; r < rowCount; r++)
            {
                int a = Math.Max(jb, lo[r]);
                int b = Math.Min(je, hi[r]);
                if (b < a)
                {
                    continue;
                }
                float* outRow = output + ((r0 + r) * qRowStride) + ((nint)((kvHead * s.Group) + g0) * d);
                for (int g = 0; g < ng; g++)
                {
                    AccumulateWeightedValues(simd, outRow + ((nint)g * d), scores[(r * ng) + g] + (a - lo[r]),
                        pack + ((nint)(a - jb) * d), d, b - a + 1, d);
                }
            }
        }
    }

    /// <summary>
    /// Copies rows <c>[jb, je]</c> (row j at <c>src + j·stride</c>, d floats) to <paramref name="dst"/> contiguously,
    /// prefetching the rows of the next block (up to <paramref name="last"/>).
    /// </summary>
    private static void PackRows(float* src, nint stride, int jb, int je, int last, int d, float* dst)
    {
        nint bytes = (nint)d * sizeof(float);
        for (int j = jb; j <= je; j++)
        {
            int ahead = j + KeyBlock;
            if (Sse.IsSupported && ahead <= last)
            {
                byte* p = (byte*)(src + (ahead * stride));
                for (nint off = 0; off < bytes; off += 64)
                {
                    Sse.Prefetch0(p + off);
                }
            }
            Buffer.MemoryCopy(src + (j * stride), dst + ((nint)(j - jb) * d), bytes, bytes);
        }
    }

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
            for (; e + 64 <= d; e += 64)
            {
                var a0 = Vector512.Load(o + e);
                var a1 = Vector512.Load(o + e + 16);
                var a2 = Vector512.Load(o + e + 32);
                var a3 = Vector512.Load(o + e + 48);
                float* vj = v + e;
                for (int j = 0; j < count; j++, vj += vStride)
                {
                    var pj = Vector512.Create(p[j]);
                    a0 = Vector512.FusedMultiplyAdd(pj, Vector512.Load(vj), a0);
                    a1 = Vector512.FusedMultiplyAdd(pj, Vector512.Load(vj + 16), a1);
                    a2 = Vector512.FusedMultiplyAdd(pj, Vector512.Load(vj + 32), a2);
                    a3 = Vector512.FusedMultiplyAdd(pj, Vector512.Load(vj + 48), a3);
                }
                a0.Store(o + e);
                a1.Store(o + e + 16);
                a2.Store(o + e + 32);
                a3.Store(o + e + 48);
            }
            for (; e + 16 <= d; e += 16)
            {
                var a0 = Vector512.Load(o + e);
                float* vj = v + e;
                for (int j = 0; j < count; j++, vj += vStride)
                {
                    a0 = Vector512.FusedMultiplyAdd(Vector512.Create(p[j]), Vector512.Load(vj), a0);
                }
                a0.Store(o + e);
            }
        }
        else if (simd == SimdLevel.Vector256)
        {
            for (; e + 32 <= d; e += 32)
            {
                var a0 = Vector256.Load(o + e);
                var a1 = Vector256.Load(o + e + 8);
                var a2 = Vector256.Load(o + e + 16);
                var a3 = Vector256.Load(o + e + 24);
                float* vj = v + e;
                for (int j = 0; j < count; j++, vj += vStride)
                {
                    var pj = Vector256.Create(p[j]);
                    a0 = Vector256.FusedMultiplyAdd(pj, Vector256.Load(vj), a0);
                    a1 = Vector256.FusedMultiplyAdd(pj, Vector256.Load(vj + 8), a1);
                    a2 = Vector256.FusedMultiplyAdd(pj, Vector256.Load(vj + 16), a2);
                    a3 = Vector256.FusedMultiplyAdd(pj, Vector256.Load(vj + 24), a3);
                }
                a0.Store(o + e);
                a1.Store(o + e + 8);
                a2.Store(o + e + 16);
                a3.Store(o + e + 24);
            }
            for (; e + 8 <= d; e += 8)
            {
                var a0 = Vector256.Load(o + e);
                float* vj = v + e;
                for (int j = 0; j < count; j++, vj += vStride)
                {
                    a0 = Vector256.FusedMultiplyAdd(Vector256.Create(p[j]), Vector256.Load(vj), a0);
                }
                a0.Store(o + e);
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
}
