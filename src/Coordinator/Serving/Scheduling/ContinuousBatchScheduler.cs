using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Distributed.Coordinator.KvCache;
using Distributed.Coordinator.Model.Llama4;
using Microsoft.Extensions.Logging.Abstractions;

namespace Distributed.Coordinator.Serving.Scheduling;

/// <summary>
/// Counters of the scheduler's state (cheap snapshot for metrics and admin views). The latency sums are since start, as
/// the scheduler sees them (submission to first token, token to token), so a reader computes interval means from two
/// snapshots: (sum₂ − sum₁) / (count₂ − count₁).
/// </summary>
/// <param name="Queued">Sequences waiting for admission (new requests and preempted sequences).</param>
/// <param name="Running">Sequences in the running batch.</param>
/// <param name="KvBlocksUsed">KV blocks held by sequences.</param>
/// <param name="KvBlocksCached">Unreferenced KV blocks kept for their prefix (reusable; evicted when room is needed).</param>
/// <param name="KvBlocksTotal">KV blocks in the budget.</param>
/// <param name="Steps">Forward steps run.</param>
/// <param name="TokensGenerated">Tokens generated.</param>
/// <param name="RequestsFinished">Choices that ended with a finish reason (stop, length, context length).</param>
/// <param name="FirstTokens">Choices that got their first token.</param>
/// <param name="TimeToFirstTokenSeconds">Sum over <paramref name="FirstTokens"/> of submission → first token.</param>
/// <param name="LaterTokens">Tokens after a choice's first.</param>
/// <param name="InterTokenSeconds">Sum over <paramref name="LaterTokens"/> of the time since the choice's previous token.</param>
public readonly record struct SchedulerStats(int Queued, int Running, int KvBlocksUsed, int KvBlocksCached, int KvBlocksTotal, long Steps, long TokensGenerated,
    long RequestsFinished = 0, long FirstTokens = 0, double TimeToFirstTokenSeconds = 0, long LaterTokens = 0, double InterTokenSeconds = 0)
{
    /// <summary>Tokens sequences asked the prefix cache for when they were admitted (the tokens they had to compute).</summary>
    public long PrefixQueriedTokens { get; init; }

    /// <summary>Of <see cref="PrefixQueriedTokens"/>, those found cached (not computed again).</summary>
    public long PrefixHitTokens { get; init; }

    /// <summary>Kept prefix blocks evicted to make room.</summary>
    public long PrefixEvictions { get; init; }

    /// <summary>Sequences preempted (blocks freed, recomputed later) because KV blocks ran out.</summary>
    public long Preemptions { get; init; }

    /// <summary><see cref="PrefixHitTokens"/> / <see cref="PrefixQueriedTokens"/> (0 before any query).</summary>
    public double PrefixHitRate => PrefixQueriedTokens == 0 ? 0 : (double)PrefixHitTokens / PrefixQueriedTokens;
}

/// <summary>
/// Iteration-level (continuous) batching over one <see cref="Llama4Engine"/>, and the only generation loop (<c>serve</c>,
/// <c>infer</c> and <c>bench</c> all run here). Every step:
/// <list type="number">
/// <item>cancelled choices leave;</item>
/// <item>running sequences that are caught up take one token each (decode), the others a chunk of at most
/// <see cref="SchedulerOptions.PrefillChunkTokens"/> from the remaining token budget (prefill, or recompute after a
/// preemption); every sequence takes the KV blocks its tokens need before the step, and when the pool is out of blocks
/// the newest running sequence is preempted: its blocks are released and it goes back to the head of the queue, to be
/// recomputed (its sampler state kept, so its tokens do not change);</item>
/// <item>queued sequences join, oldest first, while the budget, <see cref="SchedulerOptions.MaxRunningSequences"/> and
/// the free blocks allow, each starting on the longest prefix the KV cache still holds;</item>
/// <item>one forward for everyone (one attention call and one MoE dispatch per layer);</item>
/// <item>caught-up sequences sample their next token; a request with <c>n</c> &gt; 1 forks into its choices after its
/// prompt, sharing its blocks.</item>
/// </list>
/// Because the kernels are batch invariant, a sequence's tokens do not depend on what else shares the batch, on prefix
/// cache hits, or on preemptions.
/// </summary>
public sealed partial class ContinuousBatchScheduler : IGenerationScheduler, IAsyncDisposable
{
    private readonly Llama4Engine _engine;
    private readonly SchedulerOptions _options;
    private readonly ILogger _logger;
    private readonly KvBlockPool _pool;
    private readonly Channel<Sequence> _pending;
    // Preempted sequences, resumed before new requests (oldest first). Owned by the loop.
    private readonly LinkedList<Sequence> _resume = new();
    private readonly List<Sequence> _running = [];
    private readonly HashSet<int> _eos;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;
    private int _resumeCount;
    private int _runningCount;
    private readonly Lock _idleGate = new();
    private TaskCompletionSource? _idleWaiters;
    private bool _idle;
    private long _steps;
    private long _tokens;
    private long _finished;
    private long _firstTokens;
    private long _ttftTicks;
    private long _laterTokens;
    private long _interTokenTicks;
    private long _prefixQueried;
    private long _prefixHits;
    private long _preemptions;

    /// <summary>Creates the scheduler and starts its loop.</summary>
    /// <exception cref="ArgumentException">Invalid options.</exception>
    public ContinuousBatchScheduler(Llama4Engine engine, SchedulerOptions options, ILogger<ContinuousBatchScheduler>? logger = null)
    {
        _engine = engine ?? throw new ArgumentNullException(nameof(engine));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        options.Validate();
        _logger = (ILogger?)logger ?? NullLogger.Instance;
        _pool = new KvBlockPool(engine.Config, options.KvBlockSize, options.KvMemoryBytes, engine.Backend, options.BackendKvStore, options.PrefixCaching,
            options.KvDType);
        _pending = Channel.CreateBounded<Sequence>(new BoundedChannelOptions(options.MaxQueuedRequests)
        {
            SingleReader = true,
            FullMode = BoundedChannelFullMode.Wait,
        });
        _eos = [.. engine.Config.EosTokenIds];
        MaxContextTokens = LongestFitting(engine.Config.MaxPositionEmbeddings);
        _loop = Task.Factory.StartNew(RunAsync, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).Unwrap();
    }

    /// <inheritdoc />
    public int VocabSize => _engine.Config.VocabSize;

    /// <summary>
    /// The longest sequence (prompt + generated) one request may have: <c>max_position_embeddings</c>, or less when one
    /// sequence of that length would not fit the KV budget alone (<see cref="KvBlockPool.BlocksNeeded(int, int)"/>).
    /// </summary>
    public int MaxContextTokens { get; }

    /// <summary>The KV pool (for reporting).</summary>
    public KvBlockPool KvPool => _pool;

    /// <summary>A snapshot of the scheduler's counters.</summary>
    public SchedulerStats Stats => new(_pending.Reader.Count + Volatile.Read(ref _resumeCount), Volatile.Read(ref _runningCount), _pool.UsedBlocks,
        _pool.CachedBlocks, _pool.TotalBlocks, Interlocked.Read(ref _steps), Interlocked.Read(ref _tokens), Interlocked.Read(ref _finished),
        Interlocked.Read(ref _firstTokens), Interlocked.Read(ref _ttftTicks) / (double)Stopwatch.Frequency,
        Interlocked.Read(ref _laterTokens), Interlocked.Read(ref _interTokenTicks) / (double)Stopwatch.Frequency)
    {
        PrefixQueriedTokens = Interlocked.Read(ref _prefixQueried),
        PrefixHitTokens = Interlocked.Read(ref _prefixHits),
        PrefixEvictions = _pool.Evictions,
        Preemptions = Interlocked.Read(ref _preemptions),
    };

    /// <inheritdoc />
    public IAsyncEnumerable<GeneratedToken> GenerateAsync(GenerationRequest request, CancellationToken cancellationToken) =>
        GenerateAsync(request, null, cancellationToken);

    /// <summary>
    /// <see cref="GenerateAsync(GenerationRequest, CancellationToken)"/>, recording the prompt's logits argmax, routing and
    /// last logits in <paramref name="capture"/> when set (the <c>infer</c> contract; the prefix cache is not used for it,
    /// since every prompt position's logits are needed).
    /// </summary>
    internal async IAsyncEnumerable<GeneratedToken> GenerateAsync(GenerationRequest request, PromptCapture? capture,
        [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var owner = Admit(request, capture, cancellationToken).Owner;
        bool finished = false;
        try
        {
            await foreach (var token in owner.Output.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                yield return token;
            }
            finished = true;
        }
        finally
        {
            if (!finished)
            {
                // The consumer went away (client disconnect, cancellation): the loop drops the sequences at the next
                // step boundary and frees their blocks.
                owner.Cancel();
            }
        }
    }

    private Sequence Admit(GenerationRequest request, PromptCapture? capture, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(request);
        var c = _engine.Config;
        if (request.PromptIds is null || request.PromptIds.Length == 0)
        {
            throw new ArgumentException("the prompt is empty");
        }
        if (request.MaxTokens < 1)
        {
            throw new ArgumentException($"max_tokens must be >= 1, got {request.MaxTokens}");
        }
        if (request.N < 1 || request.N > _options.MaxRunningSequences)
        {
            throw new ArgumentException($"n must be in [1, {_options.MaxRunningSequences}] (the server's running-sequence limit), got {request.N}", "n");
        }
        if (request.Logprobs is < 0 or > 20)
        {
            throw new ArgumentException($"logprobs must be in [0, 20], got {request.Logprobs}", "logprobs");
        }
        for (int i = 0; i < request.PromptIds.Length; i++)
        {
            if ((uint)request.PromptIds[i] >= (uint)c.VocabSize)
            {
                throw new ArgumentException($"prompt token {i} = {request.PromptIds[i]} is outside the vocabulary [0, {c.VocabSize})");
            }
        }
        Sampler.Validate(request.Sampling, c.VocabSize);
        if (request.Images is { } images)
        {
            var vision = _engine.Vision ?? throw new ArgumentException("this model has no vision tower; it cannot take images");
            images.Validate(request.PromptIds, vision.Config.ImageTokenId);
        }
        long total = (long)request.PromptIds.Length + request.MaxTokens;
        if (total > c.MaxPositionEmbeddings)
        {
            throw new RequestTooLargeException(
                $"prompt ({request.PromptIds.Length} tokens) + max_tokens ({request.MaxTokens}) = {total} exceeds the context limit of {c.MaxPositionEmbeddings} tokens");
        }
        // One sequence must fit the whole pool alone (the others preempted); more than that and it could never finish.
        int blocks = _pool.BlocksNeeded((int)total, _options.PrefillChunkTokens);
        if (blocks > _pool.TotalBlocks)
        {
            throw new RequestTooLargeException(
                $"prompt + max_tokens = {total} tokens needs up to {blocks} KV blocks but the whole KV budget holds {_pool.TotalBlocks}");
        }
        var owner = new RequestState(request, capture, cancellationToken);
        var first = new Sequence(owner, 0, NewSampler(request, 0), request.PromptIds) { PendingFork = request.N };
        if (_stop.IsCancellationRequested)
        {
            throw new ObjectDisposedException(nameof(ContinuousBatchScheduler));
        }
        if (!_pending.Writer.TryWrite(first))
        {
            throw new QueueFullException($"the request queue is full ({_options.MaxQueuedRequests} waiting)", _options.RetryAfter);
        }
        LogQueued(request.Id, request.PromptIds.Length, request.MaxTokens);
        return first;
    }

    // Largest T <= limit whose worst case fits the whole pool (BlocksNeeded grows with T).
    private int LongestFitting(int limit)
    {
        int lo = 0, hi = limit;
        while (lo < hi)
        {
            int mid = lo + (hi - lo + 1) / 2;
            if (_pool.BlocksNeeded(mid, _options.PrefillChunkTokens) <= _pool.TotalBlocks)
            {
                lo = mid;
            }
            else
            {
                hi = mid - 1;
            }
        }
        return lo;
    }

    private Sampler NewSampler(GenerationRequest request, int choice)
    {
        var stopIds = new HashSet<int>(request.StopTokenIds ?? []);
        if (!request.IgnoreEos)
        {
            stopIds.UnionWith(_eos);
        }
        // Choice i of a seeded request is the request with seed + i (the OpenAI client's "n separate requests").
        ulong? seed = request.Sampling.Seed is ulong s ? unchecked(s + (ulong)choice) : null;
        return new Sampler(request.Sampling, request.PromptIds, stopIds, seed);
    }

    private async Task RunAsync()
    {
        var ct = _stop.Token;
        while (!ct.IsCancellationRequested)
        {
            try
            {
                if (_running.Count == 0 && _resume.Count == 0)
                {
                    SetIdle(_pending.Reader.Count == 0);
                    if (!await _pending.Reader.WaitToReadAsync(ct).ConfigureAwait(false))
                    {
                        return;
                    }
                    SetIdle(false);
                }
                DropCancelled();
                await StepAsync(ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex)
            {
                // Never let the loop die: fail what was running and carry on with the next requests.
                LogStepFailed(ex);
                FailAll(ex);
            }
        }
    }

    /// <summary>
    /// Completes when the scheduler holds no queued, preempted or running sequence: every finished or cancelled
    /// sequence has ended and given its KV blocks back (blocks kept for prefix reuse count as cached, not used). For
    /// drains and tests; a request submitted later starts a new busy period.
    /// </summary>
    public Task WaitIdleAsync(CancellationToken cancellationToken)
    {
        lock (_idleGate)
        {
            if (_idle && _pending.Reader.Count == 0)
            {
                return Task.CompletedTask;
            }
            _idleWaiters ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _idleWaiters.Task.WaitAsync(cancellationToken);
        }
    }

    private void SetIdle(bool idle)
    {
        TaskCompletionSource? waiters = null;
        lock (_idleGate)
        {
            _idle = idle;
            if (idle)
            {
                (waiters, _idleWaiters) = (_idleWaiters, null);
            }
        }
        waiters?.TrySetResult();
    }

    private void DropCancelled()
    {
        for (int i = _running.Count - 1; i >= 0; i--)
        {
            var s = _running[i];
            if (s.IsCancelled)
            {
                _running.RemoveAt(i);
                End(s, null);
            }
        }
        for (var node = _resume.First; node is not null;)
        {
            var next = node.Next;
            if (node.Value.IsCancelled)
            {
                _resume.Remove(node);
                End(node.Value, null);
            }
            node = next;
        }
        PublishCounts();
    }

    private void PublishCounts()
    {
        Volatile.Write(ref _runningCount, _running.Count);
        Volatile.Write(ref _resumeCount, _resume.Count);
    }

    private async Task StepAsync(CancellationToken ct)
    {
        var plan = Schedule();
        PublishCounts();
        if (plan.Count == 0)
        {
            return;
        }
        // Images: the vision tower runs once per request, when its prompt is first computed; the rows stay with the request
        // (a recompute after a preemption needs them again). A failure fails that request alone; the step goes on.
        for (int i = plan.Count - 1; i >= 0; i--)
        {
            var (s, _) = plan[i];
            if (s.Owner.Request.Images is { } images && s.Owner.ImageEmbeddings is null && s.Computed < s.Owner.Request.PromptIds.Length
                && !EncodeImages(s, images, ct))
            {
                plan.RemoveAt(i);
            }
        }
        if (plan.Count == 0)
        {
            PublishCounts();
            return;
        }
        var items = new List<SequenceStep>(plan.Count);
        bool captureRouting = false;
        foreach (var (s, n) in plan)
        {
            bool last = s.Computed + n == s.TokenCount;
            var logits = s.Owner.Capture is not null && s.Computed < s.Owner.Request.PromptIds.Length
                ? LogitsRequest.All
                : last ? LogitsRequest.Last : LogitsRequest.None;
            // The image rows whose <|patch|> positions fall in this chunk replace those token embeddings.
            items.Add(new SequenceStep(s.Cache!, s.TokenMemory(s.Computed, n), logits) { Embeddings = s.Owner.ImageEmbeddings?.ForRange(s.Computed, n) });
            captureRouting |= s.Owner.Capture is not null;
        }

        StepResult result;
        // Issue #6: one span per step, linked to the span of every request in the batch (a step serves many requests,
        // so it cannot be any single request's child); the dispatch spans of the step are its children.
        using var stepSpan = Diagnostics.CoordinatorInstruments.Tracing.HasListeners()
            ? Diagnostics.CoordinatorInstruments.Tracing.StartActivity("moe.step", ActivityKind.Internal, default(ActivityContext),
                links: plan.Select(p => p.Sequence.Owner.TraceContext).Where(c => c != default).Distinct().Select(c => new ActivityLink(c)))
            : null;
        stepSpan?.SetTag("moe.sequences", plan.Count);
        try
        {
            result = await _engine.Model.ForwardAsync(items, captureRouting, ct).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            LogStepFailed(ex);
            foreach (var (s, _) in plan)
            {
                _running.Remove(s);
                End(s, ex);
            }
            PublishCounts();
            return;
        }
        Interlocked.Increment(ref _steps);

        int vocab = result.Vocab, logitRow = 0, tokenRow = 0;
        long now = Stopwatch.GetTimestamp();
        for (int i = 0; i < plan.Count; i++)
        {
            var (s, n) = plan[i];
            int start = s.Computed;
            s.Computed += n;
            int rows = result.LogitRowsPerItem[i];
            if (s.Owner.Capture is { } capture)
            {
                capture.Record(_engine, start, n, result.Logits.AsSpan(logitRow * vocab, rows * vocab), rows, result.Routing!, tokenRow, s.Owner.Request.PromptIds.Length);
            }
            if (rows > 0 && s.Computed == s.TokenCount)
            {
                var row = result.Logits.AsSpan((logitRow + rows - 1) * vocab, vocab);
                if (s.PendingFork > 1)
                {
                    Fork(s, row, now);
                }
                else
                {
                    s.PendingFork = 0;
                    Emit(s, row, now);
                }
            }
            logitRow += rows;
            tokenRow += n;
        }
        for (int i = _running.Count - 1; i >= 0; i--)
        {
            if (_running[i].Finished)
            {
                var s = _running[i];
                _running.RemoveAt(i);
                End(s, null);
            }
        }
        PublishCounts();
    }

    /// <summary>Runs the vision tower for a request about to compute its prompt; false (the request failed) on an error.</summary>
    private bool EncodeImages(Sequence s, Model.Llama4.Vision.Llama4ImagePrompt images, CancellationToken ct)
    {
        try
        {
            s.Owner.ImageEmbeddings = _engine.Vision!.EncodePrompt(images, ct);
            return true;
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            LogImageEncodeFailed(ex, s.Owner.Request.Id);
            _running.Remove(s);
            End(s, ex);
            return false;
        }
    }

    /// <summary>Picks this step's sequences and token counts, preempting and admitting as blocks allow.</summary>
    private List<(Sequence Sequence, int Tokens)> Schedule()
    {
        var plan = new List<(Sequence Sequence, int Tokens)>(_running.Count + 4);
        var planned = new HashSet<Sequence>();
        int budget = _options.MaxBatchTokens;
        // Decodes first (one token each, always inside the budget: MaxBatchTokens >= MaxRunningSequences), then the
        // sequences with more than one token to compute, in admission order.
        foreach (bool decodes in (ReadOnlySpan<bool>)[true, false])
        {
            foreach (var s in _running.ToArray())
            {
                if (budget <= 0 || !_running.Contains(s) || planned.Contains(s) || (s.Remaining == 1) != decodes)
                {
                    continue;
                }
                int n = Math.Min(Math.Min(ChunkLimit(s), s.Remaining), budget);
                if (!PrepareOrPreempt(s, n, planned, preemptSelf: decodes))
                {
                    continue;
                }
                plan.Add((s, n));
                planned.Add(s);
                budget -= n;
            }
        }

        // Admission: preempted sequences first, then new requests, oldest first; a sequence that does not get its blocks
        // waits at the head (FIFO: small requests do not starve a large one), and admission never preempts.
        while (budget > 0 && NextWaiting() is { } next)
        {
            if (next.IsCancelled)
            {
                TakeWaiting(next);
                End(next, null);
                continue;
            }
            int width = next.PendingFork > 1 ? next.PendingFork : 1;
            if (_running.Count + width > _options.MaxRunningSequences)
            {
                break;
            }
            next.Cache ??= new PagedKvCache(_pool, next.Owner.Request.Content);
            if (next.Computed == 0 && next.Owner.Capture is null)
            {
                // The last token must be computed (its logits give the next token), so at most TokenCount - 1 are reused.
                next.Computed = next.Cache.AttachPrefix(next.TokenSpan, next.TokenCount - 1);
            }
            int n = Math.Min(Math.Min(ChunkLimit(next), next.Remaining), budget);
            // Leave one block per layer free for the running decodes' next step, so admission does not preempt at once.
            if (!next.Cache.TryPrepare(n) || (_running.Count > 0 && _pool.AvailableBlocks < _engine.Config.NumLayers))
            {
                next.Cache.Dispose();
                next.Cache = null;
                next.Computed = 0;
                break;
            }
            TakeWaiting(next);
            Interlocked.Add(ref _prefixQueried, next.TokenCount);
            Interlocked.Add(ref _prefixHits, next.Computed);
            _running.Add(next);
            plan.Add((next, n));
            planned.Add(next);
            budget -= n;
            LogAdmitted(next.Owner.Request.Id, next.Choice, next.Computed, next.TokenCount, _pool.UsedBlocks, _pool.TotalBlocks);
        }

        if (plan.Count == 0 && _running.Count > 0)
        {
            // Nothing could take its blocks (shared copy-on-write blocks in the way): free the newest sequence's and retry
            // next iteration; a sequence alone always fits (checked at submission).
            Preempt(_running[^1]);
        }
        return plan;
    }

    private int ChunkLimit(Sequence s)
    {
        int chunk = _options.PrefillChunkTokens;
        if (s.Owner.Capture is not null)
        {
            // Every prompt row's logits come back: bound them too (Maverick's 202,048-entry vocabulary is 0.8 MB per row).
            chunk = Math.Min(chunk, (int)Math.Max(1, (64L << 20) / (4L * _engine.Config.VocabSize)));
        }
        return chunk;
    }

    /// <summary>
    /// Takes the blocks <paramref name="n"/> tokens of <paramref name="s"/> need, preempting the newest unplanned running
    /// sequences admitted after it while the pool is short (older sequences have priority, as in vLLM). When none is
    /// left: a decode (<paramref name="preemptSelf"/>) preempts itself, a prefill waits for a later step keeping its
    /// blocks. False when <paramref name="s"/> does not run this step.
    /// </summary>
    private bool PrepareOrPreempt(Sequence s, int n, HashSet<Sequence> planned, bool preemptSelf)
    {
        while (!s.Cache!.TryPrepare(n))
        {
            Sequence? victim = null;
            int self = _running.IndexOf(s);
            for (int i = _running.Count - 1; i > self; i--)
            {
                if (!planned.Contains(_running[i]))
                {
                    victim = _running[i];
                    break;
                }
            }
            if (victim is null)
            {
                if (preemptSelf)
                {
                    Preempt(s);
                }
                return false;
            }
            Preempt(victim);
        }
        return true;
    }

    private void Preempt(Sequence s)
    {
        _running.Remove(s);
        s.Cache?.Dispose();
        s.Cache = null;
        s.Computed = 0;
        // Resumed before everything queued after it; the newest is preempted first, so pushing to the front keeps age order.
        _resume.AddFirst(s);
        Interlocked.Increment(ref _preemptions);
        LogPreempted(s.Owner.Request.Id, s.Choice, s.TokenCount, _pool.TotalBlocks);
    }

    private Sequence? NextWaiting()
    {
        if (_resume.First is { } resumed)
        {
            return resumed.Value;
        }
        return _pending.Reader.TryPeek(out var next) ? next : null;
    }

    private void TakeWaiting(Sequence s)
    {
        if (_resume.First?.Value == s)
        {
            _resume.RemoveFirst();
        }
        else
        {
            _pending.Reader.TryRead(out _);
        }
    }

    /// <summary>Splits the prompt's sequence into its n choices, sharing its blocks, each sampling from the same logits.</summary>
    private void Fork(Sequence parent, ReadOnlySpan<float> logits, long now)
    {
        var request = parent.Owner.Request;
        int at = _running.IndexOf(parent) + 1;
        var children = new List<Sequence>(parent.PendingFork - 1);
        for (int choice = 1; choice < parent.PendingFork; choice++)
        {
            var child = new Sequence(parent.Owner, choice, NewSampler(request, choice), request.PromptIds)
            {
                Cache = parent.Cache!.Fork(),
                Computed = parent.Computed,
            };
            children.Add(child);
        }
        parent.Owner.LiveChoices = parent.PendingFork;
        parent.PendingFork = 0;
        _running.InsertRange(at, children);
        Emit(parent, logits, now);
        foreach (var child in children)
        {
            Emit(child, logits, now);
        }
    }

    private void Emit(Sequence s, ReadOnlySpan<float> logits, long now)
    {
        var request = s.Owner.Request;
        var sampled = s.Sampler.Sample(logits, request.Logprobs);
        int token = sampled.TokenId;
        s.Generated++;
        s.Append(token);
        Interlocked.Increment(ref _tokens);
        if (s.Generated == 1)
        {
            Interlocked.Add(ref _ttftTicks, now - s.Owner.SubmittedTicks);
            Interlocked.Increment(ref _firstTokens);
        }
        else
        {
            Interlocked.Add(ref _interTokenTicks, now - s.LastTokenTicks);
            Interlocked.Increment(ref _laterTokens);
        }
        s.LastTokenTicks = now;
        FinishReason? finish = null;
        if ((!request.IgnoreEos && _eos.Contains(token)) || (request.StopTokenIds?.Contains(token) ?? false))
        {
            finish = FinishReason.Stop;
        }
        else if (s.Generated >= request.MaxTokens)
        {
            finish = FinishReason.Length;
        }
        else if (s.TokenCount >= _engine.Config.MaxPositionEmbeddings)
        {
            finish = FinishReason.ContextLength;
        }
        s.Owner.Output.Writer.TryWrite(new GeneratedToken(token, s.Generated - 1, finish, s.Choice, sampled.Logprobs));
        if (finish is not null)
        {
            s.Finished = true;
            Interlocked.Increment(ref _finished);
            LogFinished(request.Id, s.Choice, s.Generated);
        }
    }

    /// <summary>Releases a sequence that left the batch and completes its request's stream when it was the last choice.</summary>
    private void End(Sequence s, Exception? error)
    {
        s.Cache?.Dispose();
        s.Cache = null;
        var owner = s.Owner;
        if (error is not null)
        {
            owner.Output.Writer.TryComplete(error);
            return;
        }
        if (owner.IsCancelled)
        {
            owner.Output.Writer.TryComplete(new OperationCanceledException());
            return;
        }
        // An unforked sequence stands for all its choices; a forked one for itself.
        owner.LiveChoices -= s.PendingFork > 1 ? s.PendingFork : 1;
        if (owner.LiveChoices <= 0)
        {
            owner.Output.Writer.TryComplete();
        }
    }

    private void FailAll(Exception ex)
    {
        foreach (var s in _running)
        {
            End(s, ex);
        }
        _running.Clear();
        foreach (var s in _resume)
        {
            End(s, ex);
        }
        _resume.Clear();
        PublishCounts();
    }

    /// <summary>Stops the loop; running and queued requests fail with <see cref="OperationCanceledException"/>.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_stop.IsCancellationRequested)
        {
            return;
        }
        _stop.Cancel();
        _pending.Writer.TryComplete();
        try
        {
            await _loop.ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
        FailAll(new OperationCanceledException("the scheduler stopped"));
        while (_pending.Reader.TryRead(out var s))
        {
            s.Owner.Output.Writer.TryComplete(new OperationCanceledException("the scheduler stopped"));
        }
        SetIdle(true);
        _stop.Dispose();
        // Every sequence released its blocks above; the store's memory (device memory on CUDA) goes back now.
        _pool.Dispose();
    }

    /// <summary>One request: its output stream (all choices), cancellation and timing.</summary>
    private sealed class RequestState(GenerationRequest request, PromptCapture? capture, CancellationToken cancellationToken)
    {
        private volatile bool _cancelled;

        public GenerationRequest Request { get; } = request;
        public PromptCapture? Capture { get; } = capture;
        // The projected image rows of the prompt (issue #13), made when the prompt is first computed.
        public Model.Llama4.Vision.Llama4ImageEmbeddings? ImageEmbeddings { get; set; }
        public Channel<GeneratedToken> Output { get; } = Channel.CreateUnbounded<GeneratedToken>(new UnboundedChannelOptions { SingleWriter = true, SingleReader = true });
        // Choices not yet ended (set at the fork; an unforked sequence stands for all of them).
        public int LiveChoices { get; set; } = request.N;
        public long SubmittedTicks { get; } = Stopwatch.GetTimestamp();
        // The request's span when it was submitted (issue #6 tracing); default when not traced.
        public ActivityContext TraceContext { get; } = Activity.Current?.Context ?? default;
        public bool IsCancelled => _cancelled || cancellationToken.IsCancellationRequested;

        public void Cancel() => _cancelled = true;
    }

    /// <summary>
    /// One choice of a request: its tokens (prompt, then generated), how many of them are in its KV cache, its sampler.
    /// After a preemption <see cref="Computed"/> is 0 and the whole token list is computed again (largely from the prefix
    /// cache), which reproduces the cache exactly; the sampler is kept, so the next token is the one it would have been.
    /// </summary>
    private sealed class Sequence
    {
        private int[] _tokens;

        public Sequence(RequestState owner, int choice, Sampler sampler, int[] prompt)
        {
            Owner = owner;
            Choice = choice;
            Sampler = sampler;
            _tokens = new int[prompt.Length + Math.Min(owner.Request.MaxTokens, 64)];
            prompt.CopyTo(_tokens, 0);
            TokenCount = prompt.Length;
        }

        public RequestState Owner { get; }
        public int Choice { get; }
        public Sampler Sampler { get; }
        public PagedKvCache? Cache { get; set; }
        public int TokenCount { get; private set; }
        public int Computed { get; set; }
        public int Remaining => TokenCount - Computed;
        public int Generated { get; set; }
        // N while the prompt's sequence has not forked into its choices; 0 after.
        public int PendingFork { get; set; }
        public bool Finished { get; set; }
        public long LastTokenTicks { get; set; }
        public bool IsCancelled => Owner.IsCancelled || (PendingFork == 0 && (Owner.Request.ChoiceCancellation?.IsCancelled(Choice) ?? false));
        public ReadOnlySpan<int> TokenSpan => _tokens.AsSpan(0, TokenCount);

        public ReadOnlyMemory<int> TokenMemory(int start, int count) => _tokens.AsMemory(start, count);

        public void Append(int token)
        {
            if (TokenCount == _tokens.Length)
            {
                Array.Resize(ref _tokens, _tokens.Length * 2);
            }
            _tokens[TokenCount++] = token;
        }
    }

    [LoggerMessage(EventId = 1001, Level = LogLevel.Debug, Message = "Request {RequestId} queued: {PromptTokens} prompt tokens, max {MaxTokens} new")]
    private partial void LogQueued(string requestId, int promptTokens, int maxTokens);

    [LoggerMessage(EventId = 1002, Level = LogLevel.Information,
        Message = "Request {RequestId} choice {Choice} admitted: {CachedTokens} of {Tokens} tokens from the prefix cache ({Used}/{Total} KV blocks held)")]
    private partial void LogAdmitted(string requestId, int choice, int cachedTokens, int tokens, int used, int total);

    [LoggerMessage(EventId = 1003, Level = LogLevel.Information, Message = "Request {RequestId} choice {Choice} finished after {Tokens} tokens")]
    private partial void LogFinished(string requestId, int choice, int tokens);

    [LoggerMessage(EventId = 1004, Level = LogLevel.Error, Message = "Forward step failed; the sequences in it were failed")]
    private partial void LogStepFailed(Exception exception);

    [LoggerMessage(EventId = 1005, Level = LogLevel.Information,
        Message = "Request {RequestId} choice {Choice} preempted: KV blocks ran out ({Total} in the budget); its {Tokens} tokens will be recomputed")]
    private partial void LogPreempted(string requestId, int choice, int tokens, int total);

    [LoggerMessage(EventId = 1006, Level = LogLevel.Error, Message = "Request {RequestId}: encoding its images failed; the request was failed")]
    private partial void LogImageEncodeFailed(Exception exception, string requestId);
}
