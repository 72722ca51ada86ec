using System.Text;

namespace Distributed.Tests.Shared;

/// <summary>Reads a server-sent-event stream per the SSE rules: <c>data:</c> lines (one optional space) joined by newlines, an empty line dispatches, <c>:</c> lines are comments.</summary>
internal static class SseTestReader
{
    public static async IAsyncEnumerable<string> ReadEventsAsync(Stream body, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct = default)
    {
        using var reader = new StreamReader(body, Encoding.UTF8);
        var data = new StringBuilder();
        bool any = false;
        while (await reader.ReadLineAsync(ct) is { } line)
        {
            if (line.Length == 0)
            {
                if (any)
                {
                    yield return data.ToString();
                }
                data.Clear();
                any = false;
                continue;
            }
            if (line.StartsWith(':'))
            {
                continue;
            }
            int colon = line.IndexOf(':');
            string field = colon < 0 ? line : line[..colon];
            string value = colon < 0 ? "" : line[(colon + 1)..];
            if (value.StartsWith(' '))
            {
                value = value[1..];
            }
            if (field == "data")
            {
                if (any)
                {
                    data.Append('\n');
                }
                data.Append(value);
                any = true;
            }
        }
        if (any)
        {
            throw new InvalidDataException("the stream ended inside an event (no blank line after the last data line)");
        }
    }
}
