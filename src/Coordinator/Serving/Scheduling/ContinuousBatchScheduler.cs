using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Channels;
using Distributed.Coordinator.Model.Llama4;
using Microsoft.Extensions.Logging.Abstractions;

namespace Distributed.Coordinator.Serving.Scheduling;

/// <summary>
/// Counters of the scheduler's state (cheap snapshot for metrics and admin views). The latency sums are since start, as
/// the scheduler sees them (submission to first token, token to token), so a reader computes interval means from two
/// snapshots: (sum₂ − sum₁) / (count₂ − count₁).
/// </summary>
/// <param name="Queued">Requests waiting for admission.</param>
/// <param name="Running">Sequences in the running batch.</param>
/// <param name="KvBlocksUsed">KV blocks holding keys and values.</param>
/// <param name="KvBlocksReserved">KV blocks reserved by admitted sequences (worst case).</param>
/// <param name="KvBlocksTotal">KV blocks in the budget.</param>
/// <param name="Steps">Forward steps run.</param>
/// <param name="TokensGenerated">Tokens generated.</param>
/// <param name="RequestsFinished">Requests that ended with a finish reason (stop, length, context length).</param>
/// <param name="FirstTokens">Requests that got their first token.</param>
/// <param name="TimeToFirstTokenSeconds">Sum over <paramref name="FirstTokens"/> of submission → first token.</param>
/// <param name="LaterTokens">Tokens after a request's first.</param>
/// <param name="InterTokenSeconds">Sum over <paramref name="LaterTokens"/> of the time since the request's previous token.</param>
public readonly record struct SchedulerStats(int Queued, int Running, int KvBlocksUsed, int KvBlocksReserved, int KvBlocksTotal, long Steps, long TokensGenerated,
    long RequestsFinished = 0, long FirstTokens = 0, double TimeToFirstTokenSeconds = 0, long LaterTokens = 0, double InterTokenSeconds = 0);

/// <summary>
/// Iteration-level (continuous) batching over one <see cref="Llama4Engine"/>: every step, finished and cancelled
/// sequences leave, queued ones join while their worst-case KV blocks can be reserved, running decodes take one token
/// each, and prompts still prefilling take chunks of at most <see cref="SchedulerOptions.PrefillChunkTokens"/> from the
/// remaining token budget — then one forward (one MoE dispatch per layer for everyone). Because the kernels are batch
/// invariant, a sequence's tokens do not depend on what else shares the batch.
/// </summary>
public sealed partial class ContinuousBatchScheduler : IGenerationScheduler, IAsyncDisposable
{
    private readonly Llama4Engine _engine;
    private readonly SchedulerOptions _options;
    private readonly ILogger _logger;
    private readonly KvBlockPool _pool;
    private readonly Channel<Sequence> _pending;
    private readonly List<Sequence> _running = [];
    private readonly HashSet<int> _eos;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _loop;
    private long _steps;
    private long _tokens;
    private long _finished;
    private long _firstTokens;
    private long _ttftTicks;
    private long _laterTokens;
    private long _interTokenTicks;

    /// <summary>Creates the scheduler and starts its loop.</summary>
    /// <exception cref="ArgumentException">Invalid options.</exception>
    public ContinuousBatchScheduler(Llama4Engine engine, SchedulerOptions options, ILogger<ContinuousBatchScheduler>? logger = null)
    {
        _engine = engine ?? throw new ArgumentNullException(nameof(engine));
        _options = options ?? throw new ArgumentNullException(nameof(options));
        options.Validate();
        _logger = (ILogger?)logger ?? NullLogger.Instance;
        _pool = new KvBlockPool(engine.Config, options.KvBlockSize, options.KvMemoryBytes, engine.Backend, options.BackendKvStore, options.KvDType);
        _pending = Channel.CreateBounded<Sequence>(new BoundedChannelOptions(options.MaxQueuedRequests)
        {
            SingleReader = true,
            FullMode = BoundedChannelFullMode.Wait,
        });
        _eos = [.. engine.Config.EosTokenIds];
        _loop = Task.Factory.StartNew(RunAsync, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default).Unwrap();
    }

    /// <inheritdoc />
    public int VocabSize => _engine.Config.VocabSize;

    /// <inheritdoc />
    public int MaxContextTokens => _engine.Config.MaxPositionEmbeddings;

    /// <summary>The KV pool (for reporting).</summary>
    public KvBlockPool KvPool => _pool;

    /// <summary>A snapshot of the scheduler's counters.</summary>
    public SchedulerStats Stats
    {
        get
        {
            int running;
            lock (_running)
            {
                running = _running.Count;
            }
            return new SchedulerStats(_pending.Reader.Count, running, _pool.UsedBlocks, _pool.ReservedBlocks, _pool.TotalBlocks,
                Interlocked.Read(ref _steps), Interlocked.Read(ref _tokens), Interlocked.Read(ref _finished),
                Interlocked.Read(ref _firstTokens), Interlocked.Read(ref _ttftTicks) / (double)Stopwatch.Frequency,
                Interlocked.Read(ref _laterTokens), Interlocked.Read(ref _interTokenTicks) / (double)Stopwatch.Frequency);
        }
    }

    /// <inheritdoc />
    public async IAsyncEnumerable<GeneratedToken> GenerateAsync(GenerationRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        var seq = Admit(request, cancellationToken);
        bool finished = false;
        try
        {
            await foreach (var token in seq.Output.Reader.ReadAllAsync(cancellationToken).ConfigureAwait(false))
            {
                if (token.Finish is not null)
                {
                    finished = true;
                }
                yield return token;
            }
            finished = true;
        }
        finally
        {
            if (!finished)
            {
                // The consumer went away (client disconnect, cancellation): the loop drops the sequence at the next
                // step boundary and frees its blocks.
                seq.Cancel();
            }
        }
    }

    private Sequence Admit(GenerationRequest request, CancellationToken cancellationToken)
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
        for (int i = 0; i < request.PromptIds.Length; i++)
        {
            if ((uint)request.PromptIds[i] >= (uint)c.VocabSize)
            {
                throw new ArgumentException($"prompt token {i} = {request.PromptIds[i]} is outside the vocabulary [0, {c.VocabSize})");
            }
        }
        Sampler.Validate(request.Sampling);
        long total = (long)request.PromptIds.Length + request.MaxTokens;
        if (total > c.MaxPositionEmbeddings)
        {
            throw new RequestTooLargeException(
                $"prompt ({request.PromptIds.Length} tokens) + max_tokens ({request.MaxTokens}) = {total} exceeds the context limit of {c.MaxPositionEmbeddings} tokens");
        }
        int blocks = _pool.BlocksNeeded((int)total, _options.PrefillChunkTokens);
        if (blocks > _pool.TotalBlocks)
        {
            throw new RequestTooLargeException(
                $"prompt + max_tokens = {total} tokens needs {blocks} KV blocks but the whole KV budget holds {_pool.TotalBlocks}");
        }
        var seq = new Sequence(request, blocks, new Sampler(request.Sampling), cancellationToken);
        if (_stop.IsCancellationRequested)
        {
            throw new ObjectDisposedException(nameof(ContinuousBatchScheduler));
        }
        if (!_pending.Writer.TryWrite(seq))
        {
            throw new QueueFullException($"the request queue is full ({_options.MaxQueuedRequests} waiting)", _options.RetryAfter);
        }
        LogQueued(request.Id, request.PromptIds.Length, request.MaxTokens);
        return seq;
    }

    private async Task RunAsync()
    {
        var ct = _stop.Token;
        while (!ct.IsCancellationRequested)
        {
            try
            {
                int running;
                lock (_running)
                {
                    running = _running.Count;
                }
                if (running == 0 && !await _pending.Reader.WaitToReadAsync(ct).ConfigureAwait(false))
                {
                    return;
                }
                DropCancelled();
                AdmitQueued();
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

    private void DropCancelled()
    {
        lock (_running)
        {
            for (int i = _running.Count - 1; i >= 0; i--)
            {
                if (_running[i].IsCancelled)
                {
                    Release(_running[i], null);
                    _running.RemoveAt(i);
                }
            }
        }
    }

    private void AdmitQueued()
    {
        lock (_running)
        {
            while (_running.Count < _options.MaxRunningSequences && _pending.Reader.TryPeek(out var next))
            {
                if (next.IsCancelled)
                {
                    _pending.Reader.TryRead(out _);
                    next.Output.Writer.TryComplete(new OperationCanceledException());
                    continue;
                }
                if (!_pool.TryReserve(next.ReservedBlocks))
                {
                    break; // FIFO: wait for blocks rather than let small requests starve a large one
                }
                _pending.Reader.TryRead(out _);
                next.Cache = new PagedKvCache(_pool, _engine.Config);
                _running.Add(next);
                LogAdmitted(next.Request.Id, next.ReservedBlocks, _pool.ReservedBlocks, _pool.TotalBlocks);
            }
        }
    }

    private async Task StepAsync(CancellationToken ct)
    {
        Sequence[] batch;
        lock (_running)
        {
            batch = [.. _running];
        }
        if (batch.Length == 0)
        {
            return;
        }
        var items = new List<SequenceStep>(batch.Length);
        var members = new List<Sequence>(batch.Length);
        int budget = _options.MaxBatchTokens;
        foreach (var s in batch.Where(s => s.PrefillDone == s.Request.PromptIds.Length))
        {
            items.Add(new SequenceStep(s.Cache!, new[] { s.LastToken }, LogitsRequest.Last));
            members.Add(s);
            budget--;
        }
        foreach (var s in batch.Where(s => s.PrefillDone < s.Request.PromptIds.Length))
        {
            if (budget <= 0)
            {
                break;
            }
            int n = Math.Min(Math.Min(_options.PrefillChunkTokens, budget), s.Request.PromptIds.Length - s.PrefillDone);
            bool last = s.PrefillDone + n == s.Request.PromptIds.Length;
            items.Add(new SequenceStep(s.Cache!, s.Request.PromptIds.AsMemory(s.PrefillDone, n), last ? LogitsRequest.Last : LogitsRequest.None));
            members.Add(s);
            s.PendingPrefill = n;
            budget -= n;
        }

        StepResult result;
        // Issue #6: one span per step, linked to the span of every request in the batch (a step serves many requests,
        // so it cannot be any single request's child); the dispatch spans of the step are its children.
        using var stepSpan = Diagnostics.CoordinatorInstruments.Tracing.HasListeners()
            ? Diagnostics.CoordinatorInstruments.Tracing.StartActivity("moe.step", ActivityKind.Internal, default(ActivityContext),
                links: members.Where(m => m.TraceContext != default).Select(m => new ActivityLink(m.TraceContext)))
            : null;
        stepSpan?.SetTag("moe.sequences", members.Count);
        try
        {
            result = await _engine.Model.ForwardAsync(items, captureRouting: false, ct).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            LogStepFailed(ex);
            lock (_running)
            {
                foreach (var s in members)
                {
                    Release(s, ex);
                    _running.Remove(s);
                }
            }
            return;
        }
        Interlocked.Increment(ref _steps);

        int vocab = result.Vocab, row = 0;
        long now = Stopwatch.GetTimestamp();
        var finished = new List<Sequence>();
        for (int i = 0; i < members.Count; i++)
        {
            var s = members[i];
            if (s.PendingPrefill > 0)
            {
                s.PrefillDone += s.PendingPrefill;
                s.PendingPrefill = 0;
            }
            if (result.LogitRowsPerItem[i] == 0)
            {
                continue;
            }
            int token = s.Sampler.Next(result.Logits.AsSpan(row * vocab, vocab));
            row += result.LogitRowsPerItem[i];
            s.Generated++;
            s.LastToken = token;
            Interlocked.Increment(ref _tokens);
            if (s.Generated == 1)
            {
                Interlocked.Add(ref _ttftTicks, now - s.SubmittedTicks);
                Interlocked.Increment(ref _firstTokens);
            }
            else
            {
                Interlocked.Add(ref _interTokenTicks, now - s.LastTokenTicks);
                Interlocked.Increment(ref _laterTokens);
            }
            s.LastTokenTicks = now;
            FinishReason? finish = null;
            if (_eos.Contains(token) || (s.Request.StopTokenIds?.Contains(token) ?? false))
            {
                finish = FinishReason.Stop;
            }
            else if (s.Generated >= s.Request.MaxTokens)
            {
                finish = FinishReason.Length;
            }
            else if (s.Cache!.NextPosition + 1 > _engine.Config.MaxPositionEmbeddings)
            {
                finish = FinishReason.ContextLength;
            }
            s.Output.Writer.TryWrite(new GeneratedToken(token, s.Generated - 1, finish));
            if (finish is not null)
            {
                finished.Add(s);
            }
        }
        if (finished.Count > 0)
        {
            lock (_running)
            {
                foreach (var s in finished)
                {
                    Release(s, null);
                    _running.Remove(s);
                    Interlocked.Increment(ref _finished);
                    LogFinished(s.Request.Id, s.Generated);
                }
            }
        }
    }

    private void Release(Sequence s, Exception? error)
    {
        s.Cache?.Dispose();
        s.Cache = null;
        _pool.Unreserve(s.ReservedBlocks);
        if (error is not null)
        {
            s.Output.Writer.TryComplete(error);
        }
        else if (s.IsCancelled)
        {
            s.Output.Writer.TryComplete(new OperationCanceledException());
        }
        else
        {
            s.Output.Writer.TryComplete();
        }
    }

    private void FailAll(Exception ex)
    {
        lock (_running)
        {
            foreach (var s in _running)
            {
                Release(s, ex);
            }
            _running.Clear();
        }
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
            s.Output.Writer.TryComplete(new OperationCanceledException("the scheduler stopped"));
        }
        _stop.Dispose();
        // Every sequence released its blocks above; the store's memory (device memory on CUDA) goes back now.
        _pool.Dispose();
    }

    private sealed class Sequence(GenerationRequest request, int reservedBlocks, Sampler sampler, CancellationToken cancellationToken)
    {
        private volatile bool _cancelled;

        public GenerationRequest Request { get; } = request;
        public int ReservedBlocks { get; } = reservedBlocks;
        public Sampler Sampler { get; } = sampler;
        public Channel<GeneratedToken> Output { get; } = Channel.CreateUnbounded<GeneratedToken>(new UnboundedChannelOptions { SingleWriter = true, SingleReader = true });
        public PagedKvCache? Cache { get; set; }
        public int PrefillDone { get; set; }
        public int PendingPrefill { get; set; }
        public int Generated { get; set; }
        public int LastToken { get; set; }
        public long SubmittedTicks { get; } = Stopwatch.GetTimestamp();
        public long LastTokenTicks { get; set; }
        // The request's span when it was submitted (issue #6 tracing); default when not traced.
        public ActivityContext TraceContext { get; } = Activity.Current?.Context ?? default;
        public bool IsCancelled => _cancelled || cancellationToken.IsCancellationRequested;

        public void Cancel() => _cancelled = true;
    }

    [LoggerMessage(EventId = 1001, Level = LogLevel.Debug, Message = "Request {RequestId} queued: {PromptTokens} prompt tokens, max {MaxTokens} new")]
    private partial void LogQueued(string requestId, int promptTokens, int maxTokens);

    [LoggerMessage(EventId = 1002, Level = LogLevel.Information, Message = "Request {RequestId} admitted: {Blocks} KV blocks reserved ({Reserved}/{Total} in use)")]
    private partial void LogAdmitted(string requestId, int blocks, int reserved, int total);

    [LoggerMessage(EventId = 1003, Level = LogLevel.Information, Message = "Request {RequestId} finished after {Tokens} tokens")]
    private partial void LogFinished(string requestId, int tokens);

    [LoggerMessage(EventId = 1004, Level = LogLevel.Error, Message = "Forward step failed; the sequences in it were failed")]
    private partial void LogStepFailed(Exception exception);
}
