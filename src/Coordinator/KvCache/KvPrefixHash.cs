using System.Buffers.Binary;
using System.Security.Cryptography;

namespace Distributed.Coordinator.KvCache;

/// <summary>
/// The identity of a full KV block's content: SHA-256 over its parent block's hash, the block's token ids and every
/// <see cref="KvContentSpan"/> overlapping it. A chain, so block i's hash names the whole prefix
/// <c>[0, (i + 1) · BlockSize)</c>: the keys and values of any layer at those positions are a function of that prefix
/// alone (causal attention, and batch-invariant kernels make them bit-identical however they were computed).
/// SHA-256 rather than a fast non-cryptographic hash because prompts come from clients: a crafted collision would
/// hand one client another's cached keys.
/// </summary>
/// <param name="A">Bytes 0–7 of the digest.</param>
/// <param name="B">Bytes 8–15.</param>
/// <param name="C">Bytes 16–23.</param>
/// <param name="D">Bytes 24–31.</param>
public readonly record struct KvPrefixHash(ulong A, ulong B, ulong C, ulong D)
{
    /// <summary>The parent of block 0 (an empty prefix).</summary>
    public static KvPrefixHash Empty => default;

    /// <summary>
    /// The hash of the block holding <paramref name="tokens"/> at positions <c>[blockStart, blockStart + tokens.Length)</c>
    /// after the prefix <paramref name="parent"/>. Content spans that overlap the block are mixed in with their absolute
    /// position, length and content hash; spans that do not overlap it are ignored.
    /// </summary>
    public static KvPrefixHash Next(KvPrefixHash parent, int blockStart, ReadOnlySpan<int> tokens, IReadOnlyList<KvContentSpan>? content = null)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        Span<byte> buffer = stackalloc byte[64];
        BinaryPrimitives.WriteUInt64LittleEndian(buffer, parent.A);
        BinaryPrimitives.WriteUInt64LittleEndian(buffer[8..], parent.B);
        BinaryPrimitives.WriteUInt64LittleEndian(buffer[16..], parent.C);
        BinaryPrimitives.WriteUInt64LittleEndian(buffer[24..], parent.D);
        BinaryPrimitives.WriteInt32LittleEndian(buffer[32..], tokens.Length);
        sha.AppendData(buffer[..36]);
        for (int i = 0; i < tokens.Length;)
        {
            int n = Math.Min(16, tokens.Length - i);
            for (int j = 0; j < n; j++)
            {
                BinaryPrimitives.WriteInt32LittleEndian(buffer[(4 * j)..], tokens[i + j]);
            }
            sha.AppendData(buffer[..(4 * n)]);
            i += n;
        }
        if (content is not null)
        {
            int blockEnd = blockStart + tokens.Length;
            foreach (var span in content)
            {
                if (span.Start < blockEnd && span.Start + span.Length > blockStart)
                {
                    // Tag 0xC0 separates content records from token bytes (token records have a fixed length anyway).
                    buffer[0] = 0xC0;
                    BinaryPrimitives.WriteInt32LittleEndian(buffer[1..], span.Start);
                    BinaryPrimitives.WriteInt32LittleEndian(buffer[5..], span.Length);
                    BinaryPrimitives.WriteInt32LittleEndian(buffer[9..], span.ContentHash.Length);
                    sha.AppendData(buffer[..13]);
                    sha.AppendData(span.ContentHash.Span);
                }
            }
        }
        Span<byte> digest = stackalloc byte[32];
        sha.GetHashAndReset(digest);
        return new KvPrefixHash(BinaryPrimitives.ReadUInt64LittleEndian(digest), BinaryPrimitives.ReadUInt64LittleEndian(digest[8..]),
            BinaryPrimitives.ReadUInt64LittleEndian(digest[16..]), BinaryPrimitives.ReadUInt64LittleEndian(digest[24..]));
    }
}

/// <summary>
/// Positions <c>[Start, Start + Length)</c> of a sequence whose embeddings do not come from their token ids alone but
/// from content (an image's patch embeddings: issue #13) identified by <paramref name="ContentHash"/>. The prefix cache
/// mixes the hash into the key of every block the span overlaps, so two prompts with the same placeholder tokens but
/// different images never share keys.
/// </summary>
/// <param name="Start">First position (≥ 0).</param>
/// <param name="Length">Positions covered (≥ 1).</param>
/// <param name="ContentHash">A collision-resistant hash of the content (for example SHA-256 of the image bytes).</param>
public readonly record struct KvContentSpan(int Start, int Length, ReadOnlyMemory<byte> ContentHash);

/// <summary>Key of one cached block: its prefix hash and its layer (a block holds the positions of one layer).</summary>
/// <param name="Hash">The prefix hash of the block's positions.</param>
/// <param name="Layer">Decoder layer index.</param>
public readonly record struct KvBlockKey(KvPrefixHash Hash, int Layer);
