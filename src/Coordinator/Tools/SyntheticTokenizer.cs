using System.Text.Json;
using Distributed.Checkpoint;
using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Tools;

/// <summary>
/// A byte-level BPE <c>tokenizer.json</c> for a synthetic checkpoint, so that <c>serve</c> (and load tests through it)
/// run on any synthetic shape. Generated here, not taken from any model: the Llama 4 special tokens the runtime needs,
/// all 256 byte tokens, then merges of letter/digit/space pairs (and space + pair) until the vocabulary is full, so most
/// ids a random model emits decode to text.
/// </summary>
/// <remarks>
/// Ids: 0 <c>&lt;|header_start|&gt;</c>, 1 <c>&lt;|begin_of_text|&gt;</c> (bos), 2 <c>&lt;|eot|&gt;</c> (eos),
/// 3 <c>&lt;|header_end|&gt;</c>, 4 <c>&lt;|end_of_text|&gt;</c>, 5–260 the bytes, 261 … vocab − 2 merges (as many as
/// fit), vocab − 1 <c>&lt;|finetune_right_pad|&gt;</c> (pad), matching <see cref="SyntheticCheckpointOptions"/>'s bos 1,
/// eos 2, pad vocab − 1.
/// </remarks>
public static class SyntheticTokenizer
{
    /// <summary>The smallest vocabulary that holds the special tokens and every byte.</summary>
    public const int MinVocabSize = FirstByteId + 256 + 1;

    private const int FirstByteId = 5;

    /// <summary>
    /// The <c>tokenizer.json</c> text for <paramref name="config"/>, or null when its vocabulary is below
    /// <see cref="MinVocabSize"/> (no byte-level tokenizer fits).
    /// </summary>
    public static string? Json(Llama4TextConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        int vocabSize = config.VocabSize;
        if (vocabSize < MinVocabSize || config.BosTokenId != 1 || !config.EosTokenIds.SequenceEqual([2]) || config.PadTokenId != vocabSize - 1)
        {
            return null;
        }
        var vocab = new List<(string Token, int Id)>();
        for (int b = 0; b < 256; b++)
        {
            vocab.Add((ByteLevelAlphabet.ByteToChar((byte)b).ToString(), FirstByteId + b));
        }
        var merges = new List<(string Left, string Right)>();
        int next = FirstByteId + 256;
        int lastMergeId = vocabSize - 2;
        string space = ByteLevelAlphabet.ByteToChar((byte)' ').ToString();
        var symbols = Enumerable.Range('a', 26).Concat(Enumerable.Range('A', 26)).Concat(Enumerable.Range('0', 10))
            .Select(c => ((char)c).ToString()).Append(space).ToArray();
        var pairs = new List<string>();
        foreach (string left in symbols)
        {
            foreach (string right in symbols)
            {
                if (next > lastMergeId)
                {
                    break;
                }
                merges.Add((left, right));
                vocab.Add((left + right, next++));
                pairs.Add(left + right);
            }
        }
        foreach (string pair in pairs.Where(p => !p.StartsWith(space, StringComparison.Ordinal)))
        {
            if (next > lastMergeId)
            {
                break;
            }
            merges.Add((space, pair));
            vocab.Add((space + pair, next++));
        }

        using var stream = new MemoryStream();
        using (var w = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("version", "1.0");
            w.WriteNull("truncation");
            w.WriteNull("padding");
            w.WriteStartArray("added_tokens");
            foreach (var (id, content) in new[]
            {
                (0, "<|header_start|>"), (1, "<|begin_of_text|>"), (2, "<|eot|>"), (3, "<|header_end|>"), (4, "<|end_of_text|>"),
                (vocabSize - 1, "<|finetune_right_pad|>"),
            })
            {
                TokenizerJsonWriter.WriteAddedToken(w, id, content);
            }
            w.WriteEndArray();
            w.WriteNull("normalizer");
            w.WriteStartObject("pre_tokenizer");
            w.WriteString("type", "ByteLevel");
            w.WriteBoolean("add_prefix_space", false);
            w.WriteBoolean("trim_offsets", true);
            w.WriteBoolean("use_regex", true);
            w.WriteEndObject();
            w.WriteNull("post_processor");
            TokenizerJsonWriter.WriteByteLevelDecoder(w);
            TokenizerJsonWriter.WriteBpeModel(w, vocab, merges, ignoreMerges: false);
            w.WriteEndObject();
        }
        return System.Text.Encoding.UTF8.GetString(stream.ToArray());
    }
}
