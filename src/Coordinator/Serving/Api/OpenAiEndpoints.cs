using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Serving.Api;

/// <summary>
/// The OpenAI-compatible endpoints: <c>GET /v1/models</c>, <c>GET /v1/models/{id}</c>, <c>POST /v1/completions</c>,
/// <c>POST /v1/chat/completions</c>, plus <c>GET /health</c>. Handlers validate the whole request before submitting
/// it, wait for admission (the first token) before sending the status line, and pass the request's abort token to the
/// scheduler so a disconnected client's sequence leaves the batch.
/// </summary>
public sealed partial class OpenAiEndpoints
{
    private static readonly JsonDocumentOptions DocumentOptions = new() { MaxDepth = 64, AllowTrailingCommas = false, CommentHandling = JsonCommentHandling.Disallow };
    private readonly ServedModel _model;
    private readonly OpenAiApiSettings _settings;
    private readonly ILogger _logger;

    /// <summary>Creates the handlers for <paramref name="model"/>.</summary>
    public OpenAiEndpoints(ServedModel model, OpenAiApiSettings settings, ILogger<OpenAiEndpoints> logger)
    {
        _model = model ?? throw new ArgumentNullException(nameof(model));
        _settings = settings ?? throw new ArgumentNullException(nameof(settings));
        _logger = logger ?? throw new ArgumentNullException(nameof(logger));
        if (settings.QueueFullStatusCode is not (429 or 503))
        {
            throw new ArgumentOutOfRangeException(nameof(settings), settings.QueueFullStatusCode, "QueueFullStatusCode must be 429 or 503");
        }
    }

    /// <summary>Maps the routes onto <paramref name="routes"/>.</summary>
    public void Map(IEndpointRouteBuilder routes)
    {
        ArgumentNullException.ThrowIfNull(routes);
        routes.MapGet("/health", context => WriteTextAsync(context, "ok"));
        routes.MapGet("/v1/models", ListModelsAsync);
        routes.MapGet("/v1/models/{**id}", GetModelAsync);
        routes.MapPost("/v1/completions", CompletionsAsync);
        routes.MapPost("/v1/chat/completions", ChatCompletionsAsync);
    }

    private Task ListModelsAsync(HttpContext context) => WriteJsonAsync(context, 200, w =>
    {
        w.WriteStartObject();
        w.WriteString("object", "list");
        w.WriteStartArray("data");
        WriteModel(w);
        w.WriteEndArray();
        w.WriteEndObject();
    });

    private Task GetModelAsync(HttpContext context)
    {
        string id = (string)context.Request.RouteValues["id"]!;
        if (id != _model.Id)
        {
            throw new ApiErrorException(404, ApiErrorTypes.InvalidRequest, $"The model '{id}' does not exist; this server serves '{_model.Id}'.", "model", "model_not_found");
        }
        return WriteJsonAsync(context, 200, WriteModel);
    }

    private void WriteModel(Utf8JsonWriter w)
    {
        w.WriteStartObject();
        w.WriteString("id", _model.Id);
        w.WriteString("object", "model");
        w.WriteNumber("created", _model.CreatedUnixSeconds);
        w.WriteString("owned_by", "distributed");
        w.WriteNumber("max_model_len", _model.Scheduler.MaxContextTokens);
        w.WriteEndObject();
    }

    private async Task CompletionsAsync(HttpContext context)
    {
        using var document = await ReadBodyAsync(context).ConfigureAwait(false);
        var body = OpenAiRequestParser.ParseCompletion(document.RootElement, _model.Scheduler.VocabSize);
        CheckModel(body.Model);
        int[] promptIds = body.PromptTokenIds ?? EncodePrompt(body.PromptText!);
        var ctx = new ResponseContext($"cmpl-{Guid.NewGuid():N}", DateTimeOffset.UtcNow.ToUnixTimeSeconds(), _model.Id, ApiKind.Completion);
        int maxTokens = ResolveMaxTokens(promptIds.Length, body.Options.MaxTokens, "prompt", Math.Min(_settings.DefaultCompletionMaxTokens, _model.Scheduler.MaxContextTokens - promptIds.Length));
        await RunAsync(context, ctx, promptIds, maxTokens, body.Options, [.. _model.Tokenizer.EosTokenIds]).ConfigureAwait(false);
    }

    private async Task ChatCompletionsAsync(HttpContext context)
    {
        using var document = await ReadBodyAsync(context).ConfigureAwait(false);
        var body = OpenAiRequestParser.ParseChat(document.RootElement);
        CheckModel(body.Model);
        var images = await LoadImagesAsync(body.Messages, context.RequestAborted).ConfigureAwait(false);
        // Message text stays text: "<|eot|>" typed by a user must not end the user's turn.
        int[] promptIds;
        try
        {
            promptIds = _model.Tokenizer.EncodeChat(body.Messages, addGenerationPrompt: true, parseSpecialTokensInContent: false);
        }
        catch (ChatTemplateException ex)
        {
            throw ApiErrorException.BadRequest($"'{ex.Field}' {ex.Message[(ex.Field.Length + 2)..]}", ex.Field);
        }
        Model.Llama4.Vision.Llama4ImagePrompt? imagePrompt = null;
        if (images.Count > 0)
        {
            // The image blocks (<|image_start|> ... <|image_end|>) count as prompt tokens: usage and the context limit see them.
            var expanded = _model.Images!.Expand(promptIds, images);
            (promptIds, imagePrompt) = (expanded.Ids, expanded.Images);
        }
        var ctx = new ResponseContext($"chatcmpl-{Guid.NewGuid():N}", DateTimeOffset.UtcNow.ToUnixTimeSeconds(), _model.Id, ApiKind.Chat);
        int maxTokens = ResolveMaxTokens(promptIds.Length, body.Options.MaxTokens, "messages", _model.Scheduler.MaxContextTokens - promptIds.Length);
        var stopIds = new HashSet<int>(_model.Tokenizer.EosTokenIds) { _model.Tokenizer.EndOfTurnTokenId };
        await RunAsync(context, ctx, promptIds, maxTokens, body.Options, [.. stopIds], imagePrompt).ConfigureAwait(false);
    }

    /// <summary>
    /// Loads, decodes and preprocesses every image part, in order. Any problem is a 400 naming the part
    /// (<c>messages[i].content[j]</c>): images on a model without a vision tower, more than
    /// <see cref="Images.ImageOptions.MaxImagesPerRequest"/>, a URL that is malformed, not allowed, too slow or too large, or
    /// data that does not decode within the pixel limit.
    /// </summary>
    private async Task<List<Images.PreprocessedImage>> LoadImagesAsync(IReadOnlyList<ChatMessage> messages, CancellationToken cancellationToken)
    {
        var parts = messages.SelectMany(m => m.Images).ToList();
        var result = new List<Images.PreprocessedImage>(parts.Count);
        if (parts.Count == 0)
        {
            return result;
        }
        var inputs = _model.Images ?? throw ApiErrorException.BadRequest(
            $"'{parts[0].Field}' this model does not accept images (it has no vision tower, or images are disabled).", parts[0].Field, "images_not_supported");
        if (parts.Count > inputs.Options.MaxImagesPerRequest)
        {
            var over = parts[inputs.Options.MaxImagesPerRequest];
            throw ApiErrorException.BadRequest(
                $"'{over.Field}' is image {inputs.Options.MaxImagesPerRequest + 1} of this request; the limit is {inputs.Options.MaxImagesPerRequest} (--max-images).",
                over.Field, "too_many_images");
        }
        foreach (var part in parts)
        {
            try
            {
                result.Add(await inputs.LoadAsync(part.Url, cancellationToken).ConfigureAwait(false));
            }
            catch (Images.ImageInputException ex)
            {
                LogImageRejected(part.Field, ex.Message);
                throw ApiErrorException.BadRequest($"'{part.Field}' cannot be used: {ex.Message}.", part.Field, "invalid_image");
            }
        }
        return result;
    }

    private async Task RunAsync(HttpContext context, ResponseContext ctx, int[] promptIds, int maxTokens, GenerationOptions options, int[] stopTokenIds,
        Model.Llama4.Vision.Llama4ImagePrompt? images = null)
    {
        var request = new GenerationRequest(ctx.Id, promptIds, maxTokens, options.Sampling, stopTokenIds) { Images = images };
        var started = Stopwatch.GetTimestamp();
        CancellationToken aborted = context.RequestAborted;
        GenerationStream stream;
        try
        {
            stream = await GenerationStream.StartAsync(_model.Scheduler, request, _model.Tokenizer, options.Stop, aborted).ConfigureAwait(false);
        }
        catch (QueueFullException ex)
        {
            LogQueueFull(ctx.Id, ex.RetryAfter.TotalSeconds);
            throw new ApiErrorException(
                _settings.QueueFullStatusCode,
                _settings.QueueFullStatusCode == 429 ? ApiErrorTypes.RateLimit : ApiErrorTypes.ServiceUnavailable,
                $"The server's request queue is full; retry after {RetrySeconds(ex.RetryAfter)} s. ({ex.Message})",
                null,
                "queue_full",
                ex.RetryAfter);
        }
        catch (RequestTooLargeException ex)
        {
            throw ApiErrorException.BadRequest(ex.Message, "max_tokens", "context_length_exceeded");
        }
        catch (ArgumentException ex)
        {
            // The scheduler's contract: ArgumentException means the request's fields are invalid.
            throw ApiErrorException.BadRequest(ex.Message, ex.ParamName);
        }

        await using (stream.ConfigureAwait(false))
        {
            if (options.Stream)
            {
                await StreamAsync(context, ctx, stream, options, promptIds).ConfigureAwait(false);
            }
            else
            {
                await RespondAsync(context, ctx, stream, options, promptIds).ConfigureAwait(false);
            }
            LogCompleted(ctx.Id, stream.PromptTokens, stream.CompletionTokens, options.Stream, Stopwatch.GetElapsedTime(started).TotalMilliseconds);
        }
    }

    private static async Task RespondAsync(HttpContext context, ResponseContext ctx, GenerationStream stream, GenerationOptions options, int[] promptIds)
    {
        var text = new StringBuilder();
        var tokenIds = new List<int>();
        string finish;
        while (true)
        {
            var delta = (await stream.NextAsync().ConfigureAwait(false))!.Value;
            text.Append(delta.Text);
            tokenIds.AddRange(delta.TokenIds);
            if (delta.Finish is { } f)
            {
                finish = f;
                break;
            }
        }
        var usage = new Usage(stream.PromptTokens, stream.CompletionTokens);
        await WriteJsonAsync(context, 200, w => OpenAiResponseJson.WriteResponse(
            w, ctx, text.ToString(), finish, usage, options.ReturnTokenIds ? promptIds : null, options.ReturnTokenIds ? [.. tokenIds] : null)).ConfigureAwait(false);
    }

    private async Task StreamAsync(HttpContext context, ResponseContext ctx, GenerationStream stream, GenerationOptions options, int[] promptIds)
    {
        var response = context.Response;
        response.StatusCode = 200;
        response.ContentType = "text/event-stream; charset=utf-8";
        response.Headers.CacheControl = "no-cache";
        response.Headers["X-Accel-Buffering"] = "no";
        CancellationToken ct = context.RequestAborted;
        using var sse = new SseWriter(response.BodyWriter);
        bool usageNull = options.IncludeUsage;
        int[]? ids(int[] t) => options.ReturnTokenIds ? t : null;
        int[]? promptIdsOnce = options.ReturnTokenIds ? promptIds : null;
        if (ctx.Kind == ApiKind.Chat)
        {
            // OpenAI's first chat chunk announces the role with empty content.
            await sse.WriteEventAsync(w => OpenAiResponseJson.WriteChunk(w, ctx, string.Empty, null, includeRole: true, usageNull, promptIdsOnce, ids([])), ct).ConfigureAwait(false);
            promptIdsOnce = null;
        }
        try
        {
            while (await stream.NextAsync().ConfigureAwait(false) is { } delta)
            {
                if (delta.Finish is null)
                {
                    if (delta.Text.Length > 0 || options.ReturnTokenIds)
                    {
                        await sse.WriteEventAsync(w => OpenAiResponseJson.WriteChunk(w, ctx, delta.Text, null, false, usageNull, promptIdsOnce, ids(delta.TokenIds)), ct).ConfigureAwait(false);
                        promptIdsOnce = null;
                    }
                    continue;
                }
                if (ctx.Kind == ApiKind.Chat)
                {
                    if (delta.Text.Length > 0)
                    {
                        await sse.WriteEventAsync(w => OpenAiResponseJson.WriteChunk(w, ctx, delta.Text, null, false, usageNull, promptIdsOnce, ids(delta.TokenIds)), ct).ConfigureAwait(false);
                        await sse.WriteEventAsync(w => OpenAiResponseJson.WriteChunk(w, ctx, null, delta.Finish, false, usageNull, null, ids([])), ct).ConfigureAwait(false);
                    }
                    else
                    {
                        await sse.WriteEventAsync(w => OpenAiResponseJson.WriteChunk(w, ctx, null, delta.Finish, false, usageNull, promptIdsOnce, ids(delta.TokenIds)), ct).ConfigureAwait(false);
                    }
                }
                else
                {
                    await sse.WriteEventAsync(w => OpenAiResponseJson.WriteChunk(w, ctx, delta.Text, delta.Finish, false, usageNull, promptIdsOnce, ids(delta.TokenIds)), ct).ConfigureAwait(false);
                }
            }
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !ct.IsCancellationRequested)
        {
            // Headers are gone; the client learns of the failure from an error event (as vLLM does), then [DONE].
            LogStreamFailed(ex, ctx.Id);
            var error = new ApiErrorException(500, ApiErrorTypes.Server, $"Generation failed: {ex.Message}", null, "internal_error");
            await sse.WriteEventAsync(w => ApiErrorJson.Write(w, error), ct).ConfigureAwait(false);
            await sse.WriteDoneAsync(ct).ConfigureAwait(false);
            return;
        }
        if (options.IncludeUsage)
        {
            var usage = new Usage(stream.PromptTokens, stream.CompletionTokens);
            await sse.WriteEventAsync(w => OpenAiResponseJson.WriteUsageChunk(w, ctx, usage), ct).ConfigureAwait(false);
        }
        await sse.WriteDoneAsync(ct).ConfigureAwait(false);
    }

    private int[] EncodePrompt(string text)
    {
        // Hugging Face's Llama 4 tokenizer adds <|begin_of_text|> (its post-processor); a prompt that already starts
        // with it keeps a single one.
        int[] ids = _model.Tokenizer.Encode(text, addBos: false, parseSpecialTokens: true);
        if (ids.Length > 0 && ids[0] == _model.Tokenizer.BosTokenId)
        {
            return ids;
        }
        return [_model.Tokenizer.BosTokenId, .. ids];
    }

    private int ResolveMaxTokens(int promptTokens, int? requested, string promptField, int fallback)
    {
        int limit = _model.Scheduler.MaxContextTokens;
        if (promptTokens >= limit)
        {
            throw ApiErrorException.BadRequest(
                $"This model's maximum context length is {limit} tokens, but the {promptField} is {promptTokens} tokens long; shorten it to leave room for at least one generated token.",
                promptField, "context_length_exceeded");
        }
        if (requested is int max && (long)promptTokens + max > limit)
        {
            throw ApiErrorException.BadRequest(
                $"This model's maximum context length is {limit} tokens. However, you requested {(long)promptTokens + max} tokens ({promptTokens} in the {promptField}, {max} for the completion). Reduce the {promptField} or max_tokens.",
                "max_tokens", "context_length_exceeded");
        }
        return requested ?? fallback;
    }

    private void CheckModel(string model)
    {
        if (model != _model.Id)
        {
            throw ApiErrorException.BadRequest($"The model '{model}' does not exist; this server serves '{_model.Id}'.", "model", "model_not_found");
        }
    }

    private static async Task<JsonDocument> ReadBodyAsync(HttpContext context)
    {
        try
        {
            return await JsonDocument.ParseAsync(context.Request.Body, DocumentOptions, context.RequestAborted).ConfigureAwait(false);
        }
        catch (JsonException ex)
        {
            string where = ex.LineNumber is long line ? $" (line {line + 1}, byte {ex.BytePositionInLine + 1})" : string.Empty;
            throw ApiErrorException.BadRequest($"The request body is not valid JSON{where}.", null, "invalid_json");
        }
    }

    /// <summary>Writes one JSON value as the whole response with <paramref name="statusCode"/>.</summary>
    internal static async Task WriteJsonAsync(HttpContext context, int statusCode, Action<Utf8JsonWriter> write)
    {
        var response = context.Response;
        response.StatusCode = statusCode;
        response.ContentType = "application/json";
        using (var writer = new Utf8JsonWriter(response.BodyWriter, ApiErrorJson.WriterOptions))
        {
            write(writer);
        }
        await response.BodyWriter.FlushAsync(context.RequestAborted).ConfigureAwait(false);
    }

    private static Task WriteTextAsync(HttpContext context, string text)
    {
        context.Response.ContentType = "text/plain";
        return context.Response.WriteAsync(text, context.RequestAborted);
    }

    /// <summary>Retry-After in whole seconds: rounded up, at least 1.</summary>
    internal static long RetrySeconds(TimeSpan retryAfter) => Math.Max(1, (long)Math.Ceiling(retryAfter.TotalSeconds));

    /// <summary>Formats <see cref="RetrySeconds"/> for the header.</summary>
    internal static string RetryAfterHeader(TimeSpan retryAfter) => RetrySeconds(retryAfter).ToString(CultureInfo.InvariantCulture);
}
