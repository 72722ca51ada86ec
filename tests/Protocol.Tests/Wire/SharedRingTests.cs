using Distributed.Protocol.Wire;
using Distributed.Tests.Shared;
using Microsoft.Win32.SafeHandles;

namespace Distributed.Protocol.Tests.Wire;

/// <summary>
/// The same-host ring: created sealed, mapped from a received descriptor only after every safety check, and kept mapped
/// while any reference is held. Every check is shown to refuse the descriptor it exists for.
/// </summary>
[Trait("Category", "Unit")]
public sealed class SharedRingTests
{
    private const long Size = 64 << 10;

    /// <summary>A memfd of <paramref name="size"/> bytes carrying <paramref name="seals"/> (no sealing at all when null).</summary>
    internal static SafeFileHandle Memfd(long size, int? seals)
    {
        int fd = UnixInterop.MemfdCreate("test-ring", UnixInterop.MfdCloexec | (seals is null ? 0 : UnixInterop.MfdAllowSealing));
        Assert.True(fd >= 0, UnixInterop.LastError());
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        Assert.Equal(0, UnixInterop.Ftruncate(fd, size));
        if (seals is { } s && s != 0)
        {
            Assert.Equal(0, UnixInterop.Fcntl(fd, UnixInterop.FAddSeals, s));
        }
        return handle;
    }

    [LinuxFact]
    public void CreateSealed_IsSealedAgainstShrinkGrowAndSeal_AndMapsTwiceOverTheSameMemory()
    {
        using var ring = SharedRing.CreateSealed(Size);
        int fd = (int)ring.Descriptor!.DangerousGetHandle();
        int seals = UnixInterop.Fcntl(fd, UnixInterop.FGetSeals, 0);
        Assert.Equal(UnixInterop.SealShrink | UnixInterop.SealGrow | UnixInterop.SealSeal, seals);
        Assert.NotEqual(0, UnixInterop.Ftruncate(fd, Size / 2));
        using var peer = SharedRing.MapReceived(ring.Descriptor, Size, 1 << 20);
        Assert.True(ring.TryGetSpan(100, 4, out var mine));
        Assert.True(peer.TryGetSpan(100, 4, out var theirs));
        mine.Fill(0xAB);
        Assert.Equal([0xAB, 0xAB, 0xAB, 0xAB], theirs.ToArray());
    }

    [LinuxTheory]
    [InlineData(0UL, 0UL, true)]
    [InlineData(0UL, (ulong)Size, true)]
    [InlineData((ulong)Size, 0UL, true)]
    [InlineData(1UL, (ulong)Size, false)]
    [InlineData((ulong)Size + 1, 0UL, false)]
    [InlineData(ulong.MaxValue, 2UL, false)]
    [InlineData(8UL, ulong.MaxValue - 4, false)]
    public void TryGetSpan_AcceptsOnlyRangesInsideTheSealedSize(ulong offset, ulong length, bool inside)
    {
        using var ring = SharedRing.CreateSealed(Size);
        Assert.Equal(inside, ring.TryGetSpan(offset, length, out var span));
        Assert.Equal(inside ? (int)length : 0, span.Length);
    }

    public static TheoryData<string, string> Refusals => new()
    {
        { "unsealable", "lack F_SEAL_SHRINK" },
        { "unsealed", "lack F_SEAL_SHRINK" },
        { "shrinkOnly", "lack F_SEAL_SHRINK and F_SEAL_SEAL" },
        { "sealOnly", "lack F_SEAL_SHRINK" },
        { "writeSealed", "forbid writing" },
        { "smaller", "not the" },
        { "readOnly", "not open read-write" },
        { "regularFile", "" },
        { "tooBig", "outside" },
    };

    [LinuxTheory]
    [MemberData(nameof(Refusals))]
    public void MapReceived_RefusesEveryUnsafeDescriptor(string kind, string reason)
    {
        const int Sealed = UnixInterop.SealShrink | UnixInterop.SealGrow | UnixInterop.SealSeal;
        string? file = null;
        SafeFileHandle? keep = null;
        SafeFileHandle fd;
        ulong announced = Size;
        switch (kind)
        {
            case "unsealable": fd = Memfd(Size, null); break;
            case "unsealed": fd = Memfd(Size, 0); break;
            case "shrinkOnly": fd = Memfd(Size, UnixInterop.SealShrink); break;
            case "sealOnly": fd = Memfd(Size, UnixInterop.SealSeal); break;
            case "writeSealed": fd = Memfd(Size, Sealed | UnixInterop.SealWrite); break;
            case "smaller": fd = Memfd(Size / 2, Sealed); break;
            case "readOnly":
                keep = Memfd(Size, Sealed);
                fd = File.OpenHandle($"/proc/self/fd/{keep.DangerousGetHandle()}", FileMode.Open, FileAccess.Read);
                break;
            case "regularFile":
                file = Path.GetTempFileName();
                File.WriteAllBytes(file, new byte[Size]);
                fd = File.OpenHandle(file, FileMode.Open, FileAccess.ReadWrite);
                break;
            default:
                fd = Memfd(Size, Sealed);
                announced = 1UL << 40;
                break;
        }
        try
        {
            var ex = Assert.Throws<SharedRingException>(() => SharedRing.MapReceived(fd, announced, 1 << 20));
            Assert.Contains(reason, ex.Message);
            if (file is not null)
            {
                Assert.Equal(new byte[Size], File.ReadAllBytes(file));
            }
        }
        finally
        {
            fd.Dispose();
            keep?.Dispose();
            if (file is not null)
            {
                File.Delete(file);
            }
        }
    }

    [LinuxFact]
    public void References_KeepTheMappingAfterDispose_UntilTheLastRelease()
    {
        var ring = SharedRing.CreateSealed(Size);
        Assert.True(ring.TryAcquire());
        ring.Dispose();
        Assert.True(ring.IsClosing);
        Assert.False(ring.TryAcquire());
        Assert.True(ring.TryGetSpan(0, 16, out var span));
        span.Fill(1);
        ring.Release();
        Assert.False(ring.TryGetSpan(0, 16, out _));
        Assert.Throws<InvalidOperationException>(ring.Release);
    }
}
