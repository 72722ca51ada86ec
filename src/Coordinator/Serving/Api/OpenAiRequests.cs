using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Serving.Api;

/// <summary>The generation fields shared by <c>/v1/completions</c> and <c>/v1/chat/completions</c>, validated.</summary>
/// <param name="MaxTokens">Most tokens to generate (≥ 1), or null for the endpoint's default.</param>
/// <param name="Sampling">Temperature in [0, 2], top_p in (0, 1], top_k ≥ 0 (0 = off), optional seed.</param>
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
    bool ReturnTokenIds);

/// <summary>A validated <c>POST /v1/completions</c> body: exactly one of <paramref name="PromptText"/> and <paramref name="PromptTokenIds"/> is set.</summary>
/// <param name="Model">Requested model id.</param>
/// <param name="PromptText">Prompt text (non-empty), tokenized by the server.</param>
/// <param name="PromptTokenIds">Prompt token ids (non-empty, each inside the vocabulary), used as given.</param>
/// <param name="Options">Generation fields.</param>
public sealed record CompletionRequestBody(string Model, string? PromptText, int[]? PromptTokenIds, GenerationOptions Options);

/// <summary>A validated <c>POST /v1/chat/completions</c> body.</summary>
/// <param name="Model">Requested model id.</param>
/// <param name="Messages">At least one message (system, user or assistant; text content).</param>
/// <param name="Options">Generation fields.</param>
public sealed record ChatCompletionRequestBody(string Model, IReadOnlyList<ChatMessage> Messages, GenerationOptions Options);
