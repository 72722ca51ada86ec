using Distributed.Coordinator.Serving.Api;

namespace Distributed.Coordinator.Tests.Serving.Api;

[Trait("Category", "Unit")]
public sealed class StopSequenceMatcherTests
{
    /// <summary>Feeds the pieces and returns (emitted text, stopped, index of the piece that stopped or -1).</summary>
    private static (string Text, bool Stopped, int StoppedAt) Run(string[] stops, params string[] pieces)
    {
        var m = new StopSequenceMatcher(stops);
        var text = "";
        for (int i = 0; i < pieces.Length; i++)
        {
            text += m.Append(pieces[i]);
            if (m.Stopped)
            {
                return (text, true, i);
            }
        }
        return (text + m.Flush(), false, -1);
    }

    [Theory]
    [InlineData(new[] { "STOP" }, "hello ", new[] { "hel", "lo S", "TO", "P wor", "ld" }, 3)]
    [InlineData(new[] { "STOP" }, "hello ", new[] { "hello S", "T", "O", "P", "!" }, 3)]
    [InlineData(new[] { "\n\n" }, "a\nb", new[] { "a", "\n", "b", "\n", "\n", "c" }, 4)]
    [InlineData(new[] { "ab" }, "", new[] { "a", "b" }, 1)]
    [InlineData(new[] { "abc", "b" }, "a", new[] { "a", "b", "c" }, 1)]
    [InlineData(new[] { "xyz", "yz" }, "ab", new[] { "abx", "yz" }, 1)]
    [InlineData(new[] { "aab" }, "a", new[] { "a", "a", "a", "b" }, 3)]
    public void StopAcrossPieces_TextEndsBeforeEarliestMatch(string[] stops, string expected, string[] pieces, int stoppedAt)
    {
        var (text, stopped, at) = Run(stops, pieces);
        Assert.True(stopped);
        Assert.Equal(expected, text);
        Assert.Equal(stoppedAt, at);
    }

    [Theory]
    [InlineData(new[] { "STOP" }, new[] { "hello S", "TOO", "P" }, "hello STOOP")]
    [InlineData(new[] { "STOP" }, new[] { "ST", "O" }, "STO")]
    [InlineData(new string[0], new[] { "a", "b" }, "ab")]
    [InlineData(new[] { "é!" }, new[] { "café", " ok" }, "café ok")]
    public void NoMatch_AllTextComesOutByFlush(string[] stops, string[] pieces, string expected)
    {
        var (text, stopped, _) = Run(stops, pieces);
        Assert.False(stopped);
        Assert.Equal(expected, text);
    }

    [Fact]
    public void PossiblePrefix_IsHeldBackUntilRuledOut()
    {
        var m = new StopSequenceMatcher(["</end>"]);
        Assert.Equal("text ", m.Append("text </e"));
        Assert.Equal(3, m.HeldBackLength);
        Assert.Equal("", m.Append("n"));
        Assert.Equal("</enX", m.Append("X"));
        Assert.Equal(0, m.HeldBackLength);
        Assert.False(m.Stopped);
    }

    [Fact]
    public void AfterStop_FurtherInputIsIgnored()
    {
        var m = new StopSequenceMatcher(["."]);
        Assert.Equal("one", m.Append("one. two"));
        Assert.True(m.Stopped);
        Assert.Equal("", m.Append("three"));
        Assert.Equal("", m.Flush());
    }

    [Fact]
    public void EmptyStop_Rejected() => Assert.Throws<ArgumentException>(() => new StopSequenceMatcher(["a", ""]));
}
