using Distributed.Coordinator.Serving.Api;

namespace Distributed.Coordinator.Tests.Serving.Api;

[Trait("Category", "Unit")]
public sealed class ToolCallParserTests
{
    private static readonly string[] Known = ["get_weather", "get_time"];

    [Theory]
    [InlineData("""{"name": "get_weather", "parameters": {"city": "Paris"}}""", 1)]
    [InlineData("""  {"name": "get_weather", "arguments": {"city": "Paris"}}  """, 1)]
    [InlineData("""{"name": "get_weather", "parameters": "{\"city\": \"Paris\"}"}""", 1)]
    [InlineData("""{"name": "get_weather", "parameters": {"city": "Paris"}}{"name": "get_time", "parameters": {}}""", 2)]
    [InlineData("""{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time"}""", 2)]
    [InlineData("""[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "get_time", "parameters": {}}]""", 2)]
    public void Calls_AreRead(string text, int count)
    {
        Assert.True(ToolCallParser.MayBeToolCall(text));
        Assert.True(ToolCallParser.TryParse(text, Known, out var calls));
        Assert.Equal(count, calls.Count);
        Assert.Equal("get_weather", calls[0].Name);
        Assert.Contains("Paris", calls[0].Arguments);
        Assert.All(calls, c => Assert.StartsWith("chatcmpl-tool-", c.Id));
    }

    [Theory]
    [InlineData("It is sunny.")]
    [InlineData("""{"name": "get_weather", "parameters": {"city": "Paris"}""")]
    [InlineData("""{"name": "unknown_tool", "parameters": {}}""")]
    [InlineData("""{"name": "get_weather", "parameters": [1]}""")]
    [InlineData("""{"name": "get_weather", "parameters": {}} and then text""")]
    [InlineData("""{"city": "Paris"}""")]
    [InlineData("")]
    public void NonCalls_AreContent(string text) => Assert.False(ToolCallParser.TryParse(text, Known, out _));

    [Fact]
    public void MayBeToolCall_DecidesAtTheFirstNonSpaceCharacter()
    {
        Assert.True(ToolCallParser.MayBeToolCall("  \n"));
        Assert.True(ToolCallParser.MayBeToolCall(" ["));
        Assert.False(ToolCallParser.MayBeToolCall(" It"));
    }
}
