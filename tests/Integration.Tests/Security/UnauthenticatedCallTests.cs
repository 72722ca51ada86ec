using System.Buffers.Binary;
using System.Net;
using Distributed.Protocol.Contracts;
using Distributed.Protocol.Grpc;
using Distributed.Protocol.Wire;
using Grpc.Core;
using Grpc.Health.V1;
using Xunit.Abstractions;

namespace Distributed.Integration.Tests.Security;

/// <summary>
/// Without the cluster credential (none, a wrong one, a mangled one) every call on the worker's data-plane port — each
/// ExpertWorker method, the gRPC health service, a method that does not exist, plain HTTP — is refused
/// (UNAUTHENTICATED, HTTP 401), before its body is read, and changes nothing: no request is answered, no session made.
/// </summary>
[Trait("Category", "Integration")]
public sealed class UnauthenticatedCallTests : IClassFixture<HostileWorker>
{
    private static readonly Method<byte[], byte[]> Unknown = new(MethodType.Unary, ExpertWorkerMethods.ServiceName, "Shutdown",
        Marshallers.Create(b => b, b => b), Marshallers.Create(b => b, b => b));

    private readonly HostileWorker _worker;

    public UnauthenticatedCallTests(HostileWorker worker, ITestOutputHelper output)
    {
        _worker = worker;
        _worker.Log.Output = output;
    }

    public static TheoryData<string> Credentials => new() { "none", "wrong", "truncated", "otherCase", "empty" };

    private static string? Credential(string kind) => kind switch
    {
        "none" => null,
        "wrong" => ClusterToken.Generate(),
        "truncated" => TestCredential.Token[..^1],
        "otherCase" => TestCredential.Token.ToUpperInvariant() == TestCredential.Token ? TestCredential.Token.ToLowerInvariant() : TestCredential.Token.ToUpperInvariant(),
        _ => " ",
    };

    [Theory]
    [MemberData(nameof(Credentials))]
    public async Task EveryMethod_WithoutTheCredential_IsUnauthenticated_AndChangesNothing(string kind)
    {
        string? credential = Credential(kind);
        var headers = _worker.Headers(credential);
        int linesBefore = _worker.Lines.Count;
        var invoker = _worker.Channel.CreateCallInvoker();
        var deadline = DateTime.UtcNow.AddSeconds(20);

        async Task Refused(Func<Task> call, string what)
        {
            var ex = await Assert.ThrowsAsync<RpcException>(call);
            Assert.True(ex.StatusCode == StatusCode.Unauthenticated, $"{what}: {ex.StatusCode} {ex.Status.Detail}");
        }

        var hello = new HelloRequest { ProtocolMajor = 1, ModelFingerprint = _worker.Model.Fingerprint, CoordinatorId = "intruder" };
        await Refused(async () => await invoker.AsyncUnaryCall(ExpertWorkerMethods.Hello, null, new CallOptions(headers, deadline), hello), "Hello");
        // Layer 5 requests only ever come from here: had one got through, the worker would count its rows.
        var (h, p) = _worker.Valid(layer: 5);
        await Refused(async () => await invoker.AsyncUnaryCall(ExpertWorkerMethods.DispatchOnce, null, new CallOptions(headers, deadline),
            new TensorFrame<ExpertRequest>(h, p)), "DispatchOnce");
        using (var stream = invoker.AsyncDuplexStreamingCall(ExpertWorkerMethods.Dispatch, null, new CallOptions(headers, deadline)))
        {
            await Refused(() => stream.ResponseStream.MoveNext(CancellationToken.None), "Dispatch");
        }
        var health = new Health.HealthClient(_worker.Channel);
        await Refused(async () => await health.CheckAsync(new HealthCheckRequest(), headers, deadline), "Health/Check");
        using (var watch = health.Watch(new HealthCheckRequest(), headers, deadline))
        {
            await Refused(() => watch.ResponseStream.MoveNext(CancellationToken.None), "Health/Watch");
        }
        await Refused(async () => await invoker.AsyncUnaryCall(Unknown, null, new CallOptions(headers, deadline), [1, 2, 3]), "an unknown method");
        var (_, _, http) = await _worker.RawAsync("/metrics", [], credential, contentType: "text/plain");
        Assert.Equal(HttpStatusCode.Unauthorized, http);

        await _worker.AssertAliveAsync();
        Assert.Equal(0, await _worker.RowsComputedAsync(layer: 5));
        var newLines = _worker.Lines.Skip(linesBefore).ToList();
        Assert.DoesNotContain(newLines, l => l.Contains("Hello from coordinator", StringComparison.Ordinal));
        Assert.True(_worker.RefusalLines("Unauthenticated", linesBefore) <= 2, "refusals are logged at most once per 10 s");
        Assert.DoesNotContain(newLines, l => l.Contains(TestCredential.Token, StringComparison.Ordinal));
        await _worker.AssertAliveAsync();
        _worker.AssertNoStackTraces();
    }

    /// <summary>The refusal comes from the headers alone: a body the worker would refuse for its size, or could not
    /// even frame, still gets UNAUTHENTICATED (so it was never read).</summary>
    [Theory]
    [InlineData("huge")]
    [InlineData("allOnesPrefix")]
    [InlineData("compressed")]
    public async Task Unauthenticated_IsDecidedBeforeTheBodyIsRead(string body)
    {
        byte[] bytes = body switch
        {
            "huge" => new byte[32 << 20],
            "allOnesPrefix" => [0, 0xFF, 0xFF, 0xFF, 0xFF],
            _ => [1, 0, 0, 0, 4, 1, 2, 3, 4],
        };
        if (body == "huge")
        {
            BinaryPrimitives.WriteUInt32BigEndian(bytes.AsSpan(1), (uint)(bytes.Length - 5));
        }
        var (code, message, _) = await _worker.RawAsync("/" + ExpertWorkerMethods.ServiceName + "/DispatchOnce", bytes, credential: null,
            encoding: body == "compressed" ? "gzip" : null);
        Assert.Equal(StatusCode.Unauthenticated, code);
        Assert.Contains("cluster credential", message);
        await _worker.AssertAliveAsync();
        _worker.AssertNoStackTraces();
    }
}
