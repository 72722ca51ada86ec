using System.IO.Pipelines;
using System.Text;
using Distributed.Coordinator.Serving.Api;

namespace Distributed.Coordinator.Tests.Serving.Api;

[Trait("Category", "Unit")]
public sealed class SseWriterTests
{
    [Fact]
    public async Task EventsAndDone_ExactWireFormat()
    {
        using var ms = new MemoryStream();
        var pipe = PipeWriter.Create(ms, new StreamPipeWriterOptions(leaveOpen: true));
        using (var sse = new SseWriter(pipe))
        {
            await sse.WriteEventAsync(w =>
            {
                w.WriteStartObject();
                w.WriteString("text", "a\nb 'é'");
                w.WriteEndObject();
            }, default);
            await sse.WriteEventAsync(w => w.WriteNumberValue(1), default);
            await sse.WriteDoneAsync(default);
            Assert.Equal(3, sse.EventCount);
        }
        await pipe.CompleteAsync();
        // One line per event (the newline inside the text is escaped), a blank line after each, then [DONE].
        Assert.Equal("data: {\"text\":\"a\\nb 'é'\"}\n\ndata: 1\n\ndata: [DONE]\n\n", Encoding.UTF8.GetString(ms.ToArray()));
    }

    [Fact]
    public async Task EachEvent_IsFlushedImmediately()
    {
        using var ms = new MemoryStream();
        var pipe = PipeWriter.Create(ms, new StreamPipeWriterOptions(leaveOpen: true));
        using var sse = new SseWriter(pipe);
        await sse.WriteEventAsync(w => w.WriteStringValue("x"), default);
        Assert.Equal("data: \"x\"\n\n", Encoding.UTF8.GetString(ms.ToArray()));
    }
}
