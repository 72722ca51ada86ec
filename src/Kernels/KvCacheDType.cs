namespace Distributed.Kernels;

/// <summary>
/// The element type the keys and values of a KV block store are kept in (<c>--kv-dtype</c>). Attention always computes
/// in fp32 on the decoded values; a row (one position of one layer) is rounded once, when it is written, and a row's
/// result still depends only on its own sequence. Values are persisted in configuration: never reuse one.
/// </summary>
public enum KvCacheDType
{
    /// <summary>fp32, 4 bytes per element: exact, the CPU default and the precision the golden fixtures check.</summary>
    Fp32 = 0,

    /// <summary>bf16 (round to nearest even), 2 bytes per element: the default on the CUDA backend.</summary>
    Bf16 = 1,

    /// <summary>
    /// FP8 E4M3, 1 byte per element plus one fp32 scale per row (K and V of one position of one layer, all KV heads):
    /// <c>s = max(max|row| / 448, 1/(448·512))</c>, codes <c>e4m3_rne(clamp(x / s, −448, 448))</c>, decoded as code · s.
    /// </summary>
    Fp8E4M3 = 2,
}

/// <summary>Sizes and parsing of <see cref="KvCacheDType"/>.</summary>
public static class KvCacheDTypes
{
    /// <summary>
    /// Bytes one row of <paramref name="rowWidth"/> elements takes in <paramref name="dtype"/> (K or V alone; FP8
    /// includes its 4-byte scale). The KV budget divides by this: a bf16 cache holds twice the positions of fp32.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Unknown dtype.</exception>
    public static long RowBytes(KvCacheDType dtype, long rowWidth) => dtype switch
    {
        KvCacheDType.Fp32 => rowWidth * 4,
        KvCacheDType.Bf16 => rowWidth * 2,
        KvCacheDType.Fp8E4M3 => rowWidth + 4,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown KV cache dtype"),
    };

    /// <summary>The store's element type where none was asked for: bf16 on a backend with its own (device) store, else fp32.</summary>
    public static KvCacheDType DefaultFor(IKernelBackend backend) => backend is IKvBlockStoreFactory ? KvCacheDType.Bf16 : KvCacheDType.Fp32;

    /// <summary>Parses <c>fp32</c>, <c>bf16</c>, <c>fp8</c> (the CLI's <c>--kv-dtype</c>).</summary>
    /// <exception cref="FormatException">Anything else.</exception>
    public static KvCacheDType Parse(string text) => text.Trim().ToLowerInvariant() switch
    {
        "fp32" => KvCacheDType.Fp32,
        "bf16" => KvCacheDType.Bf16,
        "fp8" => KvCacheDType.Fp8E4M3,
        _ => throw new FormatException($"--kv-dtype '{text}' must be fp32, bf16 or fp8"),
    };
}
