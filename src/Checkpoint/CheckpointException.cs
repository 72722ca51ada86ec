namespace Distributed.Checkpoint;

/// <summary>
/// A model directory that cannot be used: missing or malformed <c>config.json</c>, a missing tensor, a wrong shape or
/// dtype, a truncated file. The message names the file, tensor or field.
/// </summary>
public sealed class CheckpointException : Exception
{
    /// <summary>Creates the exception.</summary>
    public CheckpointException(string message) : base(message)
    {
    }

    /// <summary>Creates the exception with a cause.</summary>
    public CheckpointException(string message, Exception inner) : base(message, inner)
    {
    }
}
