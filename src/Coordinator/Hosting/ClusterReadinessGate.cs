using Distributed.Coordinator.Distribution;
using Distributed.Coordinator.Serving.Api;

namespace Distributed.Coordinator.Hosting;

/// <summary>
/// Generation requests arriving before the expert cluster has ever served every expert (workers not started yet, the
/// first plan still loading) are answered at once with 503 and the reason, instead of queueing behind a dispatch that
/// would wait for the cluster. Once the cluster has served, a plan change or a repair in progress is waited out by
/// the dispatcher (<see cref="IPlacementSource.GetServingTableAsync"/>), so no request is refused for it.
/// </summary>
public static class ClusterReadinessGate
{
    private static readonly string[] GenerationPaths = ["/v1/completions", "/v1/chat/completions"];

    /// <summary>Adds the gate to <paramref name="app"/> (after the API's error middleware, so the refusal is an OpenAI error object).</summary>
    public static void Use(WebApplication app, ClusterPlacementFollower follower)
    {
        ArgumentNullException.ThrowIfNull(app);
        ArgumentNullException.ThrowIfNull(follower);
        app.Use(async (context, next) =>
        {
            if (!follower.HasServed && GenerationPaths.Any(p => context.Request.Path.StartsWithSegments(p, StringComparison.Ordinal)))
            {
                throw new ApiErrorException(503, ApiErrorTypes.ServiceUnavailable,
                    $"the expert cluster is not serving yet: {follower.NotReadyReason() ?? "waiting for the first placement plan"}",
                    code: "cluster_not_ready", retryAfter: TimeSpan.FromSeconds(2));
            }
            await next(context).ConfigureAwait(false);
        });
    }
}
