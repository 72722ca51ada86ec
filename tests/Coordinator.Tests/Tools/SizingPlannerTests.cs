using Distributed.Checkpoint;
using Distributed.Coordinator.Cli;
using Distributed.Coordinator.Tools;
using Distributed.Kernels;
using Distributed.Protocol.Contracts;

namespace Distributed.Coordinator.Tests.Tools;

/// <summary>
/// The sizing simulator's arithmetic against values computed by hand for Llama 4 Maverick
/// (<c>tests/fixtures/maverick-config</c>, the shape of docs/OPERATIONS.md §3).
/// </summary>
[Trait("Category", "Unit")]
public sealed class SizingPlannerTests
{
    private static readonly Llama4TextConfig Maverick = Llama4ConfigParser.Parse(
        File.ReadAllText(Path.Combine(TestPaths.Fixture("maverick-config"), "config.json")), "maverick-config");

    private static SizingPlan Plan(ExpertWeightFormat experts = ExpertWeightFormat.Fp8E4M3, double gib = 80, KvCacheDType kv = KvCacheDType.Bf16,
        int[]? batches = null) => SizingPlanner.Plan(new SizingInput
        {
            Config = Maverick,
            Gpus = 8,
            Gpu = GpuSpec.H100 with { MemoryGiB = gib },
            Experts = experts,
            KvDType = kv,
            Batches = batches ?? [1, 128],
        });

    [Fact]
    public void Maverick_ParametersAndExpertBytes_AreTheHandComputedOnes()
    {
        var p = Plan();
        Assert.Equal(125_829_120L, p.ExpertParameters);                 // 3 × 5120 × 8192
        Assert.Equal(3072L, p.RoutedExperts);                           // 24 MoE layers × 128
        Assert.Equal(125_829_120L + ((16_384 + 5120) * 4), p.ExpertBytes); // 1 byte per weight + one fp32 scale per output channel (84 KiB)
        // attention 48 × (5120·5120 + 2·5120·1024 + 5120·5120) = 3,019,898,880; shared experts 24 × 125,829,120 = 3,019,898,880;
        // dense MLPs 24 × 3 × 5120 × 16384 = 6,039,797,760; routers 24 × 128 × 5120 = 15,728,640; embeddings + lm_head 2 × 202048 × 5120.
        Assert.Equal(3_019_898_880L + 3_019_898_880L + 6_039_797_760L + 15_728_640L + 2_068_971_520L, p.CoordinatorParameters);
        Assert.Equal(14_164_295_680L, p.CoordinatorParameters);
        Assert.Equal(2 * 14_164_295_680L, p.CoordinatorWeightBytes);    // bf16: 26.4 GiB
        Assert.Equal(251_658_240L, Plan(ExpertWeightFormat.Bf16).ExpertBytes); // 240 MiB
    }

    [Fact]
    public void Maverick_Fp8OnEightH100_FitsSevenWorkersOf439Experts_Bf16DoesNot()
    {
        var fp8 = Plan();
        Assert.Equal(7, fp8.Workers);
        Assert.Equal(439L, fp8.ExpertsPerWorker);                       // ceil(3072 / 7)
        Assert.Equal(439L * 125_915_136, fp8.WorkerWeightBytes);        // 51.5 GiB
        // Per call: 4096 rows × (18·5120 + 16·8192 + 16) bytes of FP8 expert scratch (wire rows, decoded input, output and
        // reply included), twice (arena growth), plus a 32 MiB cuBLAS workspace; two calls; plus the 2 GiB headroom (the
        // same formula the worker measures with).
        Assert.Equal((2L * ((2L * 4096 * ((18 * 5120) + (16 * 8192) + 16)) + (32L << 20))) + (2L << 30), fp8.WorkerWorkspaceBytes);
        Assert.True(fp8.Fits);
        var bf16 = Plan(ExpertWeightFormat.Bf16);
        Assert.Equal(439L * 251_658_240, bf16.WorkerWeightBytes);       // 102.9 GiB > 80
        Assert.False(bf16.Fits);
        Assert.True(Plan(ExpertWeightFormat.Bf16, gib: 141).Fits);      // H200-sized GPUs hold them
    }

    [Fact]
    public void Maverick_KvPerTokenBudgetBatchAndContext_AreTheHandComputedOnes()
    {
        var p = Plan();
        // K + V of one position of one layer: 2 × 8 × 128 × 2 B = 4 KiB; 48 layers within the chunk, 12 NoPE layers beyond.
        Assert.Equal((48L * 4096, 12L * 4096), p.KvBytesPerToken);
        Assert.Equal(2000L, p.SequenceTokens);
        Assert.Equal(4096L * ((12 * 2000) + (36 * 2000)), p.KvBytesPerSequence); // 375 MiB
        long workspace = (512L * ((202_048 * 4) + (8 * 5120 * 4) + (2 * 16_384 * 4))) + (2L << 30);
        Assert.Equal(workspace, p.CoordinatorWorkspaceBytes);
        long budget = (80L << 30) - (2 * 14_164_295_680L) - workspace;
        Assert.Equal(budget, p.KvBudgetBytes);
        Assert.Equal(budget / 393_216_000, p.MaxBatch);                 // 139
        Assert.Equal(139L, p.MaxBatch);
        // Batch 1 at 80 GiB: past the chunk every token costs 48 KiB, so the context reaches max_position_embeddings.
        Assert.Equal(1_048_576L, p.MaxContext);
        // At 40 GiB: 8192 + (budget − KV(8192)) / 48 KiB, KV(8192) = 4096 × 48 × 8192.
        long budget40 = (40L << 30) - (2 * 14_164_295_680L) - workspace;
        Assert.Equal(8192 + ((budget40 - (4096L * 48 * 8192)) / (12 * 4096)), Plan(gib: 40).MaxContext);
        // The element type sets the bytes: fp32 doubles them, FP8 keeps one byte plus a 4-byte scale per row.
        Assert.Equal((48L * 8192, 12L * 8192), Plan(kv: KvCacheDType.Fp32).KvBytesPerToken);
        Assert.Equal((48L * 2 * 1028, 12L * 2 * 1028), Plan(kv: KvCacheDType.Fp8E4M3).KvBytesPerToken);
    }

    [Fact]
    public void Maverick_DecodeStepAtBatch1_IsTheHandComputedSum()
    {
        var s = Plan(batches: [1]).Steps[0];
        const double Bw = 3010e9 / 1e3; // bytes per ms
        // Coordinator: weights read once (all but the embedding gather) + KV of one 1500-token context.
        double coordinator = (((14_164_295_680L - 1_034_485_760L) * 2.0) + (4096.0 * 48 * 1500)) / Bw;
        // Experts: one expert hit per MoE layer, on one worker: 24 × 125,915,136 bytes.
        double experts = 24.0 * 125_915_136 / Bw;
        // Data plane: 24 × (0.20 ms + 1 row × 5120 × 4 B out and back × 0.085 ms/MiB).
        double dispatch = 24 * (0.20 + (5120 * 4.0 / (1 << 20) * 0.085));
        Assert.Equal(coordinator, s.CoordinatorMs, 1e-9);
        Assert.Equal(experts, s.ExpertMs, 1e-9);
        Assert.Equal(dispatch, s.DispatchMs, 1e-9);
        Assert.Equal(coordinator + experts, s.StepMsFloor, 1e-9);
        Assert.Equal(coordinator + experts + dispatch + (48 * 0.40), s.StepMsThisBuild, 1e-9);
        Assert.InRange(s.StepMsFloor, 9.8, 9.9);
        Assert.InRange(s.StepMsThisBuild, 33.8, 33.9);
    }

    [Fact]
    public void Maverick_DistinctExpertsPerLayer_GrowWithTheBatch()
    {
        var p = Plan(batches: [1, 128, 4096]);
        // 128 tokens hit 128 · (1 − (127/128)^128) ≈ 81.2 distinct experts per layer: 12 on the busiest of 7 workers.
        Assert.Equal(24.0 * 12 * 125_915_136 / (3010e9 / 1e3), p.Steps[1].ExpertMs, 1e-6);
        // 4096 tokens hit all 128 (19 on the busiest worker, ceil(128 / 7)): streaming 19 experts takes 0.79 ms, their FLOPs
        // (2 × 125.8 M × 4096 / 7) 0.19 ms at 777 TFLOP/s, so the weights still bound the layer.
        Assert.Equal(24.0 * 19 * 125_915_136 / (3010e9 / 1e3), p.Steps[2].ExpertMs, 1e-6);
        Assert.True(p.Steps[0].TokensPerSecondFloor < p.Steps[1].TokensPerSecondFloor);
        Assert.False(p.Steps[2].Fits);
    }

    [Theory]
    [InlineData("--gpus", "1", "must be an integer in [2")]
    [InlineData("--gpu", "a100", "must be h100 or h200")]
    [InlineData("--precision", "int4", "must be fp8 or bf16")]
    [InlineData("--kv-dtype", "fp16", "must be fp32, bf16 or fp8")]
    [InlineData("--data-plane", "rdma", "must be shm or grpc")]
    [InlineData("--gpu-memory-gib", "0", "must be in (0, 4096]")]
    public async Task Cli_BadOptions_AreUsageErrors(string option, string value, string expected)
    {
        var stderr = new StringWriter();
        int rc = await CommandLine.RunAsync(["plan", "--model", TestPaths.Fixture("maverick-config"), option, value], new StringWriter(), stderr);
        Assert.Equal(2, rc);
        Assert.Contains(expected, stderr.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Cli_ReadsADirectoryOrABareConfig_AndPrintsTheMemoryAndTheSteps()
    {
        foreach (string model in new[] { TestPaths.Fixture("maverick-config"), Path.Combine(TestPaths.Fixture("maverick-config"), "config.json") })
        {
            var stdout = new StringWriter();
            int rc = await CommandLine.RunAsync(["plan", "--model", model, "--gpus", "8", "--gpu-memory-gib", "80", "--precision", "fp8"], stdout, new StringWriter());
            Assert.Equal(0, rc);
            string text = stdout.ToString();
            Assert.Contains("439 experts each = 51.5 GiB", text, StringComparison.Ordinal);
            Assert.Contains("largest batch of 2000-token sequences: 139", text, StringComparison.Ordinal);
            Assert.Contains("at the largest batch (139)", text, StringComparison.Ordinal);
        }
        var bf16 = new StringWriter();
        Assert.Equal(0, await CommandLine.RunAsync(["plan", "--model", TestPaths.Fixture("maverick-config"), "--precision", "bf16"], bf16, new StringWriter()));
        Assert.Contains("fits: NO: the workers' experts do not fit", bf16.ToString(), StringComparison.Ordinal);
        // An FP8 release's config (quantization_config) defaults to FP8 experts.
        var fp8Release = new StringWriter();
        Assert.Equal(0, await CommandLine.RunAsync(["plan", "--model", TestPaths.Fixture("tiny-maverick-fp8"), "--gpus", "2", "--json"], fp8Release, new StringWriter()));
        Assert.Contains("\"precision\":\"fp8\"", fp8Release.ToString(), StringComparison.Ordinal);
    }
}
