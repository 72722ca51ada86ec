using Distributed.Checkpoint;
using Distributed.Coordinator.Model.Llama4.Vision;
using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Serving.Images;

/// <summary>The special tokens of an image block (Llama4Processor), as ids of one model's vocabulary.</summary>
/// <param name="ImageStart"><c>&lt;|image_start|&gt;</c> (config <c>boi_token_index</c>).</param>
/// <param name="ImageEnd"><c>&lt;|image_end|&gt;</c> (config <c>eoi_token_index</c>).</param>
/// <param name="TileXSeparator"><c>&lt;|tile_x_separator|&gt;</c>, between two tiles of a row.</param>
/// <param name="TileYSeparator"><c>&lt;|tile_y_separator|&gt;</c>, after every tile row.</param>
/// <param name="Image"><c>&lt;|image|&gt;</c>: the prompt placeholder of one image, and the marker before the global tile.</param>
/// <param name="Patch"><c>&lt;|patch|&gt;</c> (config <c>image_token_index</c>): one per projected feature row.</param>
public sealed record Llama4VisionTokenIds(int ImageStart, int ImageEnd, int TileXSeparator, int TileYSeparator, int Image, int Patch)
{
    /// <summary>Token texts, as in the Llama 4 tokenizer.</summary>
    public const string ImageStartToken = "<|image_start|>", ImageEndToken = "<|image_end|>", TileXSeparatorToken = "<|tile_x_separator|>",
        TileYSeparatorToken = "<|tile_y_separator|>", ImageToken = "<|image|>", PatchToken = "<|patch|>";

    /// <summary>
    /// The ids from the tokenizer's special tokens (what HF's processor gets by tokenizing the expanded text), checked
    /// against the config's <c>boi_token_index</c>, <c>eoi_token_index</c> and <c>image_token_index</c>.
    /// </summary>
    /// <exception cref="InvalidOperationException">A token is missing from the tokenizer, or the tokenizer and config disagree.</exception>
    public static Llama4VisionTokenIds Resolve(Llama4Tokenizer tokenizer, Llama4VisionConfig config)
    {
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(config);
        int Id(string token) => tokenizer.TryGetSpecialTokenId(token, out int id)
            ? id
            : throw new InvalidOperationException($"the tokenizer has no special token {token}, which image prompts need");
        var ids = new Llama4VisionTokenIds(Id(ImageStartToken), Id(ImageEndToken), Id(TileXSeparatorToken), Id(TileYSeparatorToken), Id(ImageToken), Id(PatchToken));
        foreach (var (token, fromTokenizer, field, fromConfig) in new[]
        {
            (ImageStartToken, ids.ImageStart, "boi_token_index", config.BoiTokenId),
            (ImageEndToken, ids.ImageEnd, "eoi_token_index", config.EoiTokenId),
            (PatchToken, ids.Patch, "image_token_index", config.ImageTokenId),
        })
        {
            if (fromTokenizer != fromConfig)
            {
                throw new InvalidOperationException($"the tokenizer's {token} is id {fromTokenizer} but config.json's {field} is {fromConfig}");
            }
        }
        return ids;
    }
}

/// <summary>A prompt with its image blocks expanded, and the images' model input.</summary>
/// <param name="Ids">The expanded prompt ids (what the model runs and what usage counts).</param>
/// <param name="Images">The images' tiles and the <c>&lt;|patch|&gt;</c> positions in <paramref name="Ids"/>.</param>
public sealed record ExpandedImagePrompt(int[] Ids, Llama4ImagePrompt Images);

/// <summary>
/// Hugging Face's <c>Llama4Processor</c> prompt expansion (processing_llama4.py <c>_prompt_split_image</c>): the k-th
/// <c>&lt;|image|&gt;</c> of the prompt becomes image k's block
/// <code>
/// &lt;|image_start|&gt;
///   when tiles &gt; 1, per tile row: (&lt;|patch|&gt; × n [&lt;|tile_x_separator|&gt; between tiles]) &lt;|tile_y_separator|&gt;
///   &lt;|image|&gt; &lt;|patch|&gt; × n            (the global tile, or the only tile)
/// &lt;|image_end|&gt;
/// </code>
/// with n = <see cref="Llama4VisionConfig.OutputTokensPerTile"/>.
/// </summary>
public static class Llama4PromptExpander
{
    /// <summary>Expands <paramref name="promptIds"/>, whose <c>&lt;|image|&gt;</c> ids mark <paramref name="images"/> in order.</summary>
    /// <exception cref="ArgumentException">The prompt's <c>&lt;|image|&gt;</c> count differs from the image count.</exception>
    public static ExpandedImagePrompt Expand(ReadOnlySpan<int> promptIds, IReadOnlyList<PreprocessedImage> images, Llama4VisionTokenIds tokens,
        int patchTokensPerTile)
    {
        ArgumentNullException.ThrowIfNull(images);
        ArgumentNullException.ThrowIfNull(tokens);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(patchTokensPerTile);
        int placeholders = 0;
        foreach (int id in promptIds)
        {
            placeholders += id == tokens.Image ? 1 : 0;
        }
        if (placeholders != images.Count)
        {
            throw new ArgumentException(
                $"the prompt has {placeholders} <|image|> token(s) (id {tokens.Image}) but {images.Count} image(s) were given; each <|image|> marks one image, in order");
        }
        var ids = new List<int>(promptIds.Length + images.Sum(i => (i.Tiles.Tiles * (patchTokensPerTile + 1)) + 3));
        var positions = new List<int>();
        int next = 0;
        foreach (int id in promptIds)
        {
            if (id != tokens.Image)
            {
                ids.Add(id);
                continue;
            }
            var image = images[next++];
            ids.Add(tokens.ImageStart);
            if (image.TileRows * image.TileColumns > 1)
            {
                for (int y = 0; y < image.TileRows; y++)
                {
                    for (int x = 0; x < image.TileColumns; x++)
                    {
                        AddPatches(ids, positions, tokens.Patch, patchTokensPerTile);
                        if (x < image.TileColumns - 1)
                        {
                            ids.Add(tokens.TileXSeparator);
                        }
                    }
                    ids.Add(tokens.TileYSeparator);
                }
            }
            ids.Add(tokens.Image);
            AddPatches(ids, positions, tokens.Patch, patchTokensPerTile);
            ids.Add(tokens.ImageEnd);
        }
        return new ExpandedImagePrompt([.. ids], new Llama4ImagePrompt([.. images.Select(i => i.Tiles)], [.. positions]));
    }

    private static void AddPatches(List<int> ids, List<int> positions, int patch, int count)
    {
        for (int i = 0; i < count; i++)
        {
            positions.Add(ids.Count);
            ids.Add(patch);
        }
    }
}
