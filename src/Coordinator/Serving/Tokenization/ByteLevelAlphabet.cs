namespace Distributed.Coordinator.Serving.Tokenization;

/// <summary>
/// The byte-level BPE alphabet (GPT-2's <c>bytes_to_unicode</c>, used unchanged by Llama 3 and Llama 4 tokenizer.json
/// files): every byte maps to one printable char so that a vocabulary entry is a string. Bytes that are printable
/// Latin-1 (<c>!</c>..<c>~</c>, <c>¡</c>..<c>¬</c>, <c>®</c>..<c>ÿ</c>) map to themselves; the other 68 bytes map, in
/// ascending byte order, to U+0100, U+0101, ... (so space 0x20 is <c>Ġ</c> U+0120 and newline 0x0A is <c>Ċ</c> U+010A).
/// </summary>
internal static class ByteLevelAlphabet
{
    private static readonly char[] ByteToCharTable = BuildByteToChar();
    private static readonly Dictionary<char, byte> CharToByteTable = BuildCharToByte(ByteToCharTable);

    /// <summary>The char that stands for <paramref name="value"/> in byte-level vocabulary strings.</summary>
    public static char ByteToChar(byte value) => ByteToCharTable[value];

    /// <summary>The byte that <paramref name="symbol"/> stands for; false when the char is not in the alphabet.</summary>
    public static bool TryCharToByte(char symbol, out byte value) => CharToByteTable.TryGetValue(symbol, out value);

    /// <summary>Maps UTF-8 bytes to their byte-level string (one char per byte).</summary>
    public static string Encode(ReadOnlySpan<byte> bytes)
    {
        Span<char> chars = bytes.Length <= 256 ? stackalloc char[bytes.Length] : new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++)
        {
            chars[i] = ByteToCharTable[bytes[i]];
        }

        return new string(chars);
    }

    /// <summary>
    /// Maps a byte-level vocabulary string back to its bytes; false (and null) when a char is outside the alphabet.
    /// </summary>
    public static bool TryDecode(string token, out byte[]? bytes)
    {
        var result = new byte[token.Length];
        for (int i = 0; i < token.Length; i++)
        {
            if (!CharToByteTable.TryGetValue(token[i], out result[i]))
            {
                bytes = null;
                return false;
            }
        }

        bytes = result;
        return true;
    }

    private static char[] BuildByteToChar()
    {
        var table = new char[256];
        int next = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            table[b] = printable ? (char)b : (char)(256 + next++);
        }

        return table;
    }

    private static Dictionary<char, byte> BuildCharToByte(char[] byteToChar)
    {
        var map = new Dictionary<char, byte>(256);
        for (int b = 0; b < 256; b++)
        {
            map.Add(byteToChar[b], (byte)b);
        }

        return map;
    }
}
