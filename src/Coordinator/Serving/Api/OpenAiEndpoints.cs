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
        routes.MapPost("/tokenize", TokenizeAsync);
        routes.MapPost("/detokenize", DetokenizeAsync);
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

    /// <summary>
    /// <c>POST /tokenize</c> as vLLM exposes it: <c>{"prompt": text, "add_special_tokens": true}</c> (BOS added unless
    /// false or already there) or <c>{"messages": [...], "add_generation_prompt": true, "tools": [...]}</c> (the chat
    /// template, which holds its own BOS); optional <c>model</c> and <c>return_token_strs</c>. Answers
    /// <c>{"count", "max_model_len", "tokens", "token_strs"}</c>.
    /// </summary>
    private async Task TokenizeAsync(HttpContext context)
    {
        using var document = await ReadBodyAsync(context).ConfigureAwait(false);
        var body = new JsonRequestObject(document.RootElement);
        if (body.OptionalString("model") is { } model)
        {
            CheckModel(model);
        }
        bool returnStrings = body.Boolean("return_token_strs") ?? false;
        int[] ids;
        if (body.TryGet("messages", out var messagesElement))
        {
            if (body.Has("prompt"))
            {
                throw ApiErrorException.BadRequest("Send either 'prompt' or 'messages', not both.", "prompt");
            }
            var chat = OpenAiRequestParser.ParseTokenizeChat(body, messagesElement);
            ids = EncodeChat(chat.Messages, chat.Tools, chat.AddGenerationPrompt);
            if (chat.AddSpecialTokens && (ids.Length == 0 || ids[0] != _model.Tokenizer.BosTokenId))
            {
                ids = [_model.Tokenizer.BosTokenId, .. ids];
            }
        }
        else
        {
            if (!body.TryGet("prompt", out var prompt) || prompt.ValueKind != JsonValueKind.String)
            {
                throw ApiErrorException.BadRequest("'prompt' (a string) or 'messages' is required.", "prompt");
            }
            bool addSpecial = body.Boolean("add_special_tokens") ?? true;
            ids = addSpecial ? EncodePrompt(prompt.GetString()!) : _model.Tokenizer.Encode(prompt.GetString()!, addBos: false, parseSpecialTokens: true);
        }
        body.RejectUnread();
        await WriteJsonAsync(context, 200, w =>
        {
            w.WriteStartObject();
            w.WriteNumber("count", ids.Length);
            w.WriteNumber("max_model_len", _model.Scheduler.MaxContextTokens);
            w.WriteStartArray("tokens");
            foreach (int id in ids)
            {
                w.WriteNumberValue(id);
            }
            w.WriteEndArray();
            if (returnStrings)
            {
                w.WriteStartArray("token_strs");
                foreach (int id in ids)
                {
                    w.WriteStringValue(TokenText(id));
                }
                w.WriteEndArray();
            }
            else
            {
                w.WriteNull("token_strs");
            }
            w.WriteEndObject();
        }).ConfigureAwait(false);
    }

    /// <summary><c>POST /detokenize</c> as vLLM exposes it: <c>{"tokens": [ids]}</c> (optional <c>model</c>) → <c>{"prompt": text}</c>, special tokens as their text.</summary>
    private async Task DetokenizeAsync(HttpContext context)
    {
        using var document = await ReadBodyAsync(context).ConfigureAwait(false);
        var body = new JsonRequestObject(document.RootElement);
        if (body.OptionalString("model") is { } model)
        {
            CheckModel(model);
        }
        if (!body.TryGet("tokens", out var tokens) || tokens.ValueKind != JsonValueKind.Array)
        {
            throw ApiErrorException.BadRequest("'tokens' (an array of token ids) is required.", "tokens");
        }
        int[] ids = OpenAiRequestParser.ParseTokens(tokens, "tokens", _model.Scheduler.VocabSize);
        body.RejectUnread();
        string text = _model.Tokenizer.Decode(ids, skipSpecialTokens: false);
        await WriteJsonAsync(context, 200, w =>
        {
            w.WriteStartObject();
            w.WriteString("prompt", text);
            w.WriteEndObject();
        }).ConfigureAwait(false);
    }

    private async Task CompletionsAsync(HttpContext context)
    {
        using var document = await ReadBodyAsync(context).ConfigureAwait(false);
        var body = OpenAiRequestParser.ParseCompletion(document.RootElement, _model.Scheduler.VocabSize);
        CheckModel(body.Model);
        int[] promptIds = body.PromptTokenIds ?? EncodePrompt(body.PromptText!);
        var ctx = new ResponseContext($"cmpl-{Guid.NewGuid():N}", DateTimeOffset.UtcNow.ToUnixTimeSeconds(), _model.Id, ApiKind.Completion);
        int maxTokens = ResolveMaxTokens(promptIds.Length, body.Options, "prompt");
        await RunAsync(context, ctx, promptIds, maxTokens, body.Options, [.. _model.Tokenizer.EosTokenIds], null).ConfigureAwait(false);
    }

    private async Task ChatCompletionsAsync(HttpContext context)
    {
        using var document = await ReadBodyAsync(context).ConfigureAwait(false);
        var body = OpenAiRequestParser.ParseChat(document.RootElement, _model.Scheduler.VocabSize);
        CheckModel(body.Model);
        var images = await LoadImagesAsync(body.Messages, context.RequestAborted).ConfigureAwait(false);
        int[] promptIds = EncodeChat(body.Messages, body.Tools, addGenerationPrompt: true);
        Model.Llama4.Vision.Llama4ImagePrompt? imagePrompt = null;
        if (images.Count > 0)
        {
            // The image blocks (<|image_start|> ... <|image_end|>) count as prompt tokens: usage and the context limit see them.
            var expanded = _model.Images!.Expand(promptIds, images);
            (promptIds, imagePrompt) = (expanded.Ids, expanded.Images);
        }
        var ctx = new ResponseContext($"chatcmpl-{Guid.NewGuid():N}", DateTimeOffset.UtcNow.ToUnixTimeSeconds(), _model.Id, ApiKind.Chat);
        int maxTokens = ResolveMaxTokens(promptIds.Length, body.Options, "messages");
        var stopIds = new HashSet<int>(_model.Tokenizer.EosTokenIds) { _model.Tokenizer.EndOfTurnTokenId };
        await RunAsync(context, ctx, promptIds, maxTokens, body.Options, [.. stopIds], body.ParseToolCalls ? body : null, imagePrompt).ConfigureAwait(false);
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

    /// <summary>Renders and tokenizes a conversation (message text stays text: "&lt;|eot|&gt;" typed by a user must not end its turn).</summary>
    private int[] EncodeChat(IReadOnlyList<ChatMessage> messages, IReadOnlyList<ChatTool>? tools, bool addGenerationPrompt)
    {
        try
        {
            return _model.Tokenizer.EncodeChat(messages, addGenerationPrompt, parseSpecialTokensInContent: false, tools);
        }
        catch (ChatTemplateException ex)
        {
            throw ApiErrorException.BadRequest($"'{ex.Field}' {ex.Message[(ex.Field.Length + 2)..]}", ex.Field);
        }
    }

    private async Task RunAsync(HttpContext context, ResponseContext ctx, int[] promptIds, int maxTokens, GenerationOptions options, int[] implicitStopIds,
        ChatCompletionRequestBody? tools, Model.Llama4.Vision.Llama4ImagePrompt? images = null)
    {
        // The end-of-sequence ids stop a choice unless ignore_eos; stop_token_ids always do.
        int[] stopIds = [.. (options.IgnoreEos ? [] : implicitStopIds).Concat(options.StopTokenIds).Distinct()];
        var request = new GenerationRequest(ctx.Id, promptIds, maxTokens, options.Sampling, stopIds)
        {
            N = options.N,
            Logprobs = options.Logprobs,
            IgnoreEos = options.IgnoreEos,
            ChoiceCancellation = new ChoiceCancellation(options.N),
            Images = images,
            // The prefix cache keys image positions by the image's content, so equal token ids never share KV across different images.
            Content = images is null ? null : Images.ImageContentSpans.Of(images),
        };
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
            var choices = Enumerable.Range(0, options.N).Select(i => new ChoiceAccumulator(i, options.Logprobs is not null)).ToArray();
            if (options.Stream)
            {
                await StreamAsync(context, ctx, stream, options, promptIds, choices, tools).ConfigureAwait(false);
            }
            else
            {
                await RespondAsync(context, ctx, stream, options, promptIds, choices, tools).ConfigureAwait(false);
            }
            LogCompleted(ctx.Id, stream.PromptTokens, stream.CompletionTokens, options.Stream, Stopwatch.GetElapsedTime(started).TotalMilliseconds);
        }
    }

    private async Task RespondAsync(HttpContext context, ResponseContext ctx, GenerationStream stream, GenerationOptions options, int[] promptIds,
        ChoiceAccumulator[] choices, ChatCompletionRequestBody? tools)
    {
        while (await stream.NextAsync().ConfigureAwait(false) is { } delta)
        {
            var choice = choices[delta.Choice];
            choice.Add(delta, LogprobsOf(delta, choice.TextLength));
            choice.TextLength += delta.Text.Length;
            if (delta.Finish is { } f)
            {
                choice.Finish = f;
            }
        }
        var outputs = choices.Select(c =>
        {
            var calls = tools is not null ? ParseCalls(c.Text.ToString(), tools) : null;
            return new ChoiceOutput(c.Index, calls is null ? c.Text.ToString() : null, calls is null ? c.Finish : "tool_calls")
            {
                ToolCalls = calls,
                Logprobs = c.Logprobs,
                TokenIds = options.ReturnTokenIds ? [.. c.TokenIds] : null,
                PromptTokenIds = options.ReturnTokenIds ? promptIds : null,
            };
        }).ToArray();
        var usage = new Usage(stream.PromptTokens, stream.CompletionTokens);
        await WriteJsonAsync(context, 200, w => OpenAiResponseJson.WriteResponse(w, ctx, outputs, usage)).ConfigureAwait(false);
    }

    /// <summary>The tool calls <paramref name="text"/> makes, or null when it is ordinary content.</summary>
    private static List<ToolCallResult>? ParseCalls(string text, ChatCompletionRequestBody tools)
    {
        if (!ToolCallParser.MayBeToolCall(text) || !ToolCallParser.TryParse(text, [.. tools.Tools!.Select(t => t.Name)], out var calls))
        {
            return null;
        }
        return tools.ParallelToolCalls ? calls : calls.GetRange(0, 1);
    }

    private async Task StreamAsync(HttpContext context, ResponseContext ctx, GenerationStream stream, GenerationOptions options, int[] promptIds,
        ChoiceAccumulator[] choices, ChatCompletionRequestBody? tools)
    {
        var response = context.Response;
        response.StatusCode = 200;
        response.ContentType = "text/event-stream; charset=utf-8";
        response.Headers.CacheControl = "no-cache";
        response.Headers["X-Accel-Buffering"] = "no";
        CancellationToken ct = context.RequestAborted;
        using var sse = new SseWriter(response.BodyWriter);
        bool usageNull = options.IncludeUsage;
        bool ids = options.ReturnTokenIds;
        Task Send(ChoiceOutput output) => sse.WriteEventAsync(w => OpenAiResponseJson.WriteChunk(w, ctx, output, usageNull), ct).AsTask();
        ChoiceOutput Chunk(ChoiceAccumulator c, string? text, string? finish, int[] tokenIds, List<LogprobEntry>? logprobs)
        {
            var output = new ChoiceOutput(c.Index, text, finish)
            {
                Logprobs = logprobs,
                TokenIds = ids ? tokenIds : null,
                PromptTokenIds = ids && !c.PromptIdsSent ? promptIds : null,
            };
            c.PromptIdsSent |= ids;
            return output;
        }
        if (ctx.Kind == ApiKind.Chat)
        {
            // OpenAI's first chat chunk of each choice announces the role with empty content.
            foreach (var c in choices)
            {
                await Send(Chunk(c, string.Empty, null, [], null) with { IncludeRole = true }).ConfigureAwait(false);
            }
        }
        try
        {
            while (await stream.NextAsync().ConfigureAwait(false) is { } delta)
            {
                var c = choices[delta.Choice];
                var logprobs = LogprobsOf(delta, c.TextLength);
                c.TextLength += delta.Text.Length;
                if (tools is not null && c.Mode != ToolMode.Content)
                {
                    // Hold the text back while it may still be a tool call; decide at the first non-space character.
                    c.Add(delta, logprobs);
                    if (c.Mode == ToolMode.Undecided && !ToolCallParser.MayBeToolCall(c.Text.ToString()))
                    {
                        c.Mode = ToolMode.Content;
                        var (text, held, heldLogprobs) = c.TakeHeld();
                        if (delta.Finish is null)
                        {
                            await Send(Chunk(c, text, null, held, heldLogprobs)).ConfigureAwait(false);
                            continue;
                        }
                        await Send(Chunk(c, text, null, held, heldLogprobs)).ConfigureAwait(false);
                        await Send(Chunk(c, null, delta.Finish, [], null)).ConfigureAwait(false);
                        continue;
                    }
                    if (delta.Finish is null)
                    {
                        continue;
                    }
                    var (all, allIds, allLogprobs) = c.TakeHeld();
                    if (ParseCalls(all, tools) is { } calls)
                    {
                        await Send(Chunk(c, null, null, allIds, allLogprobs) with { ToolCalls = calls }).ConfigureAwait(false);
                        await Send(Chunk(c, null, "tool_calls", [], null)).ConfigureAwait(false);
                    }
                    else
                    {
                        await Send(Chunk(c, all, null, allIds, allLogprobs)).ConfigureAwait(false);
                        await Send(Chunk(c, null, delta.Finish, [], null)).ConfigureAwait(false);
                    }
                    continue;
                }
                if (delta.Finish is null)
                {
                    if (delta.Text.Length > 0 || ids || logprobs is not null)
                    {
                        await Send(Chunk(c, delta.Text, null, delta.TokenIds, logprobs)).ConfigureAwait(false);
                    }
                    continue;
                }
                if (ctx.Kind == ApiKind.Chat && delta.Text.Length > 0)
                {
                    await Send(Chunk(c, delta.Text, null, delta.TokenIds, logprobs)).ConfigureAwait(false);
                    await Send(Chunk(c, null, delta.Finish, [], null)).ConfigureAwait(false);
                }
                else
                {
                    await Send(Chunk(c, ctx.Kind == ApiKind.Chat ? null : delta.Text, delta.Finish, delta.TokenIds, logprobs)).ConfigureAwait(false);
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

    /// <summary>The API form of a delta's logprobs (one entry: a delta is one token), or null when not requested.</summary>
    private List<LogprobEntry>? LogprobsOf(GenerationDelta delta, int textOffset)
    {
        if (delta.Logprobs is not { } lp)
        {
            return null;
        }
        var top = new (string, byte[], float)[lp.TopIds.Length];
        for (int i = 0; i < top.Length; i++)
        {
            top[i] = (TokenText(lp.TopIds[i]), _model.Tokenizer.GetTokenBytes(lp.TopIds[i]).ToArray(), lp.TopLogprobs[i]);
        }
        int id = delta.TokenIds[0];
        return [new LogprobEntry(TokenText(id), _model.Tokenizer.GetTokenBytes(id).ToArray(), lp.Logprob, top, textOffset)];
    }

    private string TokenText(int id) => _model.Tokenizer.Decode([id], skipSpecialTokens: false);

    /// <summary>What one choice has produced, and (streaming chat with tools) the text held back while it may be a tool call.</summary>
    private sealed class ChoiceAccumulator(int index, bool logprobs)
    {
        public int Index { get; } = index;
        public StringBuilder Text { get; } = new();
        public List<int> TokenIds { get; } = [];
        public List<LogprobEntry>? Logprobs { get; } = logprobs ? [] : null;
        public string Finish { get; set; } = "stop";
        public int TextLength { get; set; }
        public bool PromptIdsSent { get; set; }
        public ToolMode Mode { get; set; }

        public void Add(GenerationDelta delta, List<LogprobEntry>? logprobs)
        {
            Text.Append(delta.Text);
            TokenIds.AddRange(delta.TokenIds);
            if (logprobs is not null)
            {
                Logprobs?.AddRange(logprobs);
            }
        }

        public (string Text, int[] Ids, List<LogprobEntry>? Logprobs) TakeHeld()
        {
            var held = (Text.ToString(), TokenIds.ToArray(), Logprobs is null ? null : new List<LogprobEntry>(Logprobs));
            Text.Clear();
            TokenIds.Clear();
            Logprobs?.Clear();
            return held;
        }
    }

    private enum ToolMode
    {
        Undecided,
        Content,
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

    /// <summary>
    /// The choice length: <c>max_tokens</c> as given (after checking prompt + it against the context), else the rest of
    /// the context capped by the server's <c>--default-max-tokens</c>.
    /// </summary>
    private int ResolveMaxTokens(int promptTokens, GenerationOptions options, string promptField)
    {
        int limit = _model.Scheduler.MaxContextTokens;
        if (promptTokens >= limit)
        {
            throw ApiErrorException.BadRequest(
                $"This model's maximum context length is {limit} tokens, but the {promptField} is {promptTokens} tokens long; shorten it to leave room for at least one generated token.",
                promptField, "context_length_exceeded");
        }
        if (options.MaxTokens is int max && (long)promptTokens + max > limit)
        {
            throw ApiErrorException.BadRequest(
                $"This model's maximum context length is {limit} tokens. However, you requested {(long)promptTokens + max} tokens ({promptTokens} in the {promptField}, {max} for the completion). Reduce the {promptField} or max_tokens.",
                "max_tokens", "context_length_exceeded");
        }
        int resolved = options.MaxTokens ?? Math.Min(_settings.DefaultMaxTokens, limit - promptTokens);
        if (options.Sampling.MinTokens > resolved)
        {
            throw ApiErrorException.BadRequest($"'min_tokens' ({options.Sampling.MinTokens}) exceeds the {resolved} tokens this request may generate.", "min_tokens");
        }
        return resolved;
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
