using System.Collections.Frozen;

namespace Distributed.Coordinator.Admin.Dashboard;

/// <summary>
/// The cluster dashboard (issue #6): one static HTML page with its script and style sheet, embedded in this assembly
/// and served at <see cref="PagePath"/> next to the admin API. The page and its two assets are served without a token
/// (they hold no cluster data); every data call the page makes goes to <c>/admin/v1</c> with the token the operator
/// typed (kept in the tab's sessionStorage), so the API's own 401 check still guards all data and every change.
/// </summary>
public static class AdminDashboard
{
    /// <summary>Path of the page.</summary>
    public const string PagePath = "/admin/dashboard";

    // Same-origin only: no inline script or style, no framing, nothing fetched from elsewhere.
    private const string ContentSecurityPolicy =
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

    private static readonly FrozenDictionary<string, Asset> Assets = new Dictionary<string, Asset>(StringComparer.Ordinal)
    {
        [PagePath] = Load("dashboard.html", "text/html; charset=utf-8"),
        [PagePath + "/dashboard.js"] = Load("dashboard.js", "text/javascript; charset=utf-8"),
        [PagePath + "/dashboard.css"] = Load("dashboard.css", "text/css; charset=utf-8"),
    }.ToFrozenDictionary(StringComparer.Ordinal);

    /// <summary>
    /// Maps <c>GET</c> <see cref="PagePath"/>, <c>{PagePath}/dashboard.js</c> and <c>{PagePath}/dashboard.css</c>
    /// (no token; <c>Cache-Control: no-cache</c>, a strict same-origin Content-Security-Policy, <c>nosniff</c>, no framing).
    /// </summary>
    public static IEndpointRouteBuilder MapAdminDashboard(this IEndpointRouteBuilder endpoints)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        foreach (var (path, asset) in Assets)
        {
            endpoints.MapGet(path, (HttpContext http) => Serve(http, asset)).ExcludeFromDescription();
        }
        return endpoints;
    }

    private static IResult Serve(HttpContext http, Asset asset)
    {
        var headers = http.Response.Headers;
        headers.CacheControl = "no-cache";
        headers.ContentSecurityPolicy = ContentSecurityPolicy;
        headers.XContentTypeOptions = "nosniff";
        headers.XFrameOptions = "DENY";
        headers["Referrer-Policy"] = "no-referrer";
        return Results.Bytes(asset.Content, asset.ContentType);
    }

    private static Asset Load(string name, string contentType)
    {
        string resource = "Distributed.Coordinator.Admin.Dashboard." + name;
        using var stream = typeof(AdminDashboard).Assembly.GetManifestResourceStream(resource)
            ?? throw new InvalidOperationException($"embedded resource '{resource}' is missing from {typeof(AdminDashboard).Assembly.GetName().Name}");
        using var buffer = new MemoryStream();
        stream.CopyTo(buffer);
        return new Asset(buffer.ToArray(), contentType);
    }

    private sealed record Asset(byte[] Content, string ContentType);
}
