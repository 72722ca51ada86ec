namespace Distributed.Coordinator.Serving;

/// <summary>Why a sequence stopped.</summary>
public enum FinishReason
{
    /// <summary>An end-of-sequence or requested stop token was generated.</summary>
    Stop = 0,
    /// <summary><see cref="GenerationRequest.MaxTokens"/> was reached.</summary>
    Length = 1,
    /// <summary>The context limit (<c>max_position_embeddings</c>) was reached.</summary>
    ContextLength = 2,
}

/// <summary>
/// Sampling settings (OpenAI and vLLM semantics). The logits of a step are processed in this order, as vLLM does:
/// <see cref="LogitBias"/> added; while fewer than <see cref="MinTokens"/> tokens were generated, the stop token ids set
/// to −∞; <see cref="RepetitionPenalty"/> on every token of the prompt or the output (a positive logit divided by it,
/// a negative one multiplied); <see cref="FrequencyPenalty"/> × (times the token was generated) and
/// <see cref="PresencePenalty"/> × (1 if it was generated) subtracted; then divided by the temperature, restricted by
/// top-k and top-p, and sampled. Temperature 0 means greedy: argmax of the processed logits, ties to the lowest id.
/// </summary>
/// <param name="Temperature">≥ 0; 0 = greedy.</param>
/// <param name="TopP">In (0, 1]; nucleus sampling over the tokens whose cumulative probability reaches it.</param>
/// <param name="TopK">0 = off, else keep the k most likely tokens.</param>
/// <param name="Seed">Makes sampling reproducible per request when set.</param>
public sealed record SamplingParams(float Temperature = 1.0f, float TopP = 1.0f, int TopK = 0, ulong? Seed = null)
{
    /// <summary>Greedy decoding.</summary>
    public static SamplingParams Greedy { get; } = new(0f, 1f, 0, null);

    /// <summary>In [−2, 2]: subtracted once from the logit of every token already generated. Default: 0.</summary>
    public float PresencePenalty { get; init; }

    /// <summary>In [−2, 2]: subtracted from a token's logit once per time it was generated. Default: 0.</summary>
    public float FrequencyPenalty { get; init; }

    /// <summary>In (0, 2]: tokens of the prompt or the output get logit / penalty when positive, logit × penalty when not. Default: 1 (off).</summary>
    public float RepetitionPenalty { get; init; } = 1f;

    /// <summary>Token id → value in [−100, 100] added to its logit. Default: none.</summary>
    public IReadOnlyDictionary<int, float>? LogitBias { get; init; }

    /// <summary>Tokens generated before a stop token id (EOS or <see cref="GenerationRequest.StopTokenIds"/>) may come. Default: 0.</summary>
    public int MinTokens { get; init; }

    /// <summary>True when some logits processing beyond temperature, top-k and top-p is on.</summary>
    public bool ProcessesLogits => PresencePenalty != 0 || FrequencyPenalty != 0 || RepetitionPenalty != 1f || LogitBias is { Count: > 0 } || MinTokens > 0;
}

/// <summary>One generation request as the scheduler sees it (token ids; text handling is the API layer's).</summary>
/// <param name="Id">Request id for logs and metrics.</param>
/// <param name="PromptIds">Prompt token ids (at least one, each inside the vocabulary).</param>
/// <param name="MaxTokens">Most tokens to generate per choice (≥ 1).</param>
/// <param name="Sampling">Sampling settings.</param>
/// <param name="StopTokenIds">Token ids that end the sequence (in addition to the model's EOS ids unless
/// <see cref="IgnoreEos"/>); the stop token is reported and counted.</param>
public sealed record GenerationRequest(string Id, int[] PromptIds, int MaxTokens, SamplingParams Sampling, IReadOnlyCollection<int>? StopTokenIds = null)
{
    /// <summary>
    /// Choices generated from the prompt (≥ 1). They share the prompt's KV blocks (copy-on-write); choice i samples with
    /// seed <c>Seed + i</c> when a seed is set, so it equals a separate request with that seed. Default: 1.
    /// </summary>
    public int N { get; init; } = 1;

    /// <summary>
    /// The prompt's images (already expanded into <see cref="PromptIds"/>): the scheduler encodes them once, when the
    /// sequence's prefill starts, and places the projected rows at their <c>&lt;|patch|&gt;</c> positions in whichever
    /// prefill chunk holds them. Null for a text-only prompt. Their content hashes key the prefix cache (<see cref="Content"/>).
    /// </summary>
    public Model.Llama4.Vision.Llama4ImagePrompt? Images { get; init; }

    /// <summary>Do not stop at the model's EOS token ids (vLLM <c>ignore_eos</c>). Default: false.</summary>
    public bool IgnoreEos { get; init; }

    /// <summary>
    /// Null: no log-probabilities. k ≥ 0: every generated token carries its log-probability and the k most likely
    /// tokens', under the distribution it was sampled from (<see cref="TokenLogprobs"/>). Default: null.
    /// </summary>
    public int? Logprobs { get; init; }

    /// <summary>Prompt positions whose embeddings come from content (images, issue #13), for the prefix cache's keys.</summary>
    public IReadOnlyList<KvCache.KvContentSpan>? Content { get; init; }

    /// <summary>Lets the consumer end single choices early (a stop string matched in one of them). Null: none.</summary>
    public ChoiceCancellation? ChoiceCancellation { get; init; }
}

/// <summary>
/// Ends single choices of a running request: the scheduler drops a cancelled choice at its next step boundary, sends no
/// more tokens for it and frees its blocks; the other choices go on. Thread-safe.
/// </summary>
public sealed class ChoiceCancellation
{
    private readonly int[] _cancelled;

    /// <summary>Creates the flags for <paramref name="choices"/> choices.</summary>
    public ChoiceCancellation(int choices)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(choices);
        _cancelled = new int[choices];
    }

    /// <summary>Ends choice <paramref name="choice"/>.</summary>
    public void Cancel(int choice) => Volatile.Write(ref _cancelled[choice], 1);

    /// <summary>Whether <paramref name="choice"/> was cancelled (false for an index out of range).</summary>
    public bool IsCancelled(int choice) => (uint)choice < (uint)_cancelled.Length && Volatile.Read(ref _cancelled[choice]) == 1;
}

/// <summary>
/// Log-probabilities of one generated token under the distribution it was sampled from: log-softmax of the processed
/// logits (bias, penalties) divided by the temperature (1 for greedy), renormalized over what top-k and top-p kept
/// (tokens they removed have −∞).
/// </summary>
/// <param name="Logprob">The generated token's.</param>
/// <param name="TopIds">The most likely token ids, most likely first (ties: lower id first).</param>
/// <param name="TopLogprobs">Their log-probabilities.</param>
public sealed record TokenLogprobs(float Logprob, int[] TopIds, float[] TopLogprobs);

/// <summary>One generated token; the last one of a choice carries its <see cref="Finish"/> reason.</summary>
/// <param name="TokenId">The token.</param>
/// <param name="Index">0-based index among the choice's generated tokens.</param>
/// <param name="Finish">Set on the last token of the choice.</param>
/// <param name="Choice">Which of the request's <see cref="GenerationRequest.N"/> choices it belongs to.</param>
/// <param name="Logprobs">With <see cref="GenerationRequest.Logprobs"/>: its log-probabilities.</param>
public readonly record struct GeneratedToken(int TokenId, int Index, FinishReason? Finish, int Choice = 0, TokenLogprobs? Logprobs = null);

/// <summary>The request queue is full; retry after <see cref="RetryAfter"/> (HTTP 429/503 + Retry-After).</summary>
public sealed class QueueFullException(string message, TimeSpan retryAfter) : Exception(message)
{
    /// <summary>Suggested wait before retrying.</summary>
    public TimeSpan RetryAfter { get; } = retryAfter;
}

/// <summary>The request can never run: prompt + max tokens exceeds the context limit or the whole KV budget (HTTP 400).</summary>
public sealed class RequestTooLargeException(string message) : Exception(message);

/// <summary>
/// Continuous-batching generation: sequences join and leave the running batch every step; long prompts are prefilled
/// in chunks so running decodes keep going; one MoE dispatch per layer carries every running sequence's tokens.
/// </summary>
public interface IGenerationScheduler
{
    /// <summary>Model vocabulary size.</summary>
    int VocabSize { get; }

    /// <summary>Context limit in tokens (prompt + generated).</summary>
    int MaxContextTokens { get; }

    /// <summary>
    /// Queues a request and streams the tokens of all its choices as they are generated (interleaved; each choice's in
    /// order). The stream ends after every choice's last token. Cancelling <paramref name="cancellationToken"/> (e.g. the
    /// client disconnected) removes the sequences from the batch and frees their KV blocks.
    /// </summary>
    /// <exception cref="ArgumentException">Invalid request fields (empty prompt, token outside the vocabulary, MaxTokens &lt; 1, N &lt; 1, bad sampling values).</exception>
    /// <exception cref="RequestTooLargeException">Prompt + MaxTokens exceeds the context limit or the KV memory budget.</exception>
    /// <exception cref="QueueFullException">The admission queue is full.</exception>
    IAsyncEnumerable<GeneratedToken> GenerateAsync(GenerationRequest request, CancellationToken cancellationToken);
}
