using Distributed.Kernels.Cuda.Interop;

namespace Distributed.Kernels.Cuda;

/// <summary>
/// What a graph-captured device step is specialised for: graph kernels see fixed addresses and fixed launch shapes, so a
/// graph set serves exactly one (model, KV store, row bucket, key-split capacity, block-table capacity). The model and
/// the store are compared by reference: a new model or store (new weights, new KV memory) gets new graphs.
/// </summary>
/// <param name="Owner">The model whose weights the step reads (by reference).</param>
/// <param name="Store">The device KV store the step reads and writes (by reference).</param>
/// <param name="Bucket">Rows the graphs compute (the step's rows padded up to a bucket of <see cref="CudaGraphCache.Buckets"/>).</param>
/// <param name="Splits">Key splits of the attention launches (a power of two covering the longest row's keys).</param>
/// <param name="TableCapacity">Block-table entries per layer the fixed input buffer holds (a power of two).</param>
public readonly record struct CudaGraphKey(object Owner, object Store, int Bucket, int Splits, int TableCapacity);

/// <summary>Counters of the CUDA graphs a backend captured and launched (diagnostics; tests read them).</summary>
/// <param name="Launches">Graph launches (one per replayed segment).</param>
/// <param name="Captures">Segments captured into a graph.</param>
/// <param name="CaptureFailures">Captures that failed and ran eagerly instead (an allocation or a synchronization during the capture).</param>
/// <param name="EagerSegments">Segments that ran without a graph (a key's warm-up step, a failed capture, a key whose captures kept failing).</param>
/// <param name="Invalidations">Graph sets dropped because the scratch memory they point into was reallocated.</param>
/// <param name="Evictions">Graph sets dropped to stay within <see cref="CudaGraphCache.MaxGraphSets"/>.</param>
/// <param name="GraphSets">Graph sets held now.</param>
/// <param name="Graphs">Executable graphs held now.</param>
/// <param name="LastFailure">The message of the last failed capture (null if none).</param>
public readonly record struct CudaGraphCounters(long Launches, long Captures, long CaptureFailures, long EagerSegments, long Invalidations, long Evictions,
    int GraphSets, int Graphs, string? LastFailure);

/// <summary>
/// The captured graphs of one backend and the dedicated call context (stream, cuBLAS handle, scratch arena) they were
/// captured on. Only one graph step runs at a time (<see cref="TryEnter"/>); the arena serves every bucket, so each
/// bucket's tensors sit at the same addresses step after step as long as the arena is not reallocated
/// (<see cref="BumpArena.Generation"/>): a reallocation drops every graph, which are then captured again.
/// </summary>
internal sealed class CudaGraphCache : IDisposable
{
    /// <summary>Row buckets: a step of t rows runs the graphs of the smallest bucket ≥ t; larger steps run eagerly.</summary>
    public static readonly int[] Buckets = [1, 2, 4, 8, 16, 32, 64, 128, 256];

    /// <summary>Graph sets kept at most (least recently used dropped first): buckets × context lengths in use.</summary>
    public const int MaxGraphSets = 24;

    /// <summary>After this many failed captures a graph set stops trying and runs eagerly.</summary>
    public const int MaxFailures = 3;

    private readonly nint _context;
    private readonly Dictionary<CudaGraphKey, GraphSet> _sets = [];
    // Guards _sets and the counters: the step mutates them, diagnostics read them from other threads.
    private readonly Lock _lock = new();
    private int _busy;
    private long _tick;
    private long _launches, _captures, _failures, _eager, _invalidations, _evictions;
    private string? _lastFailure;

    public CudaGraphCache(nint context)
    {
        _context = context;
        Context = new CudaCallContext(context);
    }

    /// <summary>The dedicated call context every graph is captured on and launched on.</summary>
    public CudaCallContext Context { get; private set; }

    /// <summary>The smallest bucket holding <paramref name="rows"/>, or 0 when it exceeds the largest.</summary>
    public static int BucketOf(int rows)
    {
        foreach (int b in Buckets)
        {
            if (rows <= b)
            {
                return b;
            }
        }
        return 0;
    }

    private volatile bool _dropRequested;

    /// <summary>Takes the cache for one step (first dropping every graph if <see cref="RequestDrop"/> asked); false when another step holds it.</summary>
    public bool TryEnter()
    {
        if (Interlocked.CompareExchange(ref _busy, 1, 0) != 0)
        {
            return false;
        }
        if (_dropRequested)
        {
            _dropRequested = false;
            DropAll();
        }
        return true;
    }

    /// <summary>Drops every graph before the next step (a step running now keeps launching its own until it ends).</summary>
    public void RequestDrop() => _dropRequested = true;

    /// <summary>Ends a step. After a failed step the context (its stream may hold half-done work) and every graph are replaced.</summary>
    public void Exit(bool ok)
    {
        if (!ok)
        {
            DropAll();
            Context.Dispose();
            Context = new CudaCallContext(_context);
        }
        Volatile.Write(ref _busy, 0);
    }

    /// <summary>The graph set of <paramref name="key"/> (created, warm-up pending, when new), invalidated if the arena moved.</summary>
    public GraphSet Get(CudaGraphKey key)
    {
        lock (_lock)
        {
            return GetLocked(key);
        }
    }

    private GraphSet GetLocked(CudaGraphKey key)
    {
        long generation = Context.Device.Generation;
        if (_sets.TryGetValue(key, out GraphSet? set))
        {
            if (set.Generation != generation)
            {
                set.Clear();
                set.Generation = generation;
                _invalidations++;
            }
        }
        else
        {
            while (_sets.Count >= MaxGraphSets)
            {
                var oldest = _sets.MinBy(kv => kv.Value.LastUse);
                oldest.Value.Clear();
                _sets.Remove(oldest.Key);
                _evictions++;
            }
            set = new GraphSet { Generation = generation };
            _sets.Add(key, set);
        }
        set.LastUse = ++_tick;
        return set;
    }

    /// <summary>
    /// Runs segment <paramref name="index"/> of a step of <paramref name="set"/>: replays its graph, or captures
    /// <paramref name="issue"/> into one and launches it, or (warm-up, failed capture) runs <paramref name="issue"/> eagerly.
    /// Returns true when a graph was launched.
    /// </summary>
    public bool RunSegment(GraphSet set, bool capture, int index, Action issue)
    {
        CudaCallContext ctx = Context;
        if (set.Generation != ctx.Device.Generation)
        {
            // The arena was reallocated during this step (an eager segment outgrew it): no graph of the set is valid now.
            lock (_lock)
            {
                set.Clear();
                set.Generation = ctx.Device.Generation;
                _invalidations++;
            }
        }
        GraphExecHandle? graph = index < set.Graphs.Count ? set.Graphs[index] : null;
        if (graph is null && capture && set.Failures < MaxFailures)
        {
            var mark = ctx.Device.Mark();
            ctx.Device.FreezeForCapture(forbidAll: false);
            ctx.Host.FreezeForCapture(forbidAll: true);
            try
            {
                graph = GraphExecHandle.Capture(_context, ctx.Stream, issue);
                Interlocked.Increment(ref _captures);
            }
            catch (Exception e) when (e is CudaException or InvalidOperationException)
            {
                set.Failures++;
                Interlocked.Increment(ref _failures);
                _lastFailure = e.Message;
            }
            finally
            {
                ctx.Device.Thaw();
                ctx.Host.Thaw();
                ctx.Device.Release(mark);
            }
            if (graph is not null)
            {
                lock (_lock)
                {
                    while (set.Graphs.Count <= index)
                    {
                        set.Graphs.Add(null);
                    }
                    set.Graphs[index] = graph;
                }
            }
        }
        if (graph is null)
        {
            Interlocked.Increment(ref _eager);
            issue();
            return false;
        }
        graph.Launch(ctx.Stream);
        Interlocked.Increment(ref _launches);
        return true;
    }

    public CudaGraphCounters Counters
    {
        get
        {
            lock (_lock)
            {
                return new(_launches, _captures, _failures, _eager, _invalidations, _evictions, _sets.Count,
                    _sets.Values.Sum(s => s.Graphs.Count(g => g is not null)), _lastFailure);
            }
        }
    }

    /// <summary>Drops every graph (the model or its weights changed, or the context is replaced).</summary>
    public void DropAll()
    {
        lock (_lock)
        {
            foreach (GraphSet set in _sets.Values)
            {
                set.Clear();
            }
            _sets.Clear();
        }
    }

    public void Dispose()
    {
        DropAll();
        Context.Dispose();
    }

    /// <summary>The graphs of one <see cref="CudaGraphKey"/>, by segment index.</summary>
    internal sealed class GraphSet
    {
        public List<GraphExecHandle?> Graphs { get; } = [];

        public long Generation { get; set; }

        public long LastUse { get; set; }

        /// <summary>Steps of this key run so far (the first is the eager warm-up).</summary>
        public int Steps { get; set; }

        public int Failures { get; set; }

        public void Clear()
        {
            foreach (GraphExecHandle? g in Graphs)
            {
                g?.Dispose();
            }
            Graphs.Clear();
        }
    }
}
