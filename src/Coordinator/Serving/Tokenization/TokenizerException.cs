namespace Distributed.Coordinator.Serving.Tokenization;

/// <summary>
/// A tokenizer that cannot be used: a missing or malformed <c>tokenizer.json</c>, <c>tokenizer_config.json</c>,
/// <c>config.json</c> or <c>generation_config.json</c>, an unsupported tokenizer component, or a token id that does not
/// fit the model. The message names the file and the field or token.
/// </summary>
public sealed class TokenizerException : Exception
{
    /// <summary>Creates the exception.</summary>
    public TokenizerException(string message) : base(message)
    {
    }

    /// <summary>Creates the exception with a cause.</summary>
    public TokenizerException(string message, Exception inner) : base(message, inner)
    {
    }
}
