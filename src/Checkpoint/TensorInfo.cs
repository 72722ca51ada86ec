namespace Distributed.Checkpoint;

/// <summary>One tensor of a safetensors file: name, dtype, shape and where its bytes are.</summary>
/// <param name="Name">Full name in the file (with any <c>language_model.</c> prefix).</param>
/// <param name="DType">Element type.</param>
/// <param name="Shape">Dimensions.</param>
/// <param name="File">Path of the safetensors file holding it.</param>
/// <param name="DataOffset">Absolute byte offset of the first element in <paramref name="File"/>.</param>
/// <param name="ByteLength">Bytes of data.</param>
public sealed record TensorInfo(string Name, DType DType, long[] Shape, string File, long DataOffset, long ByteLength)
{
    /// <summary>Number of elements.</summary>
    public long ElementCount => Shape.Aggregate(1L, (a, b) => checked(a * b));
}
