using System.Globalization;

namespace Distributed.Coordinator.Cli;

/// <summary>A command-line usage error; the message is the one-line reason printed to stderr.</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>
/// Parses <c>--name value</c> options and <c>--flag</c> switches against a declared set; anything undeclared, missing or
/// malformed is a <see cref="UsageException"/> naming the option.
/// </summary>
public sealed class CliArgs
{
    private readonly Dictionary<string, string?> _values = new(StringComparer.Ordinal);
    private readonly Dictionary<string, List<string>> _repeated = new(StringComparer.Ordinal);
    private readonly HashSet<string> _read = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _settings = new(StringComparer.OrdinalIgnoreCase);

    /// <summary>The <c>--Section:Key value</c> settings given (configuration keys, case-insensitive).</summary>
    public IReadOnlyDictionary<string, string> ConfigurationSettings => _settings;

    /// <summary>Parses <paramref name="args"/>; <paramref name="options"/> take a value, <paramref name="flags"/> do not.</summary>
    /// <param name="args">The arguments after the command name.</param>
    /// <param name="options">Options that take a value.</param>
    /// <param name="flags">Switches without a value.</param>
    /// <param name="configurationKeys">When true, any <c>--Section:Key value</c> is accepted as a configuration setting
    /// (<see cref="ConfigurationSettings"/>; the caller checks the key names).</param>
    /// <param name="repeatable">Options that take a value and may be given more than once (read with <see cref="GetAll"/>).</param>
    public CliArgs(IEnumerable<string> args, IReadOnlyCollection<string> options, IReadOnlyCollection<string> flags, bool configurationKeys = false,
        IReadOnlyCollection<string>? repeatable = null)
    {
        var list = args.ToList();
        for (int i = 0; i < list.Count; i++)
        {
            string a = list[i];
            if (!a.StartsWith("--", StringComparison.Ordinal) || a.Length == 2)
            {
                throw new UsageException($"unexpected argument '{a}'");
            }
            string name = a[2..];
            string? inline = null;
            int eq = name.IndexOf('=');
            if (eq >= 0)
            {
                inline = name[(eq + 1)..];
                name = name[..eq];
            }
            if (repeatable?.Contains(name) == true)
            {
                if (inline is null)
                {
                    if (i + 1 >= list.Count)
                    {
                        throw new UsageException($"option --{name} needs a value");
                    }
                    inline = list[++i];
                }
                if (!_repeated.TryGetValue(name, out var all))
                {
                    _repeated[name] = all = [];
                }
                all.Add(inline);
                continue;
            }
            if (_values.ContainsKey(name))
            {
                throw new UsageException($"option --{name} given twice");
            }
            if (configurationKeys && name.Contains(':', StringComparison.Ordinal))
            {
                if (inline is null)
                {
                    if (i + 1 >= list.Count)
                    {
                        throw new UsageException($"option --{name} needs a value");
                    }
                    inline = list[++i];
                }
                if (!_settings.TryAdd(name, inline))
                {
                    throw new UsageException($"option --{name} given twice");
                }
                continue;
            }
            if (flags.Contains(name))
            {
                if (inline is not null)
                {
                    throw new UsageException($"--{name} takes no value");
                }
                _values[name] = null;
            }
            else if (options.Contains(name))
            {
                if (inline is null)
                {
                    if (i + 1 >= list.Count)
                    {
                        throw new UsageException($"option --{name} needs a value");
                    }
                    inline = list[++i];
                }
                _values[name] = inline;
            }
            else
            {
                throw new UsageException($"unknown option --{name}");
            }
        }
    }

    /// <summary>True when the switch or option was given.</summary>
    public bool Has(string name)
    {
        _read.Add(name);
        return _values.ContainsKey(name);
    }

    /// <summary>The option's value, or null.</summary>
    public string? Get(string name)
    {
        _read.Add(name);
        return _values.TryGetValue(name, out var v) ? v : null;
    }

    /// <summary>Every value of a repeatable option, in command-line order (empty when not given).</summary>
    public IReadOnlyList<string> GetAll(string name)
    {
        _read.Add(name);
        return _repeated.TryGetValue(name, out var all) ? all : [];
    }

    /// <summary>The option's value; missing → usage error.</summary>
    public string Required(string name) => Get(name) is { Length: > 0 } v ? v : throw new UsageException($"missing required option --{name}");

    /// <summary>An integer option in <c>[min, max]</c>, or <paramref name="fallback"/> when absent.</summary>
    public int Int(string name, int fallback, int min = int.MinValue, int max = int.MaxValue)
    {
        var s = Get(name);
        if (s is null)
        {
            return fallback;
        }
        if (!int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) || v < min || v > max)
        {
            throw new UsageException($"--{name} must be an integer in [{min}, {max}], got '{s}'");
        }
        return v;
    }

    /// <summary>A floating-point option, or <paramref name="fallback"/> when absent.</summary>
    public double Double(string name, double fallback)
    {
        var s = Get(name);
        if (s is null)
        {
            return fallback;
        }
        if (!double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !double.IsFinite(v))
        {
            throw new UsageException($"--{name} must be a number, got '{s}'");
        }
        return v;
    }

    /// <summary>A comma-separated list of integers (at least one).</summary>
    public int[] IntList(string name)
    {
        string s = Required(name);
        var parts = s.Split(',', StringSplitOptions.TrimEntries);
        var result = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            if (!int.TryParse(parts[i], NumberStyles.Integer, CultureInfo.InvariantCulture, out result[i]))
            {
                throw new UsageException($"--{name}: '{parts[i]}' is not an integer");
            }
        }
        return result;
    }

    /// <summary>An enum-valued option (case-insensitive), or <paramref name="fallback"/>.</summary>
    public T Enum<T>(string name, T fallback)
        where T : struct, Enum
    {
        var s = Get(name);
        if (s is null)
        {
            return fallback;
        }
        if (!System.Enum.TryParse<T>(s, ignoreCase: true, out var v) || !System.Enum.IsDefined(v) || int.TryParse(s, out _))
        {
            throw new UsageException($"--{name} must be one of {string.Join("|", System.Enum.GetNames<T>()).ToLowerInvariant()}, got '{s}'");
        }
        return v;
    }
}
