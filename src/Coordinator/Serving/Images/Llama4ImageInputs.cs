using Distributed.Checkpoint;
using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Serving.Images;

/// <summary>
/// What a served multimodal model needs to turn request images into model input: the limits, the URL loader, the
/// decoder, the Llama 4 image processor and the prompt expansion. One per server; thread-safe.
/// </summary>
public sealed class Llama4ImageInputs : IDisposable
{
    private readonly ImageSources _sources;
    private readonly Llama4ImageProcessor _processor;

    /// <summary>Creates the pipeline for <paramref name="config"/>'s vision tower with <paramref name="tokenizer"/>'s image tokens.</summary>
    /// <exception cref="InvalidOperationException">The tokenizer lacks an image token or disagrees with the config.</exception>
    public Llama4ImageInputs(Llama4VisionConfig config, Llama4Tokenizer tokenizer, ImageOptions options, HttpMessageHandler? handler = null, TimeProvider? time = null)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(tokenizer);
        Options = options ?? throw new ArgumentNullException(nameof(options));
        Config = config;
        Tokens = Llama4VisionTokenIds.Resolve(tokenizer, config);
        _processor = new Llama4ImageProcessor(config.ImageSize, options.MaxImageTiles);
        _sources = new ImageSources(options, handler, time);
    }

    /// <summary>The limits in force.</summary>
    public ImageOptions Options { get; }

    /// <summary>The vision tower's config.</summary>
    public Llama4VisionConfig Config { get; }

    /// <summary>The image block's token ids.</summary>
    public Llama4VisionTokenIds Tokens { get; }

    /// <summary>Loads (data URL or allowed remote URL), decodes and preprocesses one image.</summary>
    /// <exception cref="ImageInputException">Why the image cannot be used.</exception>
    public async Task<PreprocessedImage> LoadAsync(string url, CancellationToken cancellationToken)
    {
        byte[] bytes = await _sources.LoadAsync(url, cancellationToken).ConfigureAwait(false);
        return _processor.Process(ImageDecoder.Decode(bytes, Options.MaxImagePixels));
    }

    /// <summary>Expands the <c>&lt;|image|&gt;</c> ids of <paramref name="promptIds"/> for <paramref name="images"/> (in order).</summary>
    /// <exception cref="ArgumentException">The placeholder count differs from the image count.</exception>
    public ExpandedImagePrompt Expand(ReadOnlySpan<int> promptIds, IReadOnlyList<PreprocessedImage> images) =>
        Llama4PromptExpander.Expand(promptIds, images, Tokens, Config.OutputTokensPerTile);

    /// <inheritdoc />
    public void Dispose() => _sources.Dispose();
}
