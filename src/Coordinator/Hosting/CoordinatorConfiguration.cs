using System.Reflection;
using Distributed.Coordinator.Admin;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Serving.Hosting;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Hosting;
using Distributed.Kernels;
using Microsoft.Extensions.Options;

namespace Distributed.Coordinator.Hosting;

/// <summary>
/// The coordinator's configuration, in one place for every command: the <c>DISTRIBUTED_</c> environment variables
/// (<c>DISTRIBUTED_Section__Key</c>, as the workers read theirs), then <c>--Section:Key value</c> settings from the
/// command line, then the command's own options (<c>--port</c> and so on, which the command maps to their keys). Later
/// sources win. Every options class of the coordinator binds from it, so a deployment configured by environment alone
/// (Kubernetes) and one configured by flags run the same code.
/// </summary>
public sealed class CoordinatorConfiguration
{
    /// <summary>The options classes the coordinator binds, by section (what <c>--Section:Key</c> may name).</summary>
    public static readonly IReadOnlyDictionary<string, Type> Sections = new Dictionary<string, Type>(StringComparer.OrdinalIgnoreCase)
    {
        [ServeOptions.SectionName] = typeof(ServeOptions),
        [SchedulerOptions.SectionName] = typeof(SchedulerOptions),
        [KernelOptions.SectionName] = typeof(KernelOptions),
        [DistributionOptions.SectionName] = typeof(DistributionOptions),
        [LocalClusterOptions.SectionName] = typeof(LocalClusterOptions),
        [ExpertClusterOptions.SectionName] = typeof(ExpertClusterOptions),
        [ClusterTlsOptions.SectionName] = typeof(ClusterTlsOptions),
        [ClusterAdminOptions.SectionName] = typeof(ClusterAdminOptions),
        [TelemetryOptions.SectionName] = typeof(TelemetryOptions),
        [Serving.Images.ImageOptions.SectionName] = typeof(Serving.Images.ImageOptions),
    };

    private CoordinatorConfiguration(IConfiguration configuration) => Configuration = configuration;

    /// <summary>The merged configuration.</summary>
    public IConfiguration Configuration { get; }

    /// <summary>
    /// Builds the configuration from the environment, <paramref name="settings"/> (<c>--Section:Key</c> values) and
    /// <paramref name="commandOptions"/> (the command's own options already mapped to keys).
    /// </summary>
    /// <exception cref="ArgumentException">A setting names an unknown section or key (the message names it).</exception>
    public static CoordinatorConfiguration Build(IReadOnlyDictionary<string, string> settings, IReadOnlyDictionary<string, string?> commandOptions,
        System.Collections.IDictionary? environment = null)
    {
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(commandOptions);
        foreach (var key in settings.Keys)
        {
            CheckKey(key);
        }
        var builder = new ConfigurationBuilder();
        if (environment is null)
        {
            builder.AddEnvironmentVariables(TelemetryOptions.EnvironmentPrefix);
        }
        else
        {
            // Tests pass an environment of their own.
            var prefixed = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
            foreach (System.Collections.DictionaryEntry e in environment)
            {
                if (e.Key is string k && k.StartsWith(TelemetryOptions.EnvironmentPrefix, StringComparison.OrdinalIgnoreCase))
                {
                    prefixed[k[TelemetryOptions.EnvironmentPrefix.Length..].Replace("__", ":", StringComparison.Ordinal)] = e.Value as string;
                }
            }
            builder.AddInMemoryCollection(prefixed);
        }
        builder.AddInMemoryCollection(settings.Select(kv => new KeyValuePair<string, string?>(kv.Key, kv.Value)));
        builder.AddInMemoryCollection(commandOptions.Where(kv => kv.Value is not null));
        return new CoordinatorConfiguration(builder.Build());
    }

    // "Section:Key" (or "Section:Key:Sub" for collections) must name a property of a known options class; Logging:* passes.
    private static void CheckKey(string key)
    {
        string[] parts = key.Split(':');
        if (parts.Length >= 2 && string.Equals(parts[0], "Logging", StringComparison.OrdinalIgnoreCase))
        {
            return;
        }
        if (parts.Length < 2 || !Sections.TryGetValue(parts[0], out var type))
        {
            throw new ArgumentException($"unknown option --{key} (configuration sections: {string.Join(", ", Sections.Keys)}, Logging)");
        }
        var property = type.GetProperty(parts[1], BindingFlags.Public | BindingFlags.Instance | BindingFlags.IgnoreCase);
        bool collection = property is not null && property.PropertyType != typeof(string)
            && typeof(System.Collections.IEnumerable).IsAssignableFrom(property.PropertyType);
        if (property is null || (!property.CanWrite && !collection) || (parts.Length > 2 && !collection))
        {
            throw new ArgumentException($"unknown option --{key}: {type.Name} has no setting '{string.Join(":", parts.Skip(1))}'");
        }
    }

    /// <summary>True when <paramref name="key"/> has a value in any source.</summary>
    public bool Has(string key) => Configuration.GetSection(key).Exists();

    /// <summary>Binds section <paramref name="section"/> into a new <typeparamref name="T"/>.</summary>
    /// <exception cref="OptionsValidationException">A value cannot be converted (the message names the key and the value's problem).</exception>
    public T Bind<T>(string section)
        where T : class, new()
    {
        var options = new T();
        try
        {
            Configuration.GetSection(section).Bind(options);
        }
        catch (InvalidOperationException ex)
        {
            string detail = ex.InnerException is { } inner ? $"{ex.Message} ({inner.Message})" : ex.Message;
            throw new OptionsValidationException(section, typeof(T), [detail]);
        }
        return options;
    }
}
