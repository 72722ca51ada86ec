using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Distributed.GpuCheck;

/// <summary>Outcome of one check.</summary>
internal enum CheckStatus
{
    Pass,
    Fail,
    Skip,
}

/// <summary>One line of the report: a pass/fail check or an informational measurement.</summary>
internal sealed record CheckResult(string Section, string Name, CheckStatus Status, string Detail, double Seconds);

/// <summary>One benchmark row.</summary>
internal sealed record BenchRow(string Section, string Name, IReadOnlyDictionary<string, double> Values, string Note);

/// <summary>
/// Collects checks and benchmarks, prints one line per check as it completes, and writes report.md + report.json.
/// Every check runs isolated: an exception fails that check only (the message and stack are kept in the detail).
/// </summary>
internal sealed class CheckReport
{
    private readonly List<CheckResult> _checks = [];
    private readonly List<BenchRow> _bench = [];
    private readonly List<(string Key, string Value)> _info = [];
    private readonly Stopwatch _clock = Stopwatch.StartNew();

    public string? SkipReason { get; set; }

    public int Passed => _checks.Count(c => c.Status == CheckStatus.Pass);

    public int Failed => _checks.Count(c => c.Status == CheckStatus.Fail);

    public void Info(string key, string value)
    {
        _info.Add((key, value));
        Console.WriteLine($"  {key}: {value}");
    }

    /// <summary>Runs <paramref name="body"/>; it returns (pass, detail). Exceptions fail the check.</summary>
    public void Check(string section, string name, Func<(bool Pass, string Detail)> body)
    {
        var sw = Stopwatch.StartNew();
        CheckResult result;
        try
        {
            var (pass, detail) = body();
            result = new CheckResult(section, name, pass ? CheckStatus.Pass : CheckStatus.Fail, detail, sw.Elapsed.TotalSeconds);
        }
        catch (Exception e)
        {
            result = new CheckResult(section, name, CheckStatus.Fail, $"exception: {e}", sw.Elapsed.TotalSeconds);
        }
        Add(result);
    }

    public void Add(CheckResult result)
    {
        _checks.Add(result);
        string tag = result.Status switch
        {
            CheckStatus.Pass => "PASS",
            CheckStatus.Fail => "FAIL",
            _ => "SKIP",
        };
        string detail = result.Detail.Length > 600 && result.Status != CheckStatus.Fail ? result.Detail[..600] + "…" : result.Detail;
        Console.WriteLine($"[{tag}] {result.Section} / {result.Name}: {detail} ({result.Seconds:F2} s)");
    }

    public void Bench(string section, string name, IReadOnlyDictionary<string, double> values, string note = "")
    {
        _bench.Add(new BenchRow(section, name, values, note));
        string v = string.Join(", ", values.Select(kv => $"{kv.Key}={Format(kv.Value)}"));
        Console.WriteLine($"[BENCH] {section} / {name}: {v}{(note.Length > 0 ? " — " + note : "")}");
    }

    /// <summary>Runs a benchmark section; an exception becomes a failed check so it is never silently lost.</summary>
    public void BenchSection(string section, Action body)
    {
        var sw = Stopwatch.StartNew();
        try
        {
            body();
        }
        catch (Exception e)
        {
            Add(new CheckResult(section, "benchmark run", CheckStatus.Fail, $"exception: {e}", sw.Elapsed.TotalSeconds));
        }
    }

    public string SummaryLine() => SkipReason is null
        ? $"GPU CHECK: {Passed} passed, {Failed} failed"
        : $"GPU CHECK: skipped ({SkipReason})";

    public void Write(string? directory)
    {
        if (directory is null)
        {
            return;
        }
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, "report.md"), Markdown());
        File.WriteAllText(Path.Combine(directory, "report.json"), Json());
    }

    private static string Format(double v) =>
        Math.Abs(v) >= 1e-3 && Math.Abs(v) < 1e6 || v == 0
            ? v.ToString("0.####", CultureInfo.InvariantCulture)
            : v.ToString("0.###e+0", CultureInfo.InvariantCulture);

    private string Markdown()
    {
        var sb = new StringBuilder();
        sb.AppendLine("# GPU check report");
        sb.AppendLine();
        sb.AppendLine(CultureInfo.InvariantCulture, $"{SummaryLine()} — total {_clock.Elapsed.TotalSeconds:F1} s");
        sb.AppendLine();
        if (_info.Count > 0)
        {
            sb.AppendLine("## Device");
            sb.AppendLine();
            foreach (var (k, v) in _info)
            {
                sb.AppendLine(CultureInfo.InvariantCulture, $"- {k}: {v}");
            }
            sb.AppendLine();
        }
        foreach (var section in _checks.GroupBy(c => c.Section))
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"## {section.Key}");
            sb.AppendLine();
            sb.AppendLine("| check | result | detail | s |");
            sb.AppendLine("| --- | --- | --- | --- |");
            foreach (CheckResult c in section)
            {
                string detail = c.Detail.Replace("|", "\\|", StringComparison.Ordinal).Replace("\n", "<br>", StringComparison.Ordinal);
                sb.AppendLine(CultureInfo.InvariantCulture, $"| {c.Name} | {c.Status.ToString().ToUpperInvariant()} | {detail} | {c.Seconds:F2} |");
            }
            sb.AppendLine();
        }
        foreach (var section in _bench.GroupBy(b => b.Section))
        {
            sb.AppendLine(CultureInfo.InvariantCulture, $"## {section.Key}");
            sb.AppendLine();
            var keys = section.SelectMany(b => b.Values.Keys).Distinct().ToList();
            sb.AppendLine($"| case | {string.Join(" | ", keys)} | note |");
            sb.AppendLine($"| --- |{string.Concat(keys.Select(_ => " --- |"))} --- |");
            foreach (BenchRow b in section)
            {
                var cells = keys.Select(k => b.Values.TryGetValue(k, out double v) ? Format(v) : "");
                sb.AppendLine($"| {b.Name} | {string.Join(" | ", cells)} | {b.Note} |");
            }
            sb.AppendLine();
        }
        return sb.ToString();
    }

    private string Json()
    {
        var root = new JsonObject
        {
            ["summary"] = SummaryLine(),
            ["passed"] = Passed,
            ["failed"] = Failed,
            ["skipped"] = SkipReason,
            ["seconds"] = Math.Round(_clock.Elapsed.TotalSeconds, 2),
        };
        var info = new JsonObject();
        foreach (var (k, v) in _info)
        {
            info[k] = v;
        }
        root["device"] = info;
        var checks = new JsonArray();
        foreach (CheckResult c in _checks)
        {
            checks.Add(new JsonObject
            {
                ["section"] = c.Section,
                ["name"] = c.Name,
                ["status"] = c.Status.ToString().ToLowerInvariant(),
                ["detail"] = c.Detail,
                ["seconds"] = Math.Round(c.Seconds, 3),
            });
        }
        root["checks"] = checks;
        var bench = new JsonArray();
        foreach (BenchRow b in _bench)
        {
            var values = new JsonObject();
            foreach (var kv in b.Values)
            {
                values[kv.Key] = double.IsFinite(kv.Value) ? kv.Value : null;
            }
            bench.Add(new JsonObject { ["section"] = b.Section, ["name"] = b.Name, ["values"] = values, ["note"] = b.Note });
        }
        root["benchmarks"] = bench;
        using var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
        {
            root.WriteTo(writer);
        }
        return Encoding.UTF8.GetString(stream.ToArray());
    }
}
