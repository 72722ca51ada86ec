using System.Text.Json;

namespace Distributed.Coordinator.Serving.Tokenization;

/// <summary>
/// Pieces of a Hugging Face byte-level BPE <c>tokenizer.json</c>, in the field order HF writes them, for the tokenizers
/// this repository generates (synthetic checkpoints, the tiny test fixtures).
/// </summary>
internal static class TokenizerJsonWriter
{
    /// <summary>An <c>added_tokens</c> (or <c>added_tokens_decoder</c>, without id) entry for a special token.</summary>
    public static void WriteAddedToken(Utf8JsonWriter w, int? id, string content)
    {
        w.WriteStartObject();
        if (id is int value)
        {
            w.WriteNumber("id", value);
        }
        w.WriteString("content", content);
        w.WriteBoolean("single_word", false);
        w.WriteBoolean("lstrip", false);
        w.WriteBoolean("rstrip", false);
        w.WriteBoolean("normalized", false);
        w.WriteBoolean("special", true);
        w.WriteEndObject();
    }

    /// <summary>The <c>decoder</c> property: ByteLevel.</summary>
    public static void WriteByteLevelDecoder(Utf8JsonWriter w)
    {
        w.WriteStartObject("decoder");
        w.WriteString("type", "ByteLevel");
        w.WriteBoolean("add_prefix_space", true);
        w.WriteBoolean("trim_offsets", true);
        w.WriteBoolean("use_regex", true);
        w.WriteEndObject();
    }

    /// <summary>The <c>model</c> property: BPE over <paramref name="vocab"/> (token → id) with <paramref name="merges"/> in rank order.</summary>
    public static void WriteBpeModel(Utf8JsonWriter w, IEnumerable<(string Token, int Id)> vocab, IEnumerable<(string Left, string Right)> merges, bool ignoreMerges)
    {
        w.WriteStartObject("model");
        w.WriteString("type", "BPE");
        w.WriteNull("dropout");
        w.WriteNull("unk_token");
        w.WriteNull("continuing_subword_prefix");
        w.WriteNull("end_of_word_suffix");
        w.WriteBoolean("fuse_unk", false);
        w.WriteBoolean("byte_fallback", false);
        w.WriteBoolean("ignore_merges", ignoreMerges);
        w.WriteStartObject("vocab");
        foreach (var (token, id) in vocab)
        {
            w.WriteNumber(token, id);
        }
        w.WriteEndObject();
        w.WriteStartArray("merges");
        foreach (var (left, right) in merges)
        {
            w.WriteStartArray();
            w.WriteStringValue(left);
            w.WriteStringValue(right);
            w.WriteEndArray();
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }
}
