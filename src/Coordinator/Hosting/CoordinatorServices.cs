using System.Collections;
using System.Reflection;
using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Serving;
using Distributed.Coordinator.Serving.Api;
using Distributed.Coordinator.Serving.Hosting;
using Distributed.Coordinator.Serving.Scheduling;
using Distributed.Coordinator.Serving.Tokenization;
using Microsoft.Extensions.Options;

namespace Distributed.Coordinator.Hosting;

/// <summary>
/// The coordinator's composition root: what <c>serve</c> registers in its web host, one method per capability —
/// <see cref="AddServing"/> (the OpenAI API over the scheduler), <see cref="AddExpertCluster"/> (the routed experts on
/// workers: dispatcher, placement follower, readiness gate) and <c>Admin.ClusterAdminHosting.AddClusterAdmin</c> (the
/// admin API). Each registers its options (already bound from <see cref="CoordinatorConfiguration"/> and the command's
/// flags) with <c>ValidateOnStart</c>, so the host refuses to start with an invalid value whatever path built it.
/// </summary>
public static class CoordinatorServices
{
    /// <summary>
    /// The OpenAI API over one model: <see cref="ServeOptions"/> and <see cref="SchedulerOptions"/> (validated at start),
    /// the scheduler (made once from the services; wrapped by <paramref name="operations"/>' measurements when given),
    /// <see cref="ServedModel"/>, the API settings and endpoints.
    /// </summary>
    public static IServiceCollection AddServing(this IServiceCollection services, ServeOptions options, SchedulerOptions? scheduling, Llama4Tokenizer tokenizer,
        Func<IServiceProvider, IGenerationScheduler> createScheduler, Diagnostics.CoordinatorOperations? operations = null, Serving.Images.Llama4ImageInputs? images = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(createScheduler);
        services.AddValidatedOptions(options, new ServeOptionsValidator().Validate);
        if (scheduling is not null)
        {
            services.AddValidatedOptions(scheduling, (_, o) => Check(o.Validate));
        }
        services.AddSingleton(operations is null ? createScheduler : sp => operations.WrapScheduler(createScheduler(sp)));
        string modelId = options.ResolveModelId();
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        services.AddSingleton(sp => new ServedModel(modelId, created, tokenizer, sp.GetRequiredService<IGenerationScheduler>()) { Images = images });
        services.AddSingleton(new OpenAiApiSettings(options.QueueFullStatusCode, options.DefaultMaxTokens));
        services.AddSingleton<OpenAiEndpoints>();
        return services;
    }

    /// <summary>
    /// The routed experts on workers: <paramref name="experts"/> (owned by the caller), its dispatcher, its
    /// <see cref="DistributionOptions"/> (validated at start) and, in cluster mode, the placement follower, which
    /// <see cref="UseExpertCluster"/> turns into the readiness gate and the admin API reads.
    /// </summary>
    public static IServiceCollection AddExpertCluster(this IServiceCollection services, DistributedExperts experts, DistributionOptions distribution)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(experts);
        ArgumentNullException.ThrowIfNull(distribution);
        services.AddValidatedOptions(distribution, (_, o) => Result(o.Validate()));
        services.AddSingleton(experts);
        services.AddSingleton<Moe.IExpertDispatcher>(experts.Dispatcher);
        if (experts.Follower is { } follower)
        {
            services.AddSingleton(follower);
        }
        return services;
    }

    /// <summary>
    /// Adds what <see cref="AddExpertCluster"/> registered to the request pipeline: the readiness gate (503
    /// <c>cluster_not_ready</c> until the cluster first serves every expert). Call it after the API's error middleware.
    /// Does nothing when no expert cluster is registered.
    /// </summary>
    public static WebApplication UseExpertCluster(this WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        if (app.Services.GetService<ClusterPlacementFollower>() is { } follower)
        {
            ClusterReadinessGate.Use(app, follower);
        }
        return app;
    }

    /// <summary>
    /// Registers <paramref name="value"/> as <see cref="IOptions{T}"/> (its settable properties and collections copied
    /// into the options instance) with <paramref name="validate"/> run when the host starts.
    /// </summary>
    public static OptionsBuilder<T> AddValidatedOptions<T>(this IServiceCollection services, T value, Func<string?, T, ValidateOptionsResult> validate)
        where T : class
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(value);
        ArgumentNullException.ThrowIfNull(validate);
        services.AddSingleton<IValidateOptions<T>>(new DelegateValidator<T>(validate));
        return services.AddOptions<T>().Configure(o => CopyInto(value, o)).ValidateOnStart();
    }

    private static ValidateOptionsResult Result(IReadOnlyList<string> errors) => errors.Count == 0 ? ValidateOptionsResult.Success : ValidateOptionsResult.Fail(errors);

    private static ValidateOptionsResult Check(Action validate)
    {
        try
        {
            validate();
            return ValidateOptionsResult.Success;
        }
        catch (ArgumentException ex)
        {
            return ValidateOptionsResult.Fail(ex.Message);
        }
    }

    // Options classes are plain settable properties plus get-only collections (dictionaries, lists) filled in place.
    private static void CopyInto<T>(T from, T to)
        where T : class
    {
        if (ReferenceEquals(from, to))
        {
            return;
        }
        foreach (var p in typeof(T).GetProperties(BindingFlags.Public | BindingFlags.Instance))
        {
            if (p.GetIndexParameters().Length > 0 || !p.CanRead)
            {
                continue;
            }
            if (p.CanWrite && p.SetMethod!.IsPublic)
            {
                p.SetValue(to, p.GetValue(from));
            }
            else if (p.GetValue(from) is IDictionary source && p.GetValue(to) is IDictionary target)
            {
                target.Clear();
                foreach (DictionaryEntry e in source)
                {
                    target[e.Key] = e.Value;
                }
            }
            else if (p.GetValue(from) is IList list && p.GetValue(to) is IList into && !into.IsFixedSize)
            {
                into.Clear();
                foreach (object? item in list)
                {
                    into.Add(item);
                }
            }
        }
    }

    private sealed class DelegateValidator<T>(Func<string?, T, ValidateOptionsResult> validate) : IValidateOptions<T>
        where T : class
    {
        public ValidateOptionsResult Validate(string? name, T options) => validate(name, options);
    }
}
