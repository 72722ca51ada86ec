using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Serving.Api;

/// <summary>The generation fields shared by <c>/v1/completions</c> and <c>/v1/chat/completions</c>, validated.</summary>
/// <param name="MaxTokens">Most tokens to generate per choice (≥ 1), or null for the server's default (the rest of the
/// context, capped by <c>--default-max-tokens</c>).</param>
/// <param name="Sampling">Temperature in [0, 2], top_p in (0, 1], top_k ≥ 0 (0 = off), optional seed, penalties, bias, min_tokens.</param>
/// <param name="Stop">Up to 4 non-empty stop strings; generation ends before the first occurrence of any of them.</param>
/// <param name="Stream">Answer with server-sent events.</param>
/// <param name="IncludeUsage">Streaming only: send a last chunk with <c>usage</c> and empty <c>choices</c>.</param>
/// <param name="ReturnTokenIds">Extension: add <c>prompt_token_ids</c> and <c>token_ids</c> to each choice.</param>
public sealed record GenerationOptions(
    int? MaxTokens,
    SamplingParams Sampling,
    IReadOnlyList<string> Stop,
    bool Stream,
    bool IncludeUsage,
    bool ReturnTokenIds)
{
    /// <summary>Choices to generate (<c>n</c>, ≥ 1). Default: 1.</summary>
    public int N { get; init; } = 1;

    /// <summary>Null: no logprobs; k: each token's logprob and the k most likely (completions <c>logprobs</c>, chat <c>top_logprobs</c>).</summary>
    public int? Logprobs { get; init; }

    /// <summary>vLLM <c>ignore_eos</c>: keep generating past the model's end-of-sequence tokens.</summary>
    public bool IgnoreEos { get; init; }

    /// <summary>vLLM <c>stop_token_ids</c>: token ids that end a choice (the token is reported, its text is not).</summary>
    public IReadOnlyList<int> StopTokenIds { get; init; } = [];
}

/// <summary>A validated <c>POST /v1/completions</c> body: exactly one of <paramref name="PromptText"/> and <paramref name="PromptTokenIds"/> is set.</summary>
/// <param name="Model">Requested model id.</param>
/// <param name="PromptText">Prompt text (non-empty), tokenized by the server.</param>
/// <param name="PromptTokenIds">Prompt token ids (non-empty, each inside the vocabulary), used as given.</param>
/// <param name="Options">Generation fields.</param>
public sealed record CompletionRequestBody(string Model, string? PromptText, int[]? PromptTokenIds, GenerationOptions Options);

/// <summary>A validated <c>POST /v1/chat/completions</c> body.</summary>
/// <param name="Model">Requested model id.</param>
/// <param name="Messages">At least one message (system, user, assistant, tool).</param>
/// <param name="Options">Generation fields.</param>
public sealed record ChatCompletionRequestBody(string Model, IReadOnlyList<ChatMessage> Messages, GenerationOptions Options)
{
    /// <summary>Tools the model may call (rendered by the chat template), or null.</summary>
    public IReadOnlyList<ChatTool>? Tools { get; init; }

    /// <summary>Whether generated text is parsed for tool calls (tools given and <c>tool_choice</c> is not <c>none</c>).</summary>
    public bool ParseToolCalls { get; init; }

    /// <summary><c>parallel_tool_calls</c>: false keeps only the first call the model makes. Default: true.</summary>
    public bool ParallelToolCalls { get; init; } = true;
}
