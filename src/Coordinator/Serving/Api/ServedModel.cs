using Distributed.Coordinator.Serving.Hosting;
using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Serving.Api;

/// <summary>The one model this server serves: its public id, tokenizer and scheduler.</summary>
/// <param name="Id">Model id in <c>/v1/models</c> and the required value of every request's <c>model</c> field.</param>
/// <param name="CreatedUnixSeconds">Reported as <c>created</c> by <c>/v1/models</c> (when serving started).</param>
/// <param name="Tokenizer">The model's tokenizer (text ↔ ids, chat template).</param>
/// <param name="Scheduler">Runs generation; <see cref="IGenerationScheduler.MaxContextTokens"/> bounds prompt + max_tokens.</param>
public sealed record ServedModel(string Id, long CreatedUnixSeconds, Llama4Tokenizer Tokenizer, IGenerationScheduler Scheduler)
{
    /// <summary>The image pipeline when the model has a vision tower and images are enabled; null = image parts get a 400.</summary>
    public Images.Llama4ImageInputs? Images { get; init; }
}

/// <summary>HTTP-level settings of the OpenAI API.</summary>
/// <param name="QueueFullStatusCode">Status sent when the scheduler's queue is full: 429 or 503 (with Retry-After).</param>
/// <param name="DefaultMaxTokens">Cap of the default for a missing <c>max_tokens</c>: a choice gets the rest of the context, at most this many tokens (<c>--default-max-tokens</c>).</param>
public sealed record OpenAiApiSettings(int QueueFullStatusCode = 429, int DefaultMaxTokens = ServeOptions.DefaultDefaultMaxTokens);
