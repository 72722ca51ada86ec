namespace Distributed.Tests.Shared;

/// <summary>A fact that needs Linux (memfd, file seals, SCM_RIGHTS, Unix sockets): skips with that reason elsewhere.</summary>
internal sealed class LinuxFactAttribute : FactAttribute
{
    public LinuxFactAttribute()
    {
        if (!OperatingSystem.IsLinux())
        {
            Skip = LinuxTheoryAttribute.Reason;
        }
    }
}

/// <summary>A theory that needs Linux (memfd, file seals, SCM_RIGHTS, Unix sockets): skips with that reason elsewhere.</summary>
internal sealed class LinuxTheoryAttribute : TheoryAttribute
{
    internal const string Reason = "needs Linux: the same-host transport uses memfd, file seals and SCM_RIGHTS";

    public LinuxTheoryAttribute()
    {
        if (!OperatingSystem.IsLinux())
        {
            Skip = Reason;
        }
    }
}
