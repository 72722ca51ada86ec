using System.Net;
using System.Net.Sockets;
using Distributed.Coordinator.Distribution;

namespace Distributed.Coordinator.Tests.Distribution;

public sealed class FreePortsTests
{
    [Fact]
    public void FreePorts_AreDistinctBindableAndOutsideTheEphemeralRange()
    {
        int[] ports = WorkerProcess.FreePorts(16);
        Assert.Equal(16, ports.Distinct().Count());
        if (OperatingSystem.IsLinux())
        {
            // Outgoing connections and port-0 listeners draw from the ephemeral range; a silo port from there can be
            // taken between the probe and the bind (the CI failure this guards against).
            int ephemeralStart = int.Parse(File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range")
                .Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries)[0], System.Globalization.CultureInfo.InvariantCulture);
            if (ephemeralStart - 20000 >= 1024)
            {
                Assert.All(ports, p => Assert.InRange(p, 20000, ephemeralStart - 1));
            }
        }
        var listeners = ports.Select(p => new TcpListener(IPAddress.Loopback, p)).ToList();
        try
        {
            listeners.ForEach(l => l.Start());
        }
        finally
        {
            listeners.ForEach(l => l.Stop());
        }
    }

    [Fact]
    public void FreePorts_RejectsANonPositiveCount() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => WorkerProcess.FreePorts(0));
}
