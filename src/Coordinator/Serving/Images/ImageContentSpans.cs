using Distributed.Coordinator.KvCache;
using Distributed.Coordinator.Model.Llama4.Vision;

namespace Distributed.Coordinator.Serving.Images;

/// <summary>The prompt positions each image's rows occupy, with the image's content hash: what the prefix cache mixes into its block keys.</summary>
public static class ImageContentSpans
{
    /// <summary>
    /// One span per image, from its first to its last <c>&lt;|patch|&gt;</c> position (the tile separators between them
    /// included), keyed by the SHA-256 of its preprocessed tiles (<see cref="Llama4ImageTiles.ContentHash"/>).
    /// </summary>
    public static IReadOnlyList<KvContentSpan> Of(Llama4ImagePrompt images)
    {
        ArgumentNullException.ThrowIfNull(images);
        var spans = new List<KvContentSpan>(images.Images.Count);
        int perTile = images.TotalTiles == 0 ? 0 : images.PatchPositions.Length / images.TotalTiles;
        int next = 0;
        foreach (var image in images.Images)
        {
            int count = image.Tiles * perTile;
            if (count == 0)
            {
                continue;
            }
            int first = images.PatchPositions[next], last = images.PatchPositions[next + count - 1];
            spans.Add(new KvContentSpan(first, last - first + 1, System.Text.Encoding.UTF8.GetBytes(image.ContentHash)));
            next += count;
        }
        return spans;
    }
}
