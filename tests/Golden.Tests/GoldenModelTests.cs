using System.Collections.Concurrent;
using System.Text;
using Distributed.Checkpoint;
using Distributed.Coordinator.Model.Llama4;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Kernels;
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
    private static readonly ConcurrentDictionary<(string, CpuMatMulPrecision, ExpertLoadOptions, string), Lazy<(Llama4Engine Engine, GoldenFixture Golden)>> Engines = new();

    /// <summary>
    /// The FP8 goldens: each run of experts against the golden it must match. <c>tiny-maverick-fp8</c> is the release
    /// format (weight-only → golden.json, W8A8 → golden_fp8_act.json); <c>tiny-maverick-mm</c> is its bf16 source, which
    /// <c>--quantize fp8</c> turns into the same experts, so it must match the same goldens.
    /// </summary>
    public static TheoryData<string, string, string, int> Fp8Prompts()
    {
        var data = new TheoryData<string, string, string, int>();
        foreach (var (model, mode, golden) in Fp8Runs)
        {
            for (int i = 0; i < GoldenFixture.Load("tiny-maverick-fp8", golden).Prompts.Count; i++)
            {
                data.Add(model, mode, golden, i);
            }
        }
        return data;
    }

    private static readonly (string Model, string Mode, string Golden)[] Fp8Runs =
    [
        ("tiny-maverick-fp8", "weight-only", "golden.json"),
        ("tiny-maverick-fp8", "fp8-activations", "golden_fp8_act.json"),
        ("tiny-maverick-mm", "quantize-fp8", "golden.json"),
        ("tiny-maverick-mm", "quantize-fp8+fp8-activations", "golden_fp8_act.json"),
    ];

    private static ExpertLoadOptions Fp8Options(string mode) => new(
        mode.StartsWith("quantize-fp8", StringComparison.Ordinal) ? ExpertQuantization.Fp8 : ExpertQuantization.None,
        mode.EndsWith("fp8-activations", StringComparison.Ordinal) ? Fp8ActivationMode.PerTokenFp8 : Fp8ActivationMode.WeightOnly);

    [Theory]
    [MemberData(nameof(Fp8Prompts))]
    public Task Fp8Experts_MatchTheirGolden(string model, string mode, string golden, int prompt) =>
        CheckAsync(model, prompt, prefillChunk: 512, experts: Fp8Options(mode), goldenFixture: "tiny-maverick-fp8", goldenFile: golden,
            logitExemption: KnownActivationTie(golden, prompt));

    [Theory]
    [MemberData(nameof(Fp8Prompts))]
    public Task Fp8Experts_TokenByTokenPrefill_MatchTheirGolden(string model, string mode, string golden, int prompt) =>
        CheckAsync(model, prompt, prefillChunk: 1, experts: Fp8Options(mode), goldenFixture: "tiny-maverick-fp8", goldenFile: golden,
            logitExemption: KnownActivationTie(golden, prompt));

    /// <summary>
    /// Where golden_fp8_act.json sits on a rounding tie of the per-token activation quantization. Over its four prompts
    /// seven routed-row elements have x / s within 1e-5 (relative) of a tie between two E4M3 values, i.e. within float32
    /// noise (this engine's residual stream after layer 0 differs from the golden's by up to 6.5e-6 relative: ordinary
    /// summation-order differences; the README's f32-vs-f64 check is 5.6e-6 on logits). Six round the golden's way. One,
    /// prompt 3 (p3_len48), MoE layer 1, position 20, element 22 (x / s = 8.500011, 1.3e-6 above the 8 | 9 tie), rounds
    /// to 9 here and to 8 in the golden, and that one code moves the last logits by 0.019. The fixture's margins cover
    /// argmax and routing decisions, not quantization ties. Resolving that single element the golden's way makes the
    /// prompt match to 1.1e-5 (checked while building this). For this prompt of this golden only, the logit bound is
    /// reported but not asserted; argmax, routing and greedy tokens stay exact, and
    /// <see cref="Fp8Activations_Prompt3_SitsOnAQuantizationTie"/> proves the tie is there.
    /// </summary>
    private static string? KnownActivationTie(string golden, int prompt) =>
        golden == "golden_fp8_act.json" && prompt == 3 ? "activation quantization tie at layer 1, position 20, element 22 (see KnownActivationTie)" : null;

    [Fact]
    public async Task Fp8Activations_Prompt3_SitsOnAQuantizationTie()
    {
        var golden = GoldenFixture.Load("tiny-maverick-fp8", "golden_fp8_act.json");
        string dir = TestPaths.Fixture("tiny-maverick-fp8");
        var options = Fp8Options("fp8-activations");
        using var checkpoint = CheckpointReader.Open(dir);
        using var local = new Coordinator.Moe.LocalExpertDispatcher(checkpoint, TestBackend.Value, options);
        var capture = new CapturingDispatcher(local);
        using var engine = Llama4Engine.Load(dir, TestBackend.Value, capture, options);
        var closest = new List<(double Distance, int Prompt, int Layer, int Position, int Element, float Quotient)>();
        for (int p = 0; p < golden.Prompts.Count; p++)
        {
            capture.Reset();
            await engine.InferAsync(golden.Prompts[p].InputIds, 0, CancellationToken.None);
            foreach (var (layer, position, row) in capture.Rows)
            {
                float s = Fp8E4M3.RowScale(row);
                for (int j = 0; j < row.Length; j++)
                {
                    float q = Math.Clamp(row[j] / s, -Fp8E4M3.MaxValue, Fp8E4M3.MaxValue);
                    closest.Add((TieDistance(q), p, layer, position, j, q));
                }
            }
        }
        closest.Sort((a, b) => a.Distance.CompareTo(b.Distance));
        var near = closest.Where(c => c.Distance < 1e-5).ToList();
        foreach (var c in near)
        {
            output.WriteLine($"prompt {c.Prompt} layer {c.Layer} position {c.Position} element {c.Element}: x/s = {c.Quotient:R}, {c.Distance:E2} (relative) from a rounding tie");
        }
        // Ties within float32 noise are not rare (a few per thousand tokens); all but this one happen to round the
        // golden's way (the other prompts, and the rest of this one, match the golden strictly).
        Assert.Contains(near, c => (c.Prompt, c.Layer, c.Position, c.Element) == (3, 1, 20, 22) && c.Distance < 2e-6);
    }

    /// <summary>
    /// The exemption above, made strict: with that one element moved 1e-5 (relative) off the tie toward the golden's side
    /// (float32 noise, the size of this engine's residual-stream difference from the golden), prompt 3 of golden_fp8_act.json
    /// meets the golden's own logit tolerance, and its argmax, routing and greedy tokens stay exact. So the W8A8 arithmetic
    /// is checked to the fixture's bound on every prompt; only the rounding of a value sitting on a tie differs.
    /// </summary>
    [Fact]
    public async Task Fp8Activations_Prompt3_WithTheTieResolvedTheGoldensWay_MeetsTheStrictBound()
    {
        var golden = GoldenFixture.Load("tiny-maverick-fp8", "golden_fp8_act.json");
        var p = golden.Prompts[3];
        string dir = TestPaths.Fixture("tiny-maverick-fp8");
        var options = Fp8Options("fp8-activations");
        using var checkpoint = CheckpointReader.Open(dir);
        using var local = new Coordinator.Moe.LocalExpertDispatcher(checkpoint, TestBackend.Value, options);
        var nudge = new NudgingDispatcher(local, Layer: 1, Position: 20, Element: 22, Factor: 1 - 1e-5f);
        using var engine = Llama4Engine.Load(dir, TestBackend.Value, nudge, options);
        var r = await engine.InferAsync(p.InputIds, p.NewTokens.Length, CancellationToken.None);
        Assert.True(nudge.Applied, "the tie element was never dispatched");
        double maxDiff = p.LastLogits.Select((v, j) => Math.Abs(r.LastLogits[j] - v)).Max();
        output.WriteLine($"prompt 3 with the tie resolved the golden's way: last-logit max |diff| {maxDiff:E3} (tolerance {golden.LogitTolerance})");
        Assert.True(maxDiff <= golden.LogitTolerance, $"last_logits max |diff| {maxDiff:E3} > {golden.LogitTolerance}");
        Assert.Equal(p.NewTokens, r.NewTokens);
    }

    /// <summary>Scales one element of one position's row at one MoE layer before the experts see it.</summary>
    private sealed class NudgingDispatcher(Coordinator.Moe.IExpertDispatcher inner, int Layer, int Position, int Element, float Factor) : Coordinator.Moe.IExpertDispatcher
    {
        private readonly Dictionary<int, int> _positions = [];

        public bool Applied { get; private set; }

        public ValueTask<Coordinator.Moe.DispatchHandle> DispatchAsync(int layer, ReadOnlyMemory<float> hidden, Coordinator.Moe.RoutingResult routing,
            CancellationToken cancellationToken)
        {
            int h = hidden.Length / (routing.Weights.Length / routing.TopK);
            int first = _positions.GetValueOrDefault(layer);
            int rows = hidden.Length / h;
            _positions[layer] = first + rows;
            if (layer == Layer && Position >= first && Position < first + rows)
            {
                float[] copy = hidden.ToArray();
                copy[((Position - first) * h) + Element] *= Factor;
                Applied = true;
                return inner.DispatchAsync(layer, copy, routing, cancellationToken);
            }
            return inner.DispatchAsync(layer, hidden, routing, cancellationToken);
        }

        public ValueTask CombineAsync(Coordinator.Moe.DispatchHandle handle, Memory<float> output, CancellationToken cancellationToken) =>
            inner.CombineAsync(handle, output, cancellationToken);
    }

    // Relative distance of q from the nearest midpoint between two adjacent E4M3 values.
    private static double TieDistance(float q)
    {
        double best = double.MaxValue;
        float a = Math.Abs(q);
        var values = Fp8E4M3.ValueTable;
        for (int c = 0; c < 0x7E; c++)
        {
            double mid = (values[c] + (double)values[c + 1]) / 2;
            best = Math.Min(best, Math.Abs(a - mid) / Math.Max(a, 1e-30));
        }
        return best;
    }

    private static readonly Lazy<CpuKernelBackend> TestBackend = new(() => new CpuKernelBackend(0));

    /// <summary>Records every routed row (score-scaled, as the experts get it) with its layer and position.</summary>
    private sealed class CapturingDispatcher(Coordinator.Moe.IExpertDispatcher inner) : Coordinator.Moe.IExpertDispatcher
    {
        public List<(int Layer, int Position, float[] Row)> Rows { get; } = [];

        private readonly Dictionary<int, int> _positions = [];

        public void Reset()
        {
            Rows.Clear();
            _positions.Clear();
        }

        public ValueTask<Coordinator.Moe.DispatchHandle> DispatchAsync(int layer, ReadOnlyMemory<float> hidden, Coordinator.Moe.RoutingResult routing,
            CancellationToken cancellationToken)
        {
            int h = hidden.Length / (routing.Weights.Length / routing.TopK);
            int first = _positions.GetValueOrDefault(layer);
            for (int t = 0; t < hidden.Length / h; t++)
            {
                for (int slot = 0; slot < routing.TopK; slot++)
                {
                    float score = routing.Weights.Span[(t * routing.TopK) + slot];
                    Rows.Add((layer, first + t, hidden.Span.Slice(t * h, h).ToArray().Select(v => v * score).ToArray()));
                }
            }
            _positions[layer] = first + (hidden.Length / h);
            return inner.DispatchAsync(layer, hidden, routing, cancellationToken);
        }

        public ValueTask CombineAsync(Coordinator.Moe.DispatchHandle handle, Memory<float> output, CancellationToken cancellationToken) =>
            inner.CombineAsync(handle, output, cancellationToken);
    }

    /// <summary>
    /// The two FP8 semantics are told apart: weight-only arithmetic misses golden_fp8_act.json and W8A8 misses
    /// golden.json (the README's "what a wrong loader gets": max |logit diff| 2.59), so neither golden can pass by accident.
    /// </summary>
    [Fact]
    public async Task Fp8Semantics_AreNotInterchangeable()
    {
        var weightOnly = GoldenFixture.Load("tiny-maverick-fp8", "golden.json");
        var act = GoldenFixture.Load("tiny-maverick-fp8", "golden_fp8_act.json");
        using var engine = Llama4Engine.Load(TestPaths.Fixture("tiny-maverick-fp8"), new CpuKernelBackend(0), experts: Fp8Options("weight-only"));
        double worstAgainstAct = 0;
        for (int i = 0; i < act.Prompts.Count; i++)
        {
            var p = act.Prompts[i];
            var r = await engine.InferAsync(p.InputIds, 0, CancellationToken.None);
            worstAgainstAct = Math.Max(worstAgainstAct, p.LastLogits.Select((v, j) => Math.Abs(r.LastLogits[j] - v)).Max());
            Assert.Equal(weightOnly.Prompts[i].InputIds, p.InputIds);
        }
        output.WriteLine($"weight-only arithmetic against golden_fp8_act.json: worst last-logit |diff| {worstAgainstAct:E3}");
        Assert.True(worstAgainstAct > 10 * act.LogitTolerance, $"weight-only is within {worstAgainstAct:E3} of the W8A8 golden: the goldens cannot tell the semantics apart");
    }

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

    private async Task CheckAsync(string fixture, int promptIndex, int prefillChunk, CpuMatMulPrecision precision = CpuMatMulPrecision.Fp32,
        ExpertLoadOptions? experts = null, string? goldenFixture = null, string goldenFile = "golden.json", string? logitExemption = null)
    {
        experts ??= ExpertLoadOptions.Default;
        var (engine, golden) = Engines.GetOrAdd((fixture, precision, experts, goldenFile), f => new Lazy<(Llama4Engine, GoldenFixture)>(() =>
            (Llama4Engine.Load(TestPaths.Fixture(f.Item1), new CpuKernelBackend(0, f.Item2), experts: f.Item3),
             GoldenFixture.Load(goldenFixture ?? f.Item1, f.Item4)))).Value;
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
        output.WriteLine($"{fixture} {p.Name} ({precision}, experts {experts}, {golden.Name}/{goldenFile}): {p.InputIds.Length} tokens, last-logit max |diff| {maxDiff:E3} (tolerance {golden.LogitTolerance})");
        if (!(maxDiff <= golden.LogitTolerance) && precision == CpuMatMulPrecision.Fp32)
        {
            if (logitExemption is null)
            {
                failures.Add($"last_logits max |diff| {maxDiff:E3} > {golden.LogitTolerance}");
            }
            else
            {
                output.WriteLine($"  last_logits bound not asserted: {logitExemption}");
            }
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
        using var file = SafetensorsFile.Open(Path.Combine(golden.Directory, golden.TensorsFile));
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
