using System.Diagnostics;
using System.Runtime.ExceptionServices;

namespace Distributed.Kernels.Cpu;

/// <summary>One fork-join step of a kernel: every team member calls <see cref="Execute"/> once.</summary>
internal interface ITeamTask
{
    /// <param name="thread">0 for the calling thread, 1..threads-1 for workers.</param>
    /// <param name="threads">Team size.</param>
    void Execute(int thread, int threads);
}

/// <summary>
/// A dedicated team of worker threads for one backend. The calling thread is member 0; members 1..n-1 are unpinned
/// threads that spin for <see cref="SpinMicroseconds"/> after their last task (PAUSE first, then yielding) and then
/// block on a semaphore. On a 2-vCPU VM, waking a blocked thread costs tens of microseconds and a shared
/// thread pool (Parallel.For) often runs sub-millisecond work entirely on the caller, so kernels use this team
/// instead; see STACK-NOTES pitfall 10.
/// </summary>
/// <remarks>Not reentrant and not thread-safe: callers serialize <see cref="Run"/> (the backend holds a lock).</remarks>
internal sealed class WorkerTeam : IDisposable
{
    /// <summary>How long an idle worker spins before it blocks, in microseconds.</summary>
    public const int SpinMicroseconds = 2000;

    /// <summary>PAUSE instructions between two polls of a shared flag (a few hundred cycles).</summary>
    private const int PausesPerPoll = 8;

    /// <summary>How long a wait polls with PAUSE only before it starts yielding, in microseconds.</summary>
    private const int PureSpinMicroseconds = 30;

    private readonly Thread[] _workers;
    private readonly SemaphoreSlim[] _wake;
    private readonly int[] _sleeping;
    private readonly long _spinTicks;
    private readonly long _pureSpinTicks;
    private ITeamTask? _task;
    private int _generation;
    private int _pending;
    private Exception? _error;
    private volatile bool _disposed;

    public WorkerTeam(int threads)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        Threads = threads;
        _spinTicks = Stopwatch.Frequency * SpinMicroseconds / 1_000_000;
        _pureSpinTicks = Stopwatch.Frequency * PureSpinMicroseconds / 1_000_000;
        _workers = new Thread[threads - 1];
        _wake = new SemaphoreSlim[threads - 1];
        _sleeping = new int[(threads - 1) * 16]; // one cache line per worker flag
        for (int i = 0; i < _workers.Length; i++)
        {
            _wake[i] = new SemaphoreSlim(0);
            int member = i + 1;
            _workers[i] = new Thread(() => WorkerLoop(member))
            {
                IsBackground = true,
                Name = $"cpu-kernels-{member}",
            };
            _workers[i].Start();
        }
    }

    /// <summary>Team size including the calling thread.</summary>
    public int Threads { get; }

    /// <summary>Runs <paramref name="task"/> on every member and returns when all have finished.</summary>
    /// <exception cref="AggregateException">A worker threw; the first exception is wrapped.</exception>
    public void Run(ITeamTask task)
    {
        if (_disposed)
        {
            KernelThrowHelper.ThrowDisposed(nameof(WorkerTeam));
        }
        if (Threads == 1)
        {
            task.Execute(0, 1);
            return;
        }
        _task = task;
        _error = null;
        Volatile.Write(ref _pending, Threads - 1);
        Interlocked.Increment(ref _generation); // full fence: publishes _task before any worker can see the generation
        for (int i = 0; i < _workers.Length; i++)
        {
            if (Volatile.Read(ref _sleeping[i * 16]) != 0 && Interlocked.Exchange(ref _sleeping[i * 16], 0) != 0)
            {
                _wake[i].Release();
            }
        }
        Exception? local = null;
        try
        {
            task.Execute(0, Threads);
        }
        catch (Exception e)
        {
            local = e;
        }
        WaitUntil(ref _pending, 0);
        _task = null;
        if (local is not null)
        {
            ExceptionDispatchInfo.Throw(local);
        }
        if (_error is { } error)
        {
            throw new AggregateException("a CPU kernel worker failed", error);
        }
    }

    private void WorkerLoop(int member)
    {
        int slot = (member - 1) * 16;
        int seen = 0;
        while (true)
        {
            int generation = Volatile.Read(ref _generation);
            if (generation == seen)
            {
                long start = Stopwatch.GetTimestamp();
                var spin = new SpinWait();
                int polls = 0;
                while ((generation = Volatile.Read(ref _generation)) == seen)
                {
                    Pause(ref spin, start);
                    if ((++polls & 63) == 0 && Stopwatch.GetTimestamp() - start > _spinTicks)
                    {
                        generation = Sleep(member, slot, seen);
                        break;
                    }
                }
            }
            seen = generation;
            if (_disposed)
            {
                return;
            }
            try
            {
                _task!.Execute(member, Threads);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref _error, e, null);
            }
            Interlocked.Decrement(ref _pending);
        }
    }

    /// <summary>
    /// One poll interval: PAUSE-only for the first <see cref="PureSpinMicroseconds"/>, then <see cref="SpinWait"/> (which
    /// yields). PAUSE alone keeps hand-offs at a microsecond on a quiet machine, where sched_yield could give the core to
    /// another process for a whole time slice; yielding afterwards lets a team member that shares this core (the
    /// machine is oversubscribed) run instead of waiting for the scheduler tick.
    /// </summary>
    private void Pause(ref SpinWait spin, long start)
    {
        if (Stopwatch.GetTimestamp() - start < _pureSpinTicks)
        {
            Thread.SpinWait(PausesPerPoll);
        }
        else
        {
            spin.SpinOnce(sleep1Threshold: -1);
        }
    }

    private void WaitUntil(ref int value, int expected)
    {
        long start = Stopwatch.GetTimestamp();
        var spin = new SpinWait();
        while (Volatile.Read(ref value) != expected)
        {
            Pause(ref spin, start);
        }
    }

    private int Sleep(int member, int slot, int seen)
    {
        while (true)
        {
            Interlocked.Exchange(ref _sleeping[slot], 1); // full fence before re-reading the generation (Dekker with Run)
            int generation = Volatile.Read(ref _generation);
            if (generation != seen)
            {
                if (Interlocked.Exchange(ref _sleeping[slot], 0) == 0)
                {
                    // Run already cleared the flag and released the semaphore: consume that release.
                    _wake[member - 1].Wait();
                }
                return generation;
            }
            _wake[member - 1].Wait();
            generation = Volatile.Read(ref _generation);
            if (generation != seen)
            {
                return generation;
            }
        }
    }

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        Interlocked.Increment(ref _generation);
        for (int i = 0; i < _workers.Length; i++)
        {
            _wake[i].Release();
        }
        foreach (var worker in _workers)
        {
            worker.Join();
        }
        foreach (var wake in _wake)
        {
            wake.Dispose();
        }
    }
}
