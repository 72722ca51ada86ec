namespace Distributed.Kernels.Cpu;

/// <summary>
/// Attention for a few query rows (decode), in three team phases over the whole call instead of one unit per kv head:
/// (0) scores, threads claiming key blocks and doing every kv head of a block, so each K row (all kv heads, 4 KiB at
/// 8 × 128) is read front to back once; (1) softmax per (row, head); (2) weighted V sums, each thread owning a
/// contiguous range of heads and walking the key blocks, so V rows are read in order as well. A per-kv-head walk
/// touches every page of the cache once per kv head (row stride 4 KiB), which measured 5-8× slower at 8k context.
/// Per (row, head) the arithmetic is exactly that of <see cref="AttentionKernel.Unit"/> (same block helpers), so a
/// row gives the same bits through either path.
/// </summary>
internal sealed unsafe class DecodeAttentionTask : ITeamTask
{
    /// <summary>Calls with at most this many query rows take this path.</summary>
    public const int MaxRows = 4;

    private readonly ScratchBuffer[] _threadScratch;
    private readonly ScratchBuffer _scores = new();
    private readonly ScratchBuffer _queries = new();
    private readonly int[] _lo = new int[MaxRows];
    private readonly int[] _hi = new int[MaxRows];
    private SimdLevel _simd;
    private AttentionShape _shape;
    private float* _q;
    private float* _k;
    private float* _v;
    private float* _output;
    private float* _scoreBase;
    private float* _qPad;
    private int _rows;
    private int _rowScores;
    private int _jMin;
    private int _jMax;
    private int _phase;
    private int _next;

    public DecodeAttentionTask(ScratchBuffer[] threadScratch)
    {
        _threadScratch = threadScratch;
    }

    /// <param name="team">The team, or null to run every phase on the calling thread (small calls).</param>
    public void Run(WorkerTeam? team, SimdLevel simd, in AttentionShape shape, float* q, int* positions, float* k, float* v,
        float* output, int rows)
    {
        _simd = simd;
        _shape = shape;
        _q = q;
        _k = k;
        _v = v;
        _output = output;
        _rows = rows;
        _jMin = int.MaxValue;
        _jMax = -1;
        int maxN = 0;
        for (int r = 0; r < rows; r++)
        {
            shape.VisibleRange(positions[r], out _lo[r], out _hi[r]);
            int n = _hi[r] - _lo[r] + 1;
            maxN = Math.Max(maxN, n);
            if (n > 0)
            {
                _jMin = Math.Min(_jMin, _lo[r]);
                _jMax = Math.Max(_jMax, _hi[r]);
            }
        }
        _rowScores = maxN;
        _scoreBase = _scores.Get(Math.Max(1L, (long)rows * shape.Heads * maxN));
        if (AttentionKernel.UsesPaddedQueries(simd))
        {
            _qPad = _queries.Get((long)rows * shape.Heads * AttentionKernel.Padded(shape.HeadDim));
            AttentionKernel.PadQueries(q, (nint)shape.Heads * shape.HeadDim, rows, shape.Heads, shape.HeadDim, _qPad);
        }
        for (_phase = 0; _phase < 3; _phase++)
        {
            _next = 0;
            if (team is null)
            {
                Execute(0, 1);
            }
            else
            {
                team.Run(this);
            }
        }
    }

    public void Execute(int thread, int threads)
    {
        fixed (int* lo = _lo, hi = _hi)
        {
            switch (_phase)
            {
                case 0:
                    Scores(thread, lo, hi);
                    break;
                case 1:
                    Softmax(thread, threads, lo, hi);
                    break;
                default:
                    WeightedValues(thread, threads, lo, hi);
                    break;
            }
        }
    }

    /// <summary>One packed block per kv head: <c>KvHeads × KeyBlock × Padded(HeadDim)</c> floats (256 KiB at 8 × 128).</summary>
    private nint HeadStride => (nint)AttentionKernel.KeyBlock * AttentionKernel.Padded(_shape.HeadDim);

    private float* Pack(int thread) => _threadScratch[thread].Get(((long)_shape.KvHeads * HeadStride) + 16);

    private float* ScoresOf(int row, int head) => _scoreBase + ((long)((row * _shape.Heads) + head) * _rowScores);

    private void Scores(int thread, int* lo, int* hi)
    {
        if (_jMax < _jMin)
        {
            return;
        }
        int d = _shape.HeadDim;
        int group = _shape.Group;
        int blocks = ((_jMax - _jMin) / AttentionKernel.KeyBlock) + 1;
        float* pack = null;
        float** scores = stackalloc float*[_rows * group];
        bool padded = AttentionKernel.UsesPaddedQueries(_simd);
        int dp = AttentionKernel.Padded(d);
        int b;
        while ((b = Interlocked.Increment(ref _next) - 1) < blocks)
        {
            if (pack == null)
            {
                pack = Pack(thread);
            }
            int jb = _jMin + (b * AttentionKernel.KeyBlock);
            int je = Math.Min(_jMax, jb + AttentionKernel.KeyBlock - 1);
            AttentionKernel.PackAllHeads(_k, _shape, 0, _shape.KvHeads, jb, je, _jMax, padded, pack, HeadStride);
            for (int kvHead = 0; kvHead < _shape.KvHeads; kvHead++)
            {
                int h0 = kvHead * group;
                for (int r = 0; r < _rows; r++)
                {
                    for (int g = 0; g < group; g++)
                    {
                        scores[(r * group) + g] = ScoresOf(r, h0 + g);
                    }
                }
                var queries = padded
                    ? new QueryView(_qPad + ((nint)h0 * dp), (nint)_shape.Heads * dp, dp)
                    : new QueryView(_q + ((nint)h0 * d), (nint)_shape.Heads * d, d);
                AttentionKernel.ScorePacked(_simd, _shape, pack + (kvHead * HeadStride), jb, je, queries, _rows, group, lo, hi, scores);
            }
        }
    }

    private void Softmax(int thread, int threads, int* lo, int* hi)
    {
        int pairs = _rows * _shape.Heads;
        int d = _shape.HeadDim;
        for (int i = pairs * thread / threads; i < pairs * (thread + 1) / threads; i++)
        {
            int r = i / _shape.Heads;
            int h = i % _shape.Heads;
            new Span<float>(_output + ((nint)i * d), d).Clear();
            int n = hi[r] - lo[r] + 1;
            if (n > 0)
            {
                VectorOps.SoftmaxRow(_simd, ScoresOf(r, h), n);
            }
        }
    }

    private void WeightedValues(int thread, int threads, int* lo, int* hi)
    {
        if (_jMax < _jMin)
        {
            return;
        }
        int heads = _shape.Heads;
        int h0 = heads * thread / threads;
        int h1 = heads * (thread + 1) / threads;
        if (h1 <= h0)
        {
            return;
        }
        int d = _shape.HeadDim;
        int group = _shape.Group;
        float* pack = Pack(thread);
        float** scores = stackalloc float*[_rows * group];
        int kv0 = h0 / group;
        int kv1 = (h1 - 1) / group;
        for (int jb = _jMin; jb <= _jMax; jb += AttentionKernel.KeyBlock)
        {
            int je = Math.Min(_jMax, jb + AttentionKernel.KeyBlock - 1);
            AttentionKernel.PackAllHeads(_v, _shape, kv0, kv1 - kv0 + 1, jb, je, _jMax, chunked: false, pack, HeadStride);
            for (int kvHead = kv0; kvHead <= kv1; kvHead++)
            {
                int gLo = Math.Max(h0, kvHead * group) - (kvHead * group);
                int gHi = Math.Min(h1, (kvHead + 1) * group) - (kvHead * group);
                int ng = gHi - gLo;
                int first = (kvHead * group) + gLo;
                for (int r = 0; r < _rows; r++)
                {
                    for (int g = 0; g < ng; g++)
                    {
                        scores[(r * ng) + g] = ScoresOf(r, first + g);
                    }
                }
                var outputs = new QueryView(_output + ((nint)first * d), (nint)heads * d, d);
                AttentionKernel.WeightedValuesPacked(_simd, _shape, pack + ((kvHead - kv0) * HeadStride), jb, je, outputs, _rows, ng,
                    lo, hi, scores);
            }
        }
    }

    public void Dispose()
    {
        _scores.Dispose();
        _queries.Dispose();
    }
}
