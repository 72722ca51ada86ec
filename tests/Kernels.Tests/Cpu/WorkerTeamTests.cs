using Distributed.Kernels.Cpu;

namespace Distributed.Kernels.Tests.Cpu;

[Trait("Category", "Unit")]
public sealed class WorkerTeamTests
{
    private sealed class RecordingTask : ITeamTask
    {
        public int[] Calls { get; } = new int[8];
        public int Threads { get; private set; }

        public void Execute(int thread, int threads)
        {
            Interlocked.Increment(ref Calls[thread]);
            Threads = threads;
        }
    }

    private sealed class ThrowingTask : ITeamTask
    {
        public void Execute(int thread, int threads)
        {
            if (thread == 1)
            {
                throw new InvalidOperationException("boom");
            }
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    public void Run_CallsEveryMemberOnce(int threads)
    {
        using var team = new WorkerTeam(threads);
        var task = new RecordingTask();
        for (int i = 0; i < 100; i++)
        {
            team.Run(task);
        }
        Assert.Equal(threads, task.Threads);
        for (int t = 0; t < threads; t++)
        {
            Assert.Equal(100, task.Calls[t]);
        }
    }

    [Fact]
    public void Run_AfterWorkersFellAsleep_WakesThem()
    {
        using var team = new WorkerTeam(2);
        var task = new RecordingTask();
        team.Run(task);
        Thread.Sleep(WorkerTeam.SpinMicroseconds / 1000 * 5);
        team.Run(task);
        Thread.Sleep(WorkerTeam.SpinMicroseconds / 1000 * 5);
        team.Run(task);
        Assert.Equal(3, task.Calls[1]);
    }

    [Fact]
    public void Run_WorkerThrows_SurfacesOnCaller()
    {
        using var team = new WorkerTeam(2);
        var ex = Assert.Throws<AggregateException>(() => team.Run(new ThrowingTask()));
        Assert.IsType<InvalidOperationException>(ex.InnerException);
        var task = new RecordingTask();
        team.Run(task);
        Assert.Equal(1, task.Calls[1]);
    }
}
