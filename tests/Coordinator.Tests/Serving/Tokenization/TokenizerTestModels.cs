using System.Text.Json;
using System.Text.Json.Nodes;
using Distributed.Coordinator.Serving.Tokenization;

namespace Distributed.Coordinator.Tests.Serving.Tokenization;

/// <summary>Tokenizers shared by the tests: the tiny fixture's, and small hand-made model directories.</summary>
internal static class TokenizerTestModels
{
    private static readonly Lazy<Llama4Tokenizer> MaverickTokenizer =
        new(() => Llama4Tokenizer.Load(TestPaths.Fixture("tiny-maverick")));

    /// <summary>tests/fixtures/tiny-maverick's tokenizer (vocab 512, bos 500, eot 507).</summary>
    public static Llama4Tokenizer Maverick => MaverickTokenizer.Value;

    /// <summary>
    /// A temporary copy of tiny-maverick's tokenizer-related files that a test may edit before loading; deleted on
    /// dispose.
    /// </summary>
    public sealed class EditableModel : IDisposable
    {
        private static readonly string[] Files =
            ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"];

        public EditableModel()
        {
            Directory = Path.Combine(Path.GetTempPath(), "llama4-tokenizer-tests", Guid.NewGuid().ToString("N"));
            System.IO.Directory.CreateDirectory(Directory);
            foreach (string file in Files)
            {
                File.Copy(Path.Combine(TestPaths.Fixture("tiny-maverick"), file), Path.Combine(Directory, file));
            }
        }

        public string Directory { get; }

        public string PathOf(string file) => Path.Combine(Directory, file);

        /// <summary>Parses <paramref name="file"/>, lets <paramref name="edit"/> change it, writes it back.</summary>
        public void Edit(string file, Action<JsonObject> edit)
        {
            JsonObject root = JsonNode.Parse(File.ReadAllText(PathOf(file)))!.AsObject();
            edit(root);
            File.WriteAllText(PathOf(file), root.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        }

        public Llama4Tokenizer Load() => Llama4Tokenizer.Load(Directory);

        public void Dispose()
        {
            try
            {
                System.IO.Directory.Delete(Directory, recursive: true);
            }
            catch (IOException)
            {
                // A leftover temp folder is harmless.
            }
        }
    }

    /// <summary>
    /// Writes a minimal model directory: 256 byte tokens, the given merges (ids from 256 on), the four chat special
    /// tokens after them, and a config.json with <paramref name="vocabSize"/> (default: exactly the tokens).
    /// </summary>
    public static string WriteSynthetic(
        string directory, IReadOnlyList<(string Left, string Right)> merges, bool ignoreMerges, bool mergesAsStrings = false,
        int? vocabSize = null)
    {
        System.IO.Directory.CreateDirectory(directory);
        var vocab = new JsonObject();
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            vocab[ByteLevelAlphabet.ByteToChar((byte)b).ToString()] = next++;
        }

        var mergeArray = new JsonArray();
        foreach ((string left, string right) in merges)
        {
            if (!vocab.ContainsKey(left + right))
            {
                vocab[left + right] = next++;
            }

            mergeArray.Add(mergesAsStrings ? JsonValue.Create(left + " " + right) : new JsonArray(left, right));
        }

        var added = new JsonArray();
        int bos = next;
        foreach (string token in new[]
                 {
                     Llama4Tokenizer.BeginOfTextToken, Llama4Tokenizer.HeaderStartToken, Llama4Tokenizer.HeaderEndToken,
                     Llama4Tokenizer.EndOfTurnToken,
                 })
        {
            added.Add(new JsonObject { ["id"] = next++, ["content"] = token, ["special"] = true });
        }

        var tokenizer = new JsonObject
        {
            ["version"] = "1.0",
            ["added_tokens"] = added,
            ["normalizer"] = null,
            ["pre_tokenizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray(
                    new JsonObject
                    {
                        ["type"] = "Split",
                        ["pattern"] = new JsonObject { ["Regex"] = TinyTokenizerGenerator.Llama4SplitPattern },
                        ["behavior"] = "Isolated",
                        ["invert"] = false,
                    },
                    new JsonObject { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["use_regex"] = false }),
            },
            ["decoder"] = new JsonObject { ["type"] = "ByteLevel" },
            ["model"] = new JsonObject
            {
                ["type"] = "BPE",
                ["ignore_merges"] = ignoreMerges,
                ["vocab"] = vocab,
                ["merges"] = mergeArray,
            },
        };
        File.WriteAllText(Path.Combine(directory, "tokenizer.json"), tokenizer.ToJsonString());
        var config = new JsonObject
        {
            ["vocab_size"] = vocabSize ?? next,
            ["bos_token_id"] = bos,
            ["eos_token_id"] = bos + 3,
        };
        File.WriteAllText(Path.Combine(directory, "config.json"), config.ToJsonString());
        return directory;
    }

    /// <summary>A fresh empty temporary directory path (not created).</summary>
    public static string TempDirectory() =>
        Path.Combine(Path.GetTempPath(), "llama4-tokenizer-tests", Guid.NewGuid().ToString("N"));
}
