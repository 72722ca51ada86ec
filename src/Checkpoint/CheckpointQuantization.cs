using System.Text.Json;

namespace Distributed.Checkpoint;

/// <summary>
/// The top-level <c>quantization_config</c> of a checkpoint's <c>config.json</c>, as far as this runtime runs it: absent
/// (a bf16 checkpoint), or the compressed-tensors FP8 format of Meta's Llama 4 FP8 release (<c>quant_method</c>
/// <c>compressed-tensors</c>, <c>format</c> <c>float-quantized</c>; weights FP8 <c>num_bits 8</c>, <c>type float</c>,
/// <c>strategy channel</c>, symmetric, static; optional <c>input_activations</c> FP8 <c>strategy token</c>, dynamic).
/// Anything else (fbgemm_fp8, int8, block or group scales, static activation scales, asymmetric) is refused with the
/// field named: running it as if it were one of these would give wrong numbers.
/// </summary>
public sealed record CheckpointQuantization
{
    /// <summary>No <c>quantization_config</c>.</summary>
    public static CheckpointQuantization None { get; } = new();

    /// <summary><c>quant_method</c>, or <c>""</c> without a quantization config.</summary>
    public string Method { get; init; } = "";

    /// <summary>True for the compressed-tensors FP8 per-channel format.</summary>
    public bool IsFp8PerChannel => Method == CompressedTensors;

    /// <summary>
    /// True when the config group declares dynamic per-token FP8 input activations (the release's W8A8 intent, which
    /// <c>--fp8-activations</c> follows; weight-only stays the default).
    /// </summary>
    public bool DeclaresPerTokenActivations { get; init; }

    /// <summary>Module names listed in <c>ignore</c> (kept in bf16); <c>re:</c> patterns are kept verbatim.</summary>
    public IReadOnlyList<string> Ignore { get; init; } = [];

    private const string CompressedTensors = "compressed-tensors";

    /// <summary>Reads the <c>quantization_config</c> of <paramref name="configJson"/> (<see cref="None"/> when absent or null).</summary>
    /// <exception cref="CheckpointException">Malformed JSON or an unsupported quantization; the message names the field.</exception>
    public static CheckpointQuantization Parse(string configJson, string sourceName)
    {
        ArgumentNullException.ThrowIfNull(configJson);
        using (var doc = JsonFields.ParseDocument(configJson, sourceName, 32))
        {
            var top = JsonFields.Of(doc.RootElement, sourceName, "", "the top level");
            if (!top.TryGet("quantization_config", out var qEl))
            {
                return None;
            }
            var q = JsonFields.Of(qEl, sourceName, "quantization_config.", "field 'quantization_config'");
            string method = q.OptionalString("quant_method") ?? throw q.Missing("quant_method", "e.g. \"compressed-tensors\"");
            if (method != CompressedTensors)
            {
                throw new CheckpointException(
                    $"{sourceName}: field 'quantization_config.quant_method' is \"{method}\"; only \"{CompressedTensors}\" (the FP8 Llama 4 release's format) is supported");
            }
            string? format = q.OptionalString("format");
            if (format != "float-quantized")
            {
                throw q.Error("format", "\"float-quantized\" (FP8 weights)", qEl.TryGetProperty("format", out var f) ? f : null);
            }
            if (!q.TryGet("config_groups", out var groupsEl) || groupsEl.ValueKind != JsonValueKind.Object)
            {
                throw q.Error("config_groups", "an object of quantization groups");
            }
            bool perToken = false;
            int groups = 0;
            foreach (var group in groupsEl.EnumerateObject())
            {
                groups++;
                var g = JsonFields.Of(group.Value, sourceName, $"quantization_config.config_groups.{group.Name}.", $"group '{group.Name}'");
                if (!g.TryGet("weights", out var wEl))
                {
                    throw g.Missing("weights", "the weight scheme");
                }
                var w = JsonFields.Of(wEl, sourceName, g.Name("weights."), "field 'weights'");
                Expect(w, "type", "\"float\"", v => v.ValueKind == JsonValueKind.String && v.GetString() == "float");
                Expect(w, "num_bits", "8", v => v.ValueKind == JsonValueKind.Number && v.GetDouble() == 8);
                Expect(w, "strategy", "\"channel\" (one scale per output channel)", v => v.ValueKind == JsonValueKind.String && v.GetString() == "channel");
                ExpectBoolOrAbsent(w, "symmetric", true);
                ExpectBoolOrAbsent(w, "dynamic", false);
                if (g.TryGet("input_activations", out var aEl))
                {
                    var a = JsonFields.Of(aEl, sourceName, g.Name("input_activations."), "field 'input_activations'");
                    Expect(a, "type", "\"float\"", v => v.ValueKind == JsonValueKind.String && v.GetString() == "float");
                    Expect(a, "num_bits", "8", v => v.ValueKind == JsonValueKind.Number && v.GetDouble() == 8);
                    Expect(a, "strategy", "\"token\" (dynamic per-token scales)", v => v.ValueKind == JsonValueKind.String && v.GetString() == "token");
                    ExpectBoolOrAbsent(a, "symmetric", true);
                    Expect(a, "dynamic", "true (scales computed per token at run time)", v => v.ValueKind == JsonValueKind.True);
                    perToken = true;
                }
                if (g.TryGet("output_activations", out var oEl))
                {
                    throw g.Error("output_activations", "null (quantized outputs are not supported)", oEl);
                }
            }
            if (groups == 0)
            {
                throw q.Error("config_groups", "a non-empty object of quantization groups");
            }
            if (q.TryGet("kv_cache_scheme", out var kvEl))
            {
                throw q.Error("kv_cache_scheme", "null (a calibrated FP8 KV cache is not supported; --kv-dtype chooses the cache's element type)", kvEl);
            }
            var ignore = new List<string>();
            if (q.TryGet("ignore", out var iEl))
            {
                if (iEl.ValueKind != JsonValueKind.Array)
                {
                    throw q.Error("ignore", "an array of module names", iEl);
                }
                foreach (var item in iEl.EnumerateArray())
                {
                    if (item.ValueKind != JsonValueKind.String)
                    {
                        throw q.Error("ignore", "an array of module names (strings)", item);
                    }
                    ignore.Add(item.GetString()!);
                }
            }
            return new CheckpointQuantization { Method = method, DeclaresPerTokenActivations = perToken, Ignore = ignore };
        }
    }

    private static void Expect(JsonFields fields, string name, string mustBe, Func<JsonElement, bool> ok)
    {
        if (!fields.TryGet(name, out var v))
        {
            throw fields.Missing(name, mustBe);
        }
        if (!ok(v))
        {
            throw fields.Error(name, mustBe, v);
        }
    }

    private static void ExpectBoolOrAbsent(JsonFields fields, string name, bool expected)
    {
        if (fields.TryGet(name, out var v) && v.ValueKind != (expected ? JsonValueKind.True : JsonValueKind.False))
        {
            throw fields.Error(name, expected ? "true" : "false", v);
        }
    }
}
