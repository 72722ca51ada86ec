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

/// <summary>Sampling settings (OpenAI semantics). Temperature 0 means greedy (argmax, ties to the lowest id).</summary>
/// <param name="Temperature">≥ 0; 0 = greedy.</param>
/// <param name="TopP">In (0, 1]; nucleus sampling over the tokens whose cumulative probability reaches it.</param>
/// <param name="TopK">0 = off, else keep the k most likely tokens.</param>
/// <param name="Seed">Makes sampling reproducible per request when set.</param>
public sealed record SamplingParams(float Temperature = 1.0f, float TopP = 1.0f, int TopK = 0, ulong? Seed = null)
{
    /// <summary>Greedy decoding.</summary>
    public static SamplingParams Greedy { get; } = new(0f, 1f, 0, null);
}

/// <summary>One generation request as the scheduler sees it (token ids; text handling is the API layer's).</summary>
/// <param name="Id">Request id for logs and metrics.</param>
/// <param name="PromptIds">Prompt token ids (at least one, each inside the vocabulary).</param>
/// <param name="MaxTokens">Most tokens to generate (≥ 1).</param>
/// <param name="Sampling">Sampling settings.</param>
/// <param name="StopTokenIds">Token ids that end the sequence (in addition to the model's EOS ids); the stop token is reported and counted.</param>
public sealed record GenerationRequest(string Id, int[] PromptIds, int MaxTokens, SamplingParams Sampling, IReadOnlyCollection<int>? StopTokenIds = null)
{
    /// <summary>
    /// The prompt's images (already expanded into <see cref="PromptIds"/>): the scheduler encodes them once, when the
    /// sequence's prefill starts, and places the projected rows at their <c>&lt;|patch|&gt;</c> positions in whichever
    /// prefill chunk holds them. Null for a text-only prompt.
    /// </summary>
    public Model.Llama4.Vision.Llama4ImagePrompt? Images { get; init; }
}

/// <summary>One generated token; the last one of a sequence carries its <see cref="Finish"/> reason.</summary>
/// <param name="TokenId">The token.</param>
/// <param name="Index">0-based index among the generated tokens.</param>
/// <param name="Finish">Set on the last token.</param>
public readonly record struct GeneratedToken(int TokenId, int Index, FinishReason? Finish);

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
    /// Queues a request and streams its tokens as they are generated. Cancelling <paramref name="cancellationToken"/>
    /// (e.g. the client disconnected) removes the sequence from the batch and frees its KV blocks.
    /// </summary>
    /// <exception cref="ArgumentException">Invalid request fields (empty prompt, token outside the vocabulary, MaxTokens &lt; 1, bad sampling values).</exception>
    /// <exception cref="RequestTooLargeException">Prompt + MaxTokens exceeds the context limit or the KV memory budget.</exception>
    /// <exception cref="QueueFullException">The admission queue is full.</exception>
    IAsyncEnumerable<GeneratedToken> GenerateAsync(GenerationRequest request, CancellationToken cancellationToken);
}
