using Distributed.Protocol.Wire;

namespace Distributed.Coordinator.Distribution;

/// <summary>
/// First-fit allocation of 64-byte aligned regions in a <see cref="SharedRing"/>. Few regions are live at once (one per
/// in-flight request to this worker), so a sorted list is enough. Regions start at <paramref name="start"/> (after the
/// doorbell's control area when the session has one).
/// </summary>
internal sealed class SharedRingAllocator(SharedRing ring, long start = 0)
{
    private const int Alignment = 64;
    private readonly List<(ulong Offset, ulong Length)> _live = [];
    private readonly Lock _lock = new();

    public SharedRing Ring { get; } = ring;

    /// <summary>A region of <paramref name="length"/> bytes, or null when the ring has no gap that large or is closing.</summary>
    public RowLease? TryRent(int length)
    {
        ulong size = ((ulong)length + Alignment - 1) / Alignment * Alignment;
        if (!Ring.TryAcquire())
        {
            return null;
        }
        lock (_lock)
        {
            ulong cursor = (ulong)start;
            int index = 0;
            for (; index < _live.Count; index++)
            {
                if (_live[index].Offset - cursor >= size)
                {
                    break;
                }
                cursor = _live[index].Offset + _live[index].Length;
            }
            if (cursor + size > (ulong)Ring.Size)
            {
                Ring.Release();
                return null;
            }
            _live.Insert(index, (cursor, size));
            ulong offset = cursor;
            return RowLease.Shared(Ring, offset, length, () => Free(offset));
        }
    }

    private void Free(ulong offset)
    {
        lock (_lock)
        {
            int i = _live.FindIndex(r => r.Offset == offset);
            if (i >= 0)
            {
                _live.RemoveAt(i);
            }
        }
    }
}
