using Distributed.ExpertWorker.Diagnostics;
using Distributed.ExpertWorker.Hosting;
using Distributed.Protocol.Wire;
using Grpc.Core;
using Microsoft.Extensions.Options;

namespace Distributed.ExpertWorker.Services;

/// <summary>
/// The worker's end of the same-host transport: the <see cref="RingRendezvousListener"/> where coordinators pass their
/// sealed rings after Hello. Started with the web host when <see cref="ExpertWorkerOptions.SharedMemory"/> is on and the
/// platform supports it; if the private directory or socket cannot be created, the worker serves inline rows only and
/// says why once.
/// </summary>
public sealed partial class SharedRingRendezvousService(SessionRegistry sessions, IOptions<ExpertWorkerOptions> options,
    DataPlaneRejections rejections, ILogger<SharedRingRendezvousService> logger) : IHostedService, IAsyncDisposable
{
    private RingRendezvousListener? _listener;

    /// <summary>The socket path Hello advertises, or null when the shared-memory transport is off.</summary>
    public string? SocketPath => _listener?.SocketPath;

    /// <summary>Where the private directory goes: <see cref="ExpertWorkerOptions.SharedMemoryDirectory"/>, else
    /// <c>$XDG_RUNTIME_DIR</c> when it exists, else the temp directory.</summary>
    public static string BaseDirectory(ExpertWorkerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!string.IsNullOrWhiteSpace(options.SharedMemoryDirectory))
        {
            return options.SharedMemoryDirectory;
        }
        string? runtime = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR");
        return !string.IsNullOrEmpty(runtime) && Directory.Exists(runtime) ? runtime : Path.GetTempPath();
    }

    /// <inheritdoc />
    public Task StartAsync(CancellationToken cancellationToken)
    {
        var o = options.Value;
        if (!o.SharedMemory)
        {
            return Task.CompletedTask;
        }
        if (!SharedRing.IsSupported)
        {
            LogUnavailable("this platform has no memfd/SCM_RIGHTS");
            return Task.CompletedTask;
        }
        try
        {
            _listener = RingRendezvousListener.Start(BaseDirectory(o), Attach,
                reason => rejections.Report(RejectionKind.RingRefused, StatusCode.PermissionDenied, reason));
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or System.Net.Sockets.SocketException)
        {
            LogUnavailable(ex.Message);
        }
        return Task.CompletedTask;
    }

    private string? Attach(RingAttachRequest request)
    {
        string? refused = sessions.AttachRing(request, options.Value.MaxSharedRingBytes);
        if (refused is null)
        {
            LogAttached(request.SessionId[..8], request.PeerPid, request.PeerUid);
        }
        return refused;
    }

    /// <inheritdoc />
    public async Task StopAsync(CancellationToken cancellationToken) => await DisposeAsync().ConfigureAwait(false);

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _listener, null) is { } listener)
        {
            await listener.DisposeAsync().ConfigureAwait(false);
        }
    }

    [LoggerMessage(EventId = LogEvents.RingAttached, Level = LogLevel.Information,
        Message = "Shared ring attached to session {SessionPrefix}… (peer pid {PeerPid}, uid {PeerUid})")]
    private partial void LogAttached(string sessionPrefix, int peerPid, uint peerUid);

    [LoggerMessage(EventId = LogEvents.DataPlaneSecurity + 100, Level = LogLevel.Warning,
        Message = "The shared-memory transport is off (rows travel inline): {Reason}")]
    private partial void LogUnavailable(string reason);
}
