using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Distributed.Coordinator.Admin;
using Distributed.Coordinator.Serving.Scheduling;
using Grpc.Core;
using Grpc.Net.Client;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Admin;

/// <summary>
/// The admin API over HTTP (and gRPC) against three real worker processes: authentication, reads, precise errors that
/// change nothing, replica changes, drain refusals and a rebalance (dry run, then for real) with outputs unchanged.
/// </summary>
[Trait("Category", "Integration")]
public sealed class AdminApiTests(AdminClusterFixture fixture, ITestOutputHelper output) : IClassFixture<AdminClusterFixture>
{
    private static readonly JsonSerializerOptions Json = AdminEndpoints.Json;

    private async Task<PlacementInfo> PlacementAsync()
    {
        using var client = fixture.Client();
        return (await client.GetFromJsonAsync<PlacementInfo>("/admin/v1/placement", Json))!;
    }

    private async Task<OperationInfo> WaitAsync(OperationInfo op)
    {
        using var client = fixture.Client();
        // The long poll answers once the operation leaves Staging (or after 30 s with it still staging).
        for (int i = 0; i < 4 && op.State == "Staging"; i++)
        {
            op = (await client.GetFromJsonAsync<OperationInfo>($"/admin/v1/operations/{op.Id}?wait=30", Json))!;
        }
        Assert.Equal("Completed", op.State);
        await Distributed.Integration.Tests.Chaos.ChaosCluster.EventuallyAsync(
            () => Task.FromResult(fixture.Cluster.Placement.Snapshot is { IsServing: true } s && s.Plan.Version >= op.TargetVersion), TimeSpan.FromSeconds(10));
        return op;
    }

    private static async Task<AdminErrorBody> ErrorAsync(HttpResponseMessage response, HttpStatusCode status)
    {
        string body = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == status, $"expected {status}, got {(int)response.StatusCode}: {body}");
        return JsonSerializer.Deserialize<AdminErrorResponse>(body, Json)!.Error;
    }

    [Fact]
    public async Task MissingOrWrongToken_Is401_AndNothingChanges()
    {
        fixture.Log.Output = output;
        var before = await PlacementAsync();
        using var anonymous = fixture.Client(token: null);
        using var wrong = fixture.Client("not-the-right-token-at-all");
        foreach (var client in new[] { anonymous, wrong })
        {
            var get = await client.GetAsync("/admin/v1/cluster");
            Assert.Equal("unauthorized", (await ErrorAsync(get, HttpStatusCode.Unauthorized)).Code);
            Assert.Equal("Bearer", get.Headers.WwwAuthenticate.Single().Scheme);
            await ErrorAsync(await client.PostAsync("/admin/v1/workers/worker-1/drain", null), HttpStatusCode.Unauthorized);
            await ErrorAsync(await client.PostAsJsonAsync("/admin/v1/rebalance", new RebalanceRequestBody(), Json), HttpStatusCode.Unauthorized);
            await ErrorAsync(await client.PostAsJsonAsync("/admin/v1/experts/replicas",
                new ReplicaChangeRequest([new ReplicaTarget(fixture.Model.MoeLayers[0], 0)], null), Json), HttpStatusCode.Unauthorized);
        }
        using var basic = fixture.Client(token: null);
        basic.DefaultRequestHeaders.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Basic", AdminClusterFixture.Token);
        await ErrorAsync(await basic.GetAsync("/admin/v1/placement"), HttpStatusCode.Unauthorized);
        var after = await PlacementAsync();
        Assert.Equal(before.PlanVersion, after.PlanVersion);
        var cluster = await (fixture.Client()).GetFromJsonAsync<ClusterInfo>("/admin/v1/cluster", Json);
        Assert.All(cluster!.Workers, w => Assert.Equal("Active", w.State));
    }

    [Fact]
    public async Task Reads_DescribeWorkersPlacementAndLoad()
    {
        fixture.Log.Output = output;
        var prompt = Chaos.ChaosCluster.Prompts(1, fixture.Engine.Config.VocabSize)[0];
        await fixture.Engine.InferAsync(prompt, 4, CancellationToken.None);
        using var client = fixture.Client();
        var cluster = (await client.GetFromJsonAsync<ClusterInfo>("/admin/v1/cluster", Json))!;
        output.WriteLine(JsonSerializer.Serialize(cluster, Json));
        Assert.True(cluster.Serving);
        Assert.Equal(3, cluster.Workers.Count);
        Assert.All(cluster.Workers, w =>
        {
            Assert.StartsWith("http://127.0.0.1:", w.GrpcEndpoint);
            Assert.Equal("healthy", w.Health);
            Assert.Equal("Active", w.SiloStatus);
            Assert.Equal(fixture.CapacityExperts * fixture.Model.ExpertBytes, w.MemoryCapacityBytes);
            Assert.True(w.ResidentBytes > 0 && w.ExpertsHeld > 0 && w.ExpertsAssigned > 0);
        });
        var placement = await PlacementAsync();
        Assert.Equal(placement.Layers.Sum(l => l.Experts.Sum(e => e.Workers.Count)), cluster.Workers.Sum(w => w.ExpertsAssigned));
        Assert.Equal(cluster.PlanVersion, placement.PlanVersion);
        Assert.Equal(fixture.Model.MoeLayers, placement.Layers.Select(l => l.Layer));
        Assert.All(placement.Layers, l => Assert.All(l.Experts, e => Assert.NotEmpty(e.Workers)));

        var load = (await client.GetFromJsonAsync<ExpertLoadInfo>("/admin/v1/experts/load", Json))!;
        Assert.True(load.Layers.Sum(l => l.TotalTokens.Sum()) >= prompt.Length + 3, "routed tokens were not counted");
        Assert.True(load.Layers.Sum(l => l.RecentTokens.Sum()) > 0);
        Assert.All(load.Layers, l => Assert.Equal(fixture.Model.NumExperts, l.TotalTokens.Length));
        Assert.Contains(load.Workers, w => w.Rows > 0 && w.BytesSent > 0 && w.MeanLatencyMs > 0);

        string raw = await client.GetStringAsync("/admin/v1/cluster");
        Assert.Contains("\"plan_version\"", raw);
        Assert.Contains("\"memory_capacity_bytes\"", raw);
    }

    [Fact]
    public async Task BadCalls_GetPreciseErrors_AndChangeNothing()
    {
        fixture.Log.Output = output;
        using var client = fixture.Client();
        var before = await PlacementAsync();
        int moe = fixture.Model.MoeLayers[0];
        int dense = Enumerable.Range(0, fixture.Model.NumLayers).First(l => !fixture.Model.IsMoeLayer(l));

        var e = await ErrorAsync(await client.PostAsync("/admin/v1/workers/no-such-worker/drain", null), HttpStatusCode.NotFound);
        Assert.Equal("unknown_worker", e.Code);
        Assert.Contains("no-such-worker", e.Message);

        e = await ErrorAsync(await client.PostAsJsonAsync("/admin/v1/experts/replicas", new ReplicaChangeRequest([new ReplicaTarget(dense, 0)], null), Json), HttpStatusCode.BadRequest);
        Assert.Equal(("unknown_expert", "add[0].layer"), (e.Code, e.Field));
        e = await ErrorAsync(await client.PostAsJsonAsync("/admin/v1/experts/replicas", new ReplicaChangeRequest([new ReplicaTarget(moe, 1), new ReplicaTarget(moe, fixture.Model.NumExperts)], null), Json), HttpStatusCode.BadRequest);
        Assert.Equal(("unknown_expert", "add[1].expert"), (e.Code, e.Field));
        e = await ErrorAsync(await client.PostAsJsonAsync("/admin/v1/experts/replicas", new ReplicaChangeRequest([new ReplicaTarget(moe, 1, "ghost")], null), Json), HttpStatusCode.NotFound);
        Assert.Equal(("unknown_worker", "add[0].worker"), (e.Code, e.Field));

        // Replicas beyond memory: worker-1 has room for `room` more experts only.
        var w1 = (await client.GetFromJsonAsync<ClusterInfo>("/admin/v1/cluster", Json))!.Workers.Single(w => w.Id == "worker-1");
        int room = (int)(fixture.CapacityExperts - w1.ExpertsAssigned);
        var holders = before.Layers.SelectMany(l => l.Experts.Where(x => !x.Workers.Contains("worker-1")).Select(x => new ReplicaTarget(l.Layer, x.Expert, "worker-1")))
            .Take(room + 1).ToList();
        e = await ErrorAsync(await client.PostAsJsonAsync("/admin/v1/experts/replicas", new ReplicaChangeRequest(holders, null), Json), HttpStatusCode.Conflict);
        Assert.Equal(("insufficient_memory", $"add[{room}]"), (e.Code, e.Field));
        Assert.Contains("worker-1", e.Message);

        var only = before.Layers[0].Experts.First(x => x.Workers.Count == 1);
        e = await ErrorAsync(await client.PostAsJsonAsync("/admin/v1/experts/replicas", new ReplicaChangeRequest(null, [new ReplicaTarget(moe, only.Expert)]), Json), HttpStatusCode.Conflict);
        Assert.Equal(("last_holder", "remove[0]"), (e.Code, e.Field));
        Assert.Contains(only.Workers[0], e.Message);

        // Draining a worker whose experts nobody else has room for: it is their last holder.
        e = await ErrorAsync(await client.PostAsync("/admin/v1/workers/worker-0/drain", null), HttpStatusCode.Conflict);
        Assert.Equal("insufficient_memory", e.Code);
        Assert.Contains("last holder", e.Message);

        e = await ErrorAsync(await client.PostAsync("/admin/v1/experts/replicas", new StringContent("{\"add\": [", Encoding.UTF8, "application/json")), HttpStatusCode.BadRequest);
        Assert.Equal("invalid_argument", e.Code);
        e = await ErrorAsync(await client.PostAsync("/admin/v1/experts/replicas", new StringContent("{\"add\": [{\"layer\": 1}]}", Encoding.UTF8, "application/json")), HttpStatusCode.BadRequest);
        Assert.Equal("invalid_argument", e.Code);
        e = await ErrorAsync(await client.PostAsync("/admin/v1/rebalance", new StringContent("{\"dry_runn\": true}", Encoding.UTF8, "application/json")), HttpStatusCode.BadRequest);
        Assert.Equal(("invalid_argument", "dry_runn"), (e.Code, e.Field));
        e = await ErrorAsync(await client.PostAsJsonAsync("/admin/v1/rebalance", new RebalanceRequestBody(true, -1), Json), HttpStatusCode.BadRequest);
        Assert.Equal("extra_replicas_per_layer", e.Field);
        e = await ErrorAsync(await client.PostAsJsonAsync("/admin/v1/rebalance", new RebalanceRequestBody(true, null, "yesterday"), Json), HttpStatusCode.BadRequest);
        Assert.Equal("load_window", e.Field);
        e = await ErrorAsync(await client.GetAsync("/admin/v1/operations/op-999999"), HttpStatusCode.NotFound);
        Assert.Equal("unknown_operation", e.Code);
        e = await ErrorAsync(await client.GetAsync("/admin/v1/operations/op-999999?wait=5"), HttpStatusCode.NotFound);
        Assert.Equal("unknown_operation", e.Code);
        foreach (string wait in new[] { "61", "-1", "1.5", "soon", "1&wait=2" })
        {
            e = await ErrorAsync(await client.GetAsync($"/admin/v1/operations/op-1?wait={wait}"), HttpStatusCode.BadRequest);
            Assert.Equal(("invalid_argument", "wait"), (e.Code, e.Field));
        }

        var after = await PlacementAsync();
        Assert.Equal(before.PlanVersion, after.PlanVersion);
        Assert.Equal(JsonSerializer.Serialize(before.Layers), JsonSerializer.Serialize(after.Layers));
    }

    [Fact]
    public async Task Replicas_AddThenRemove_StagedAndCommitted_OutputsUnchanged()
    {
        fixture.Log.Output = output;
        using var client = fixture.Client();
        var prompt = Chaos.ChaosCluster.Prompts(2, fixture.Engine.Config.VocabSize)[1];
        var reference = await fixture.Engine.InferAsync(prompt, 6, CancellationToken.None);
        int moe = fixture.Model.MoeLayers[^1];
        var before = await PlacementAsync();
        var singles = before.Layers[^1].Experts.Where(x => x.Workers.Count == 1).Take(2).ToArray();
        var target = singles[0];
        int second = singles[1].Expert;
        var assigned = (await client.GetFromJsonAsync<ClusterInfo>("/admin/v1/cluster", Json))!.Workers.ToDictionary(w => w.Id, w => w.ExpertsAssigned);
        string other = assigned.Keys.Where(w => !target.Workers.Contains(w)).OrderBy(w => assigned[w]).First();

        var response = await client.PostAsJsonAsync("/admin/v1/experts/replicas", new ReplicaChangeRequest([new ReplicaTarget(moe, target.Expert, other), new ReplicaTarget(moe, second)], null), Json);
        Assert.True(response.StatusCode == HttpStatusCode.Accepted, await response.Content.ReadAsStringAsync());
        var op = (await response.Content.ReadFromJsonAsync<OperationInfo>(Json))!;
        Assert.Equal($"/admin/v1/operations/{op.Id}", response.Headers.Location!.ToString());
        Assert.Equal("Replicas", op.Kind);
        op = await WaitAsync(op);
        var added = await PlacementAsync();
        Assert.Equal(op.TargetVersion, added.PlanVersion);
        Assert.Equal([.. target.Workers, other], added.Layers[^1].Experts[target.Expert].Workers);
        Assert.Equal(2, added.Layers[^1].Experts[second].Workers.Count);
        var r = await fixture.Engine.InferAsync(prompt, 6, CancellationToken.None);
        Assert.True(Reference.BitwiseEqual(reference.LastLogits, r.LastLogits), "logits changed with replicas");

        response = await client.PostAsJsonAsync("/admin/v1/experts/replicas", new ReplicaChangeRequest(null, [new ReplicaTarget(moe, target.Expert, other), new ReplicaTarget(moe, second)]), Json);
        op = await WaitAsync((await response.Content.ReadFromJsonAsync<OperationInfo>(Json))!);
        var removed = await PlacementAsync();
        Assert.Equal(target.Workers, removed.Layers[^1].Experts[target.Expert].Workers);
        Assert.Single(removed.Layers[^1].Experts[second].Workers);
        r = await fixture.Engine.InferAsync(prompt, 6, CancellationToken.None);
        Assert.Equal(reference.NewTokens, r.NewTokens);
    }

    [Fact]
    public async Task Rebalance_DryRunProposes_ThenStagesAndKeepsOutputs()
    {
        fixture.Log.Output = output;
        using var client = fixture.Client();
        var prompts = Chaos.ChaosCluster.Prompts(3, fixture.Engine.Config.VocabSize, seed: 11);
        var reference = new List<int[]>();
        foreach (var p in prompts)
        {
            reference.Add((await fixture.Engine.InferAsync(p, 5, CancellationToken.None)).NewTokens);
        }
        var before = await PlacementAsync();
        var dry = await client.PostAsJsonAsync("/admin/v1/rebalance", new RebalanceRequestBody(DryRun: true, ExtraReplicasPerLayer: 1, LoadWindow: "total"), Json);
        Assert.Equal(HttpStatusCode.OK, dry.StatusCode);
        var proposal = (await dry.Content.ReadFromJsonAsync<RebalanceResult>(Json))!;
        output.WriteLine($"dry run: max/mean {proposal.Before.MaxOverMean} -> {proposal.After.MaxOverMean}, moves {proposal.ExpertsMoved}");
        Assert.True(proposal.DryRun);
        Assert.Null(proposal.Operation);
        Assert.True(proposal.After.MaxOverMean <= proposal.Before.MaxOverMean + 1e-9);
        Assert.Equal(fixture.Model.MoeLayers.Length * (fixture.Model.NumExperts + 1), proposal.Proposed.Layers.Sum(l => l.Experts.Sum(e => e.Workers.Count)));
        Assert.Equal(before.PlanVersion, (await PlacementAsync()).PlanVersion);

        var real = await client.PostAsJsonAsync("/admin/v1/rebalance", new RebalanceRequestBody(ExtraReplicasPerLayer: 1, LoadWindow: "total"), Json);
        var result = (await real.Content.ReadFromJsonAsync<RebalanceResult>(Json))!;
        Assert.NotNull(result.Operation);
        var op = await WaitAsync(result.Operation!);
        Assert.Equal("Rebalance", op.Kind);
        for (int i = 0; i < prompts.Count; i++)
        {
            Assert.Equal(reference[i], (await fixture.Engine.InferAsync(prompts[i], 5, CancellationToken.None)).NewTokens);
        }
    }

    [Fact]
    public async Task OpenApiDocument_DescribesEveryAdminEndpoint_InSnakeCase()
    {
        using var client = fixture.Client(token: null);
        string doc = await client.GetStringAsync("/admin/v1/openapi.json");
        using var json = JsonDocument.Parse(doc);
        var paths = json.RootElement.GetProperty("paths").EnumerateObject().Select(p => p.Name).ToList();
        output.WriteLine(string.Join(", ", paths));
        foreach (var p in new[] { "/admin/v1/cluster", "/admin/v1/placement", "/admin/v1/experts/load", "/admin/v1/serving", "/admin/v1/operations/{id}",
            "/admin/v1/workers/{id}/drain", "/admin/v1/experts/replicas", "/admin/v1/rebalance" })
        {
            Assert.Contains(p, paths);
        }
        Assert.DoesNotContain(paths, p => !p.StartsWith("/admin/v1/", StringComparison.Ordinal));
        Assert.Contains("\"plan_version\"", doc);
        Assert.Contains("\"extra_replicas_per_layer\"", doc);
        Assert.DoesNotContain("\"planVersion\"", doc);
    }

    [Fact]
    public async Task Serving_CountsTheSchedulersTokensAndLatency_RestAndGrpcAgree()
    {
        using var client = fixture.Client();
        var before = (await client.GetFromJsonAsync<ServingInfo>("/admin/v1/serving", Json))!;
        var prompts = new[] { new[] { 500, 17, 33 }, new[] { 500, 2 } };
        int generated = 0;
        foreach (var tokens in await Task.WhenAll(prompts.Select(async (p, i) =>
        {
            int n = 0;
            await foreach (var _ in fixture.Scheduler.GenerateAsync(new Coordinator.Serving.GenerationRequest($"serving-{i}", p, 4, Coordinator.Serving.SamplingParams.Greedy), CancellationToken.None))
            {
                n++;
            }
            return n;
        })))
        {
            generated += tokens;
        }
        string raw = await client.GetStringAsync("/admin/v1/serving");
        output.WriteLine(raw);
        Assert.Contains("\"tokens_generated\"", raw);
        var after = JsonSerializer.Deserialize<ServingInfo>(raw, Json)!;
        Assert.Equal(generated, after.TokensGenerated - before.TokensGenerated);
        Assert.Equal(2, after.RequestsFinished - before.RequestsFinished);
        Assert.Equal(2, after.FirstTokens - before.FirstTokens);
        Assert.Equal(generated - 2, after.LaterTokens - before.LaterTokens);
        Assert.True(after.TimeToFirstTokenSecondsSum > before.TimeToFirstTokenSecondsSum);
        Assert.True(after.Steps > before.Steps);
        Assert.Equal(0, after.Running);
        Assert.Equal(0, after.Preemptions);
        Assert.True(after.KvBlocksTotal > 0);
        Assert.True(after.UptimeSeconds > 0);

        using var channel = GrpcChannel.ForAddress(fixture.GrpcAddress, new GrpcChannelOptions { HttpHandler = new SocketsHttpHandler() });
        var grpc = new Protocol.Admin.ClusterAdmin.ClusterAdminClient(channel);
        var reply = await grpc.GetServingAsync(new Protocol.Admin.GetServingRequest(), new Metadata { { "authorization", "Bearer " + AdminClusterFixture.Token } });
        Assert.Equal(after.TokensGenerated, reply.TokensGenerated);
        Assert.Equal(after.RequestsFinished, reply.RequestsFinished);
        Assert.Equal(after.KvBlocksTotal, reply.KvBlocksTotal);

        // A coordinator without a serving scheduler says so (503 unavailable) instead of inventing zeros.
        var bare = new ClusterAdmin(fixture.Cluster.Placement, fixture.Cluster.GrpcDispatcher);
        var ex = Assert.Throws<AdminException>(bare.GetServing);
        Assert.Equal((503, "unavailable"), (ex.HttpStatus, ex.Code));
    }

    [Fact]
    public async Task Grpc_SameOperations_AuthenticatedAndPreciseStatus()
    {
        using var channel = GrpcChannel.ForAddress(fixture.GrpcAddress, new GrpcChannelOptions
        {
            HttpHandler = new SocketsHttpHandler(),
        });
        var client = new Protocol.Admin.ClusterAdmin.ClusterAdminClient(channel);
        var auth = new Metadata { { "authorization", "Bearer " + AdminClusterFixture.Token } };
        var cluster = await client.GetClusterAsync(new Protocol.Admin.GetClusterRequest(), auth);
        Assert.Equal(3, cluster.Workers.Count);
        Assert.True(cluster.Serving);
        var placement = await client.GetPlacementAsync(new Protocol.Admin.GetPlacementRequest(), auth);
        Assert.Equal(cluster.PlanVersion, placement.PlanVersion);

        var ex = await Assert.ThrowsAsync<RpcException>(async () => await client.GetClusterAsync(new Protocol.Admin.GetClusterRequest()));
        Assert.Equal(StatusCode.Unauthenticated, ex.StatusCode);
        ex = await Assert.ThrowsAsync<RpcException>(async () => await client.DrainWorkerAsync(new Protocol.Admin.DrainWorkerRequest { WorkerId = "ghost" }, auth));
        Assert.Equal(StatusCode.NotFound, ex.StatusCode);
        Assert.Equal("unknown_worker", ex.Trailers.GetValue("x-admin-error-code"));
        var dry = await client.RebalanceAsync(new Protocol.Admin.RebalanceRequest { DryRun = true }, auth);
        Assert.True(dry.DryRun);
        Assert.Null(dry.Operation);
        Assert.Equal(cluster.PlanVersion, (await client.GetPlacementAsync(new Protocol.Admin.GetPlacementRequest(), auth)).PlanVersion);
    }

    [Fact]
    public async Task RestartedCoordinator_FindsTheSamePlan_AndRoutesWithIt()
    {
        fixture.Log.Output = output;
        var before = fixture.Cluster.Placement.Snapshot!;
        // A second coordinator process would do exactly this: join as an Orleans client and follow the plan.
        using var loggerFactory = fixture.Log.CreateLoggerFactory();
        await using var restarted = await Distributed.Coordinator.Distribution.ClusterPlacementFollower.StartAsync(fixture.Cluster.ClientOptions, loggerFactory,
            tls: fixture.Cluster.Credentials);
        var table = await restarted.WaitForServingAsync(3, TimeSpan.FromSeconds(30), CancellationToken.None);
        Assert.Equal((ulong)before.Plan.Version, table.Version);
        Assert.Equal(Protocol.Grains.PlacementPlanCodec.Serialize(before.Plan), Protocol.Grains.PlacementPlanCodec.Serialize(restarted.Snapshot!.Plan));
    }
}
