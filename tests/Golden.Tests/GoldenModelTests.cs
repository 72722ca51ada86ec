using System.Collections.Concurrent;
using System.Text;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Kernels;
using Distributed.Checkpoint;
using Distributed.Kernels.Cpu;
using Xunit.Abstractions;

[assembly: CollectionBehavior(DisableTestParallelization = true)]

namespace Distributed.Golden.Tests;

/// <summary>
/// The golden fixtures judge the model math: last-position logits within the fixture tolerance (2e-3), argmax at every
/// (listed) prompt position, routing and the 16 greedy tokens exact. A failure names the first layer whose hidden
/// state diverges from golden.safetensors.
/// </summary>
[Trait("Category", "Golden")]
public sealed class GoldenModelTests(ITestOutputHelper output)
{
    private static readonly ConcurrentDictionary<(string, CpuMatMulPrecision), Lazy<(Llama4Engine Engine, GoldenFixture Golden)>> Engines = new();

    public static TheoryData<string, int> ShortPrompts()
    {
        var data = new TheoryData<string, int>();
        foreach (var name in new[] { "tiny-maverick", "tiny-scout", "tiny-maverick-mm" })
        {
            for (int i = 0; i < GoldenFixture.Load(name).Prompts.Count; i++)
            {
                data.Add(name, i);
            }
        }
        return data;
    }

    public static TheoryData<string, int> LongPrompts()
    {
        var data = new TheoryData<string, int>();
        for (int i = 0; i < GoldenFixture.Load("tiny-maverick-long").Prompts.Count; i++)
        {
            data.Add("tiny-maverick-long", i);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(ShortPrompts))]
    public Task ShortFixturePrompt_MatchesGolden(string fixture, int prompt) => CheckAsync(fixture, prompt, prefillChunk: 512);

    [Theory]
    [MemberData(nameof(ShortPrompts))]
    public Task ShortFixturePrompt_TokenByTokenPrefill_MatchesGolden(string fixture, int prompt) => CheckAsync(fixture, prompt, prefillChunk: 1);

    [Theory]
    [MemberData(nameof(LongPrompts))]
    public Task LongContextPrompt_ChunkedPrefill_MatchesGolden(string fixture, int prompt) => CheckAsync(fixture, prompt, prefillChunk: 1000);

    /// <summary>
    /// The bf16 matmul precision (opt-in speed mode: activations rounded to bf16 at every matmul input) is not held to
    /// the fp32 golden tolerances. On these tiny random models a bf16 rounding can flip a near-tied router choice or
    /// argmax, after which the greedy continuation differs, as it would between HF in bf16 and in fp32. What must
    /// hold: prefill argmax and routing agree with the fixtures at nearly every position (a wrong kernel agrees at
    /// chance level), and the figures are printed.
    /// </summary>
    [Bf16Fact]
    public async Task Bf16Precision_AgreesWithGoldenArgmaxAndRoutingAtNearlyEveryPosition()
    {
        foreach (var fixture in new[] { "tiny-maverick", "tiny-scout" })
        {
            using var engine = Llama4Engine.Load(TestPaths.Fixture(fixture), new CpuKernelBackend(0, CpuMatMulPrecision.Bf16));
            var golden = GoldenFixture.Load(fixture);
            int argmaxSame = 0, argmaxAll = 0, routeSame = 0, routeAll = 0, tokensSame = 0;
            var logitErrors = new List<double>();
            foreach (var p in golden.Prompts)
            {
                var r = await engine.InferAsync(p.InputIds, p.NewTokens.Length, CancellationToken.None);
                logitErrors.Add(p.LastLogits.Select((v, j) => Math.Abs(r.LastLogits[j] - v)).Max());
                int[] argmaxPositions = p.ArgmaxPositions ?? Enumerable.Range(0, p.InputIds.Length).ToArray();
                for (int j = 0; j < argmaxPositions.Length; j++, argmaxAll++)
                {
                    argmaxSame += r.Argmax[argmaxPositions[j]] == p.Argmax[j] ? 1 : 0;
                }
                int[] expertPositions = p.ExpertsPositions ?? Enumerable.Range(0, p.InputIds.Length).ToArray();
                foreach (var (layer, expected) in p.ExpertsTop1)
                {
                    for (int j = 0; j < expertPositions.Length; j++, routeAll++)
                    {
                        routeSame += r.Experts[layer][expertPositions[j]][0] == expected[j] ? 1 : 0;
                    }
                }
                tokensSame += r.NewTokens.Zip(p.NewTokens).TakeWhile(t => t.First == t.Second).Count();
            }
            logitErrors.Sort();
            double argmaxRate = (double)argmaxSame / argmaxAll, routeRate = (double)routeSame / routeAll;
            output.WriteLine($"{fixture} bf16: prefill argmax {argmaxSame}/{argmaxAll} ({argmaxRate:P1}), routing {routeSame}/{routeAll} ({routeRate:P1}), " +
                $"greedy prefix {tokensSame}/{golden.Prompts.Sum(p => p.NewTokens.Length)} tokens, last-logit max |diff| median {logitErrors[logitErrors.Count / 2]:E2}, worst {logitErrors[^1]:E2}");
            Assert.True(argmaxRate >= 0.9, $"{fixture}: bf16 prefill argmax agrees at only {argmaxRate:P1} of positions");
            Assert.True(routeRate >= 0.9, $"{fixture}: bf16 routing agrees at only {routeRate:P1} of positions");
        }
    }

    private async Task CheckAsync(string fixture, int promptIndex, int prefillChunk, CpuMatMulPrecision precision = CpuMatMulPrecision.Fp32)
    {
        var (engine, golden) = Engines.GetOrAdd((fixture, precision), f => new Lazy<(Llama4Engine, GoldenFixture)>(() =>
            (Llama4Engine.Load(TestPaths.Fixture(f.Item1), new CpuKernelBackend(0, f.Item2)), GoldenFixture.Load(f.Item1)))).Value;
        var p = golden.Prompts[promptIndex];
        var recorder = new HiddenStateRecorder(p.InputIds.Length);
        engine.Model.Observer = recorder;
        engine.PrefillChunkTokens = prefillChunk;
        InferenceResult r;
        try
        {
            r = await engine.InferAsync(p.InputIds, p.NewTokens.Length, CancellationToken.None);
        }
        finally
        {
            engine.Model.Observer = null;
        }

        var failures = new List<string>();
        double maxDiff = 0;
        for (int j = 0; j < p.LastLogits.Length; j++)
        {
            maxDiff = Math.Max(maxDiff, Math.Abs(r.LastLogits[j] - p.LastLogits[j]));
        }
        output.WriteLine($"{fixture} {p.Name} ({precision}): {p.InputIds.Length} tokens, last-logit max |diff| {maxDiff:E3} (tolerance {golden.LogitTolerance})");
        if (!(maxDiff <= golden.LogitTolerance) && precision == CpuMatMulPrecision.Fp32)
        {
            failures.Add($"last_logits max |diff| {maxDiff:E3} > {golden.LogitTolerance}");
        }

        int[] argmaxPositions = p.ArgmaxPositions ?? Enumerable.Range(0, p.InputIds.Length).ToArray();
        for (int j = 0; j < argmaxPositions.Length; j++)
        {
            if (r.Argmax[argmaxPositions[j]] != p.Argmax[j])
            {
                failures.Add($"argmax at position {argmaxPositions[j]}: got {r.Argmax[argmaxPositions[j]]}, expected {p.Argmax[j]}");
                break;
            }
        }
        int[] expertPositions = p.ExpertsPositions ?? Enumerable.Range(0, p.InputIds.Length).ToArray();
        foreach (var (layer, expected) in p.ExpertsTop1)
        {
            for (int j = 0; j < expertPositions.Length; j++)
            {
                int got = r.Experts[layer][expertPositions[j]][0];
                if (got != expected[j])
                {
                    failures.Add($"routing of layer {layer} at position {expertPositions[j]}: got expert {got}, expected {expected[j]}");
                    break;
                }
            }
        }
        if (!r.NewTokens.SequenceEqual(p.NewTokens))
        {
            failures.Add($"greedy tokens: got [{string.Join(",", r.NewTokens)}], expected [{string.Join(",", p.NewTokens)}]");
        }
        foreach (var (layer, expected) in p.FedTokenExpertsTop1)
        {
            var got = r.FedTokenExperts[layer].Select(ids => ids[0]).ToArray();
            if (!got.SequenceEqual(expected))
            {
                failures.Add($"routing of fed tokens in layer {layer}: got [{string.Join(",", got)}], expected [{string.Join(",", expected)}]");
            }
        }
        if (failures.Count > 0)
        {
            string divergence = FirstDivergence(golden, p, engine.Config, recorder, argmaxPositions);
            Assert.Fail($"{fixture} {p.Name} (prefill chunk {prefillChunk}):\n  {string.Join("\n  ", failures)}\n{divergence}\n" +
                "Fixtures are never edited: fix the model (regenerate only with the fixture's own generator, see its README).");
        }
    }

    private static string FirstDivergence(GoldenFixture golden, GoldenPrompt p, Llama4TextConfig config, HiddenStateRecorder recorder, int[] positions)
    {
        using var file = SafetensorsFile.Open(Path.Combine(golden.Directory, "golden.safetensors"));
        float[] expected = file.ReadF32($"p{p.Index}.hidden_states");
        int h = config.HiddenSize, rowsPerLayer = positions.Length;
        var sb = new StringBuilder("hidden-state comparison (tolerance 1e-3): ");
        for (int layer = 0; layer <= config.NumLayers; layer++)
        {
            string name = layer == 0 ? "embed" : $"L{layer - 1}.out";
            var got = recorder.Get(name);
            double worst = 0;
            int worstPos = -1;
            for (int j = 0; j < rowsPerLayer; j++)
            {
                int pos = positions[j];
                for (int d = 0; d < h; d++)
                {
                    double diff = Math.Abs(got[pos * h + d] - expected[(layer * rowsPerLayer + j) * h + d]);
                    if (!(diff <= worst))
                    {
                        worst = diff;
                        worstPos = pos;
                    }
                }
            }
            if (!(worst <= 1e-3))
            {
                return sb.Append($"first divergence after {(layer == 0 ? "the embedding" : $"decoder layer {layer - 1}")}: max |diff| {worst:E3} at position {worstPos}").ToString();
            }
        }
        return sb.Append("every layer's hidden state is within 1e-3; the divergence is after the last layer (final norm / lm_head / sampling)").ToString();
    }

    /// <summary>Keeps the prompt rows of the residual stream per layer, across prefill pieces.</summary>
    private sealed class HiddenStateRecorder(int promptLength) : IActivationObserver
    {
        private readonly Dictionary<string, List<float>> _rows = [];

        public void OnTensor(string name, ReadOnlySpan<float> data, int rows, int cols)
        {
            if (name != "embed" && !name.EndsWith(".out", StringComparison.Ordinal))
            {
                return;
            }
            if (!_rows.TryGetValue(name, out var list))
            {
                _rows[name] = list = new List<float>(promptLength * cols);
            }
            int room = promptLength * cols - list.Count;
            if (room > 0)
            {
                list.AddRange(data[..Math.Min(room, data.Length)]);
            }
        }

        public float[] Get(string name) => _rows.TryGetValue(name, out var l) ? [.. l] : [];
    }
}
