using Distributed.Coordinator.Cli;

namespace Distributed.Coordinator.Tests.Cli;

[Trait("Category", "Unit")]
public sealed class CliArgsTests
{
    private static CliArgs Parse(params string[] args) => new(args, ["model", "n", "ids", "backend"], ["json"]);

    [Fact]
    public void Parse_ValuesFlagsAndInlineValues()
    {
        var a = Parse("--model", "dir", "--json", "--n=5", "--ids", "1, 2,3");
        Assert.Equal("dir", a.Required("model"));
        Assert.True(a.Has("json"));
        Assert.Equal(5, a.Int("n", 0));
        Assert.Equal([1, 2, 3], a.IntList("ids"));
        Assert.Equal(7, Parse().Int("n", 7));
    }

    [Theory]
    [InlineData("unknown option --bogus", "--bogus", "1")]
    [InlineData("option --model needs a value", "--model")]
    [InlineData("unexpected argument 'stray'", "stray")]
    [InlineData("option --n given twice", "--n", "1", "--n", "2")]
    [InlineData("--json takes no value", "--json=yes")]
    public void Parse_BadInput_NamesTheProblem(string message, params string[] args)
    {
        var ex = Assert.Throws<UsageException>(() => Parse(args));
        Assert.Contains(message, ex.Message);
    }

    [Theory]
    [InlineData("--n", "abc")]
    [InlineData("--n", "-1")]
    [InlineData("--n", "99999999999")]
    public void Int_OutOfRangeOrMalformed_Throws(string name, string value)
    {
        var ex = Assert.Throws<UsageException>(() => Parse(name, value).Int("n", 0, 0, 100));
        Assert.Contains("--n", ex.Message);
    }

    [Fact]
    public void IntList_And_Required_And_Enum_Validate()
    {
        Assert.Contains("'x' is not an integer", Assert.Throws<UsageException>(() => Parse("--ids", "1,x").IntList("ids")).Message);
        Assert.Contains("missing required option --model", Assert.Throws<UsageException>(() => Parse().Required("model")).Message);
        Assert.Equal(Kernels.KernelBackendKind.Cuda, Parse("--backend", "CUDA").Enum("backend", Kernels.KernelBackendKind.Cpu));
        Assert.Throws<UsageException>(() => Parse("--backend", "tpu").Enum("backend", Kernels.KernelBackendKind.Cpu));
        Assert.Throws<UsageException>(() => Parse("--backend", "2").Enum("backend", Kernels.KernelBackendKind.Cpu));
    }
}
