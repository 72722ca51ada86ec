namespace Distributed.Coordinator.Serving.Scheduling;

/// <summary>Continuous-batching scheduler settings.</summary>
public sealed class SchedulerOptions
{
    /// <summary>Configuration section name.</summary>
    public const string SectionName = "Scheduler";

    /// <summary>Requests waiting for admission before new ones are refused (HTTP 429/503). Default: 256.</summary>
    public int MaxQueuedRequests { get; set; } = 256;

    /// <summary>Sequences in the running batch at once (each choice of an <c>n</c> &gt; 1 request counts). Default: 64.</summary>
    public int MaxRunningSequences { get; set; } = 64;

    /// <summary>Tokens per forward step over all sequences (decodes take one each, prefill chunks fill the rest). Default: 512.</summary>
    public int MaxBatchTokens { get; set; } = 512;

    /// <summary>Most prompt tokens one sequence prefills per step, so a long prompt does not stall running decodes. Default: 256.</summary>
    public int PrefillChunkTokens { get; set; } = 256;

    /// <summary>KV cache memory budget in bytes (keys and values in <see cref="KvDType"/>). Default: 256 MiB.</summary>
    public long KvMemoryBytes { get; set; } = 256L << 20;

    /// <summary>
    /// Element type of the KV cache (<c>--kv-dtype</c>): its size sets how many positions the budget holds (bf16 twice
    /// fp32, FP8 about four times). Null = the backend's default: bf16 with the CUDA (device) store, fp32 on the CPU.
    /// Default: null.
    /// </summary>
    public Kernels.KvCacheDType? KvDType { get; set; }

    /// <summary>Positions per KV block. Default: 16.</summary>
    public int KvBlockSize { get; set; } = 16;

    /// <summary>
    /// Keep full KV blocks after their sequences end, keyed by the hash of their token prefix, and start new sequences on
    /// the longest cached prefix (automatic prefix caching). Kept blocks are evicted least recently used first when
    /// blocks run out. Tokens are the same with it on or off. Default: true.
    /// </summary>
    public bool PrefixCaching { get; set; } = true;

    /// <summary>
    /// Keep the KV blocks where the kernel backend computes (device memory on CUDA: attention reads the keys there and
    /// only queries and outputs cross PCIe). False keeps them in host memory, gathered and uploaded per attention call
    /// (the baseline the GPU check compares against). The CPU backend keeps host memory either way.
    /// </summary>
    public bool BackendKvStore { get; set; } = true;

    /// <summary>Retry-After suggested when the queue is full. Default: 1 s.</summary>
    public TimeSpan RetryAfter { get; set; } = TimeSpan.FromSeconds(1);

    /// <summary>Checks every field and their combinations.</summary>
    /// <exception cref="ArgumentException">Names the bad field.</exception>
    public void Validate()
    {
        Require(MaxQueuedRequests >= 1, nameof(MaxQueuedRequests), "must be >= 1");
        Require(MaxRunningSequences >= 1, nameof(MaxRunningSequences), "must be >= 1");
        Require(MaxBatchTokens >= 1, nameof(MaxBatchTokens), "must be >= 1");
        Require(MaxBatchTokens >= MaxRunningSequences, nameof(MaxBatchTokens), $"must be >= MaxRunningSequences ({MaxRunningSequences}) so every running sequence can decode each step");
        Require(PrefillChunkTokens >= 1 && PrefillChunkTokens <= MaxBatchTokens, nameof(PrefillChunkTokens), $"must be in [1, MaxBatchTokens ({MaxBatchTokens})]");
        Require(KvMemoryBytes >= 1 << 16, nameof(KvMemoryBytes), "must be at least 64 KiB");
        Require(KvBlockSize >= 1 && KvBlockSize <= 4096, nameof(KvBlockSize), "must be in [1, 4096]");
        Require(KvDType is null || Enum.IsDefined(KvDType.Value), nameof(KvDType), "must be Fp32, Bf16 or Fp8E4M3");
        Require(RetryAfter > TimeSpan.Zero, nameof(RetryAfter), "must be positive");
    }

    private static void Require(bool ok, string field, string message)
    {
        if (!ok)
        {
            throw new ArgumentException($"Scheduler:{field} {message}");
        }
    }
}
