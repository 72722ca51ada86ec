using Distributed.Coordinator.Cli;
using Distributed.Coordinator.Serving.Hosting;

namespace Distributed.Coordinator.Tests.Serving.Hosting;

[Trait("Category", "Unit")]
public sealed class ServeOptionsValidatorTests
{
    private static ServeOptions Valid() => new() { ModelDirectory = TestPaths.Fixture("tiny-maverick") };

    [Fact]
    public void DefaultsShouldNotChange()
    {
        var o = new ServeOptions();
        Assert.Equal("127.0.0.1", o.Host);
        Assert.Equal(8000, o.Port);
        Assert.Null(o.Http2Port);
        Assert.Null(o.ModelName);
        Assert.Equal(4L << 20, o.MaxRequestBodyBytes);
        Assert.Equal(429, o.QueueFullStatusCode);
        Assert.Equal(TimeSpan.FromSeconds(10), o.ShutdownTimeout);
        Assert.Equal(4096, o.DefaultMaxTokens);
        Assert.Equal("Serve", ServeOptions.SectionName);
    }

    [Fact]
    public void SchedulerDefaultsShouldNotChange()
    {
        var s = new Distributed.Coordinator.Serving.Scheduling.SchedulerOptions();
        Assert.Equal((256, 64, 512, 256), (s.MaxQueuedRequests, s.MaxRunningSequences, s.MaxBatchTokens, s.PrefillChunkTokens));
        Assert.Equal((256L << 20, 16), (s.KvMemoryBytes, s.KvBlockSize));
        Assert.True(s.PrefixCaching);
        Assert.True(s.BackendKvStore);
        Assert.Equal(TimeSpan.FromSeconds(1), s.RetryAfter);
    }

    [Fact]
    public void ValidOptions_Pass_ModelIdFromDirectoryName()
    {
        var o = Valid();
        Assert.True(new ServeOptionsValidator().Validate(null, o).Succeeded);
        Assert.Equal("tiny-maverick", o.ResolveModelId());
        o.ModelDirectory += Path.DirectorySeparatorChar;
        Assert.Equal("tiny-maverick", o.ResolveModelId());
        o.ModelName = "meta-llama/Llama-4-Maverick";
        Assert.Equal("meta-llama/Llama-4-Maverick", o.ResolveModelId());
    }

    [Theory]
    [InlineData("ModelDirectory", "ModelDirectory", "")]
    [InlineData("ModelDirectory", "ModelDirectory", "/no/such/dir")]
    [InlineData("ModelName", "ModelName", "has space")]
    [InlineData("ModelName", "ModelName", "")]
    [InlineData("Host", "Host", "example.com")]
    [InlineData("Host", "Host", "")]
    [InlineData("Port", "Port", "-1")]
    [InlineData("Port", "Port", "65536")]
    [InlineData("Http2Port", "Http2Port", "70000")]
    [InlineData("Http2Port", "must differ from Port", "8000")]
    [InlineData("MaxRequestBodyBytes", "MaxRequestBodyBytes", "100")]
    [InlineData("QueueFullStatusCode", "QueueFullStatusCode", "500")]
    [InlineData("ShutdownTimeout", "ShutdownTimeout", "-1")]
    [InlineData("DefaultMaxTokens", "DefaultMaxTokens (--default-max-tokens)", "0")]
    public void InvalidField_FailsNamingIt(string field, string message, string value)
    {
        var o = Valid();
        switch (field)
        {
            case "ModelDirectory": o.ModelDirectory = value; break;
            case "ModelName": o.ModelName = value; break;
            case "Host": o.Host = value; break;
            case "Port": o.Port = int.Parse(value); break;
            case "Http2Port": o.Http2Port = int.Parse(value); break;
            case "MaxRequestBodyBytes": o.MaxRequestBodyBytes = long.Parse(value); break;
            case "QueueFullStatusCode": o.QueueFullStatusCode = int.Parse(value); break;
            case "ShutdownTimeout": o.ShutdownTimeout = TimeSpan.FromSeconds(int.Parse(value)); break;
            case "DefaultMaxTokens": o.DefaultMaxTokens = int.Parse(value); break;
        }
        var result = new ServeOptionsValidator().Validate(null, o);
        Assert.True(result.Failed);
        var failure = Assert.Single(result.Failures!);
        Assert.Contains(message, failure);
    }

    [Theory]
    [InlineData("0.0.0.0", null, false, "is not a loopback address: set an API key")]
    [InlineData("10.1.2.3", null, false, "is not a loopback address: set an API key")]
    [InlineData("0.0.0.0", null, true, null)]
    [InlineData("0.0.0.0", "0123456789abcdef", false, null)]
    [InlineData("127.0.0.1", null, false, null)]
    [InlineData("::1", null, false, null)]
    [InlineData("127.0.0.1", "short", false, "must be 16 to 4096 characters")]
    [InlineData("127.0.0.1", "has a space 0123456789", false, "without whitespace")]
    public void OffLoopback_TheApiNeedsAKey_OrAnExplicitOptOut(string host, string? key, bool allow, string? failure)
    {
        var o = Valid();
        o.Host = host;
        o.ApiKey = key;
        o.AllowUnauthenticated = allow;
        o.ApiKeyEnvironmentVariable = "DISTRIBUTED_TEST_UNSET_API_KEY";
        var result = new ServeOptionsValidator().Validate(null, o);
        if (failure is null)
        {
            Assert.True(result.Succeeded, string.Join(" ", result.Failures ?? []));
        }
        else
        {
            Assert.Contains(failure, Assert.Single(result.Failures!));
            Assert.DoesNotContain(key ?? "\u0000", Assert.Single(result.Failures!));
        }
    }

    [Fact]
    public void ApiKey_FromItsEnvironmentVariable_WhenNotSetDirectly()
    {
        var o = Valid();
        o.ApiKeyEnvironmentVariable = "DISTRIBUTED_TEST_API_KEY_" + Guid.NewGuid().ToString("N");
        Assert.Null(o.ResolveApiKey());
        Environment.SetEnvironmentVariable(o.ApiKeyEnvironmentVariable, "from-the-environment-0123");
        try
        {
            Assert.Equal("from-the-environment-0123", o.ResolveApiKey());
            o.ApiKey = "set-directly-0123456789";
            Assert.Equal("set-directly-0123456789", o.ResolveApiKey());
        }
        finally
        {
            Environment.SetEnvironmentVariable(o.ApiKeyEnvironmentVariable, null);
        }
    }

    [Theory]
    [InlineData("localhost", "127.0.0.1")]
    [InlineData("0.0.0.0", "0.0.0.0")]
    [InlineData("::1", "::1")]
    public void Host_Parses(string host, string expected)
    {
        Assert.True(ServeOptionsValidator.TryParseHost(host, out var address));
        Assert.Equal(expected, address.ToString());
    }

    [Theory]
    [InlineData("missing required option --model")]
    [InlineData("--port must be an integer in [0, 65535]", "--port", "99999")]
    [InlineData("--queue-full-status must be an integer in [429, 503]", "--queue-full-status", "600")]
    [InlineData("QueueFullStatusCode (--queue-full-status) must be 429 or 503", "--queue-full-status", "450")]
    [InlineData("Host (--host) must be an IP address", "--host", "my.host")]
    [InlineData("--max-request-bytes must be an integer", "--max-request-bytes", "10")]
    [InlineData("Scheduler:MaxBatchTokens must be >= MaxRunningSequences", "--max-batch-tokens", "4", "--max-running", "8")]
    [InlineData("--max-queue must be an integer in [1,", "--max-queue", "0")]
    [InlineData("unknown option --workerz", "--workerz", "2")]
    [InlineData("--prefix-caching 'maybe' must be on or off", "--prefix-caching", "maybe")]
    [InlineData("--device-path 'maybe' must be on or off", "--device-path", "maybe")]
    [InlineData("--cuda-graphs 'maybe' must be on or off", "--cuda-graphs", "maybe")]
    [InlineData("--default-max-tokens must be an integer", "--default-max-tokens", "0")]
    public async Task ServeCommand_BadArguments_UsageErrorBeforeLoading(string reason, params string[] extra)
    {
        var args = new List<string> { "serve" };
        if (extra.Length > 0 || reason != "missing required option --model")
        {
            args.AddRange(["--model", TestPaths.Fixture("tiny-maverick")]);
        }
        args.AddRange(extra);
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = await CommandLine.RunAsync([.. args], stdout, stderr);
        Assert.Equal(2, code);
        Assert.Equal("", stdout.ToString());
        Assert.Contains(reason, stderr.ToString());
    }
}
