using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Distributed.Coordinator.Serving.Tokenization;

/// <summary>
/// The <c>Split</c> pre-tokenizer of a tokenizer.json: cuts text into the pieces that BPE then encodes one by one.
/// </summary>
/// <remarks>
/// Hugging Face runs the pattern over Unicode code points, .NET's <see cref="Regex"/> over UTF-16 code units, so a
/// character outside the BMP (emoji, CJK extension B, math letters) would be two unmatched surrogates here and split
/// differently (HF keeps <c>"😀a"</c> as one piece, a raw .NET match splits it in two). Before matching, each such
/// character is therefore replaced by one BMP character of the same Unicode general category, which every class in
/// these patterns (<c>\p{L}</c>, <c>\p{Lu}</c>, <c>\p{N}</c>, <c>\s</c>, ...) treats the same way, and the match bounds
/// are mapped back to the original string.
/// </remarks>
internal sealed class PreTokenizerSplitter
{
    private static readonly char[] CategoryRepresentatives = BuildRepresentatives();
    private readonly Regex _regex;
    private readonly bool _keepGaps;

    /// <param name="regex">The split pattern.</param>
    /// <param name="keepGaps">
    /// True for HF's <c>Isolated</c> behaviour (text between matches is a piece too); false to keep only matches
    /// (<c>Removed</c> with <c>invert: true</c>).
    /// </param>
    public PreTokenizerSplitter(Regex regex, bool keepGaps)
    {
        _regex = regex;
        _keepGaps = keepGaps;
    }

    /// <summary>The pattern, for diagnostics.</summary>
    public string Pattern => _regex.ToString();

    /// <summary>Appends the pieces of <paramref name="text"/> as (start, length) in UTF-16 units of the original.</summary>
    public void Split(string text, List<(int Start, int Length)> pieces)
    {
        if (text.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF') < 0)
        {
            AddPieces(text, text.Length, pieces, map: null);
            return;
        }

        var substituted = new StringBuilder(text.Length);
        var map = new List<int>(text.Length + 1);
        for (int i = 0; i < text.Length; i++)
        {
            map.Add(i);
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                int codePoint = char.ConvertToUtf32(text[i], text[i + 1]);
                substituted.Append(CategoryRepresentatives[(int)CharUnicodeInfo.GetUnicodeCategory(codePoint)]);
                i++;
            }
            else
            {
                substituted.Append(text[i]);
            }
        }

        map.Add(text.Length);
        AddPieces(substituted.ToString(), text.Length, pieces, map);
    }

    private void AddPieces(string input, int originalLength, List<(int Start, int Length)> pieces, List<int>? map)
    {
        int previousEnd = 0;
        for (Match match = _regex.Match(input); match.Success; match = match.NextMatch())
        {
            if (match.Length == 0)
            {
                continue;
            }

            int start = map is null ? match.Index : map[match.Index];
            int end = map is null ? match.Index + match.Length : map[match.Index + match.Length];
            if (_keepGaps && start > previousEnd)
            {
                pieces.Add((previousEnd, start - previousEnd));
            }

            pieces.Add((start, end - start));
            previousEnd = end;
        }

        if (_keepGaps && originalLength > previousEnd)
        {
            pieces.Add((previousEnd, originalLength - previousEnd));
        }
    }

    private static char[] BuildRepresentatives()
    {
        // The first non-ASCII BMP char of each category: never a pattern literal (those are ASCII) and, because no
        // supplementary character is whitespace or a control, never a char that \s treats differently.
        int categoryCount = Enum.GetValues<UnicodeCategory>().Length;
        var representatives = new char[categoryCount];
        var found = new bool[categoryCount];
        for (int c = 0x80; c <= 0xFFFF; c++)
        {
            if (c is >= 0xD800 and <= 0xDFFF)
            {
                continue;
            }

            int category = (int)CharUnicodeInfo.GetUnicodeCategory((char)c);
            if (!found[category])
            {
                found[category] = true;
                representatives[category] = (char)c;
            }
        }

        for (int category = 0; category < categoryCount; category++)
        {
            if (!found[category])
            {
                // Only Surrogate lacks a BMP representative and a code point is never of that category.
                representatives[category] = '\uFFFD';
            }
        }

        return representatives;
    }
}
