namespace Distributed.Kernels.Cpu;

/// <summary>
/// The few x86-64 instructions the <see cref="Bf16DotKernels"/> microkernels need, encoded by hand (legacy REX forms
/// and EVEX for the 512-bit ones). Memory operands always carry a 32-bit displacement, so EVEX's compressed disp8
/// scaling never applies. Register numbers: general-purpose 0 = rax … 7 = rdi, 8–15 = r8–r15; vector 0–31 = zmm0–31.
/// </summary>
internal static class X64Emitter
{
    private const int Rax = 0;
    private const int Rcx = 1;
    private const int Rdx = 2;
    private const int Rsi = 6;
    private const int Rdi = 7;
    private const int R8 = 8;
    private const int R9 = 9;
    private const int R10 = 10;
    private const int R11 = 11;

    /// <summary>Weight registers of the microkernel (accumulators are zmm0 … zmm15).</summary>
    private const int WeightLo = 16;
    private const int WeightHi = 17;

    /// <summary>
    /// Emits <c>void kernel(uint* x, nint ldxBytes, uint* w, nint pairLines, float* y, nint ldyBytes)</c> (System V
    /// arguments rdi, rsi, rdx, rcx, r8, r9) for <paramref name="rows"/> rows × 32 columns: accumulators start from +0
    /// or, with <paramref name="accumulate"/>, from y; for each pair line the two 64-byte weight lines are loaded and
    /// every row's bf16 pair is broadcast into one <c>VDPBF16PS</c> per accumulator; then y is stored. Uses only
    /// caller-saved registers (rax, rcx, rdx, rsi, rdi, r8–r11, zmm0–17).
    /// </summary>
    public static void EmitMicrokernel(List<byte> c, int rows, bool accumulate, int prefetchBytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rows, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(rows, 8);
        // Row r of x: rows 0–2 from rdi, 3–5 from r10 = rdi + 3·ldx, 6–7 from r11 = rdi + 6·ldx (index rsi × 1 or 2).
        if (rows > 3)
        {
            Lea(c, R10, Rdi, Rsi, 2);
            AddReg(c, R10, Rsi);
        }
        if (rows > 6)
        {
            Lea(c, R11, R10, Rsi, 2);
            AddReg(c, R11, Rsi);
        }
        if (accumulate)
        {
            MoveAccumulators(c, rows, 0x10); // vmovups zmm, [y row]
        }
        else
        {
            for (int v = 0; v < 2 * rows; v++)
            {
                EvexRegister(c, map: 1, pp: 1, opcode: 0xEF, reg: v, vvvv: v, rm: v); // vpxord zmm_v, zmm_v, zmm_v
            }
        }
        TestReg(c, Rcx);
        int skip = JumpRel32(c, 0x84); // jz end
        int loop = c.Count;
        Prefetch0(c, Rdx, prefetchBytes);
        Prefetch0(c, Rdx, prefetchBytes + 64);
        Evex(c, map: 1, pp: 0, opcode: 0x10, reg: WeightLo, vvvv: -1, new Mem(Rdx, -1, 1, 0), broadcast: false);
        Evex(c, map: 1, pp: 0, opcode: 0x10, reg: WeightHi, vvvv: -1, new Mem(Rdx, -1, 1, 64), broadcast: false);
        for (int r = 0; r < rows; r++)
        {
            Mem x = RowOperand(r);
            // vdpbf16ps zmm_acc, zmm_w, dword [x]{1to16}: EVEX.512.F3.0F38.W0 52 /r
            Evex(c, map: 2, pp: 2, opcode: 0x52, reg: 2 * r, vvvv: WeightLo, x, broadcast: true);
            Evex(c, map: 2, pp: 2, opcode: 0x52, reg: (2 * r) + 1, vvvv: WeightHi, x, broadcast: true);
        }
        AddImm(c, Rdx, 128);
        AddImm(c, Rdi, 4);
        if (rows > 3)
        {
            AddImm(c, R10, 4);
        }
        if (rows > 6)
        {
            AddImm(c, R11, 4);
        }
        DecReg(c, Rcx);
        int back = JumpRel32(c, 0x85); // jnz loop
        Patch(c, back, loop);
        Patch(c, skip, c.Count);
        MoveAccumulators(c, rows, 0x11); // vmovups [y row], zmm
        c.AddRange([0xC5, 0xF8, 0x77]); // vzeroupper
        c.Add(0xC3); // ret
    }

    // Row r's accumulators zmm(2r), zmm(2r+1) from or to y + r·ldy (rax walks the rows from r8 by r9):
    // EVEX.512.0F.W0 10 /r (load) or 11 /r (store).
    private static void MoveAccumulators(List<byte> c, int rows, byte opcode)
    {
        MovReg(c, Rax, R8);
        for (int r = 0; r < rows; r++)
        {
            Evex(c, map: 1, pp: 0, opcode: opcode, reg: 2 * r, vvvv: -1, new Mem(Rax, -1, 1, 0), broadcast: false);
            Evex(c, map: 1, pp: 0, opcode: opcode, reg: (2 * r) + 1, vvvv: -1, new Mem(Rax, -1, 1, 64), broadcast: false);
            if (r < rows - 1)
            {
                AddReg(c, Rax, R9);
            }
        }
    }

    private static Mem RowOperand(int row) => row switch
    {
        0 => new Mem(Rdi, -1, 1, 0),
        1 => new Mem(Rdi, Rsi, 1, 0),
        2 => new Mem(Rdi, Rsi, 2, 0),
        3 => new Mem(R10, -1, 1, 0),
        4 => new Mem(R10, Rsi, 1, 0),
        5 => new Mem(R10, Rsi, 2, 0),
        6 => new Mem(R11, -1, 1, 0),
        _ => new Mem(R11, Rsi, 1, 0),
    };

    /// <summary><c>[base + index·scale + disp32]</c>; index -1 = none.</summary>
    private readonly record struct Mem(int Base, int Index, int Scale, int Disp);

    private static void Evex(List<byte> c, int map, int pp, byte opcode, int reg, int vvvv, Mem m, bool broadcast)
    {
        int x = m.Index < 0 ? 1 : ((m.Index >> 3) & 1) ^ 1;
        EvexPrefix(c, map, pp, reg, vvvv, x, ((m.Base >> 3) & 1) ^ 1, broadcast);
        c.Add(opcode);
        ModRmMemory(c, reg & 7, m);
    }

    private static void EvexRegister(List<byte> c, int map, int pp, byte opcode, int reg, int vvvv, int rm)
    {
        EvexPrefix(c, map, pp, reg, vvvv, ((rm >> 4) & 1) ^ 1, ((rm >> 3) & 1) ^ 1, broadcast: false);
        c.Add(opcode);
        c.Add((byte)(0xC0 | ((reg & 7) << 3) | (rm & 7)));
    }

    // 62 | R X B R' 0 0 m m | W v v v v 1 p p | z L' L b V' a a a  (R, X, B, R', vvvv, V' inverted; L'L = 10: 512 bits)
    private static void EvexPrefix(List<byte> c, int map, int pp, int reg, int vvvv, int xBit, int bBit, bool broadcast)
    {
        int r = ((reg >> 3) & 1) ^ 1;
        int rPrime = ((reg >> 4) & 1) ^ 1;
        int v = vvvv < 0 ? 0 : vvvv;
        int vLow = ~v & 15;
        int vPrime = ((v >> 4) & 1) ^ 1;
        c.Add(0x62);
        c.Add((byte)((r << 7) | (xBit << 6) | (bBit << 5) | (rPrime << 4) | map));
        c.Add((byte)((vLow << 3) | 0x04 | pp));
        c.Add((byte)((2 << 5) | ((broadcast ? 1 : 0) << 4) | (vPrime << 3)));
    }

    // mod = 10 (disp32); SIB when there is an index (or the base is rsp/r12).
    private static void ModRmMemory(List<byte> c, int regLow, Mem m)
    {
        bool sib = m.Index >= 0 || (m.Base & 7) == 4;
        c.Add((byte)(0x80 | (regLow << 3) | (sib ? 4 : m.Base & 7)));
        if (sib)
        {
            int scale = m.Scale switch { 1 => 0, 2 => 1, 4 => 2, _ => 3 };
            int index = m.Index < 0 ? 4 : m.Index & 7;
            c.Add((byte)((scale << 6) | (index << 3) | (m.Base & 7)));
        }
        c.AddRange(BitConverter.GetBytes(m.Disp));
    }

    private static byte Rex(bool w, int reg, int index, int rm) =>
        (byte)(0x40 | (w ? 8 : 0) | (((reg >> 3) & 1) << 2) | (((index >> 3) & 1) << 1) | ((rm >> 3) & 1));

    // lea dst, [base + index·scale]
    private static void Lea(List<byte> c, int dst, int baseReg, int index, int scale)
    {
        c.Add(Rex(true, dst, index, baseReg));
        c.Add(0x8D);
        c.Add((byte)(((dst & 7) << 3) | 4));
        c.Add((byte)(((scale == 2 ? 1 : scale == 4 ? 2 : scale == 8 ? 3 : 0) << 6) | ((index & 7) << 3) | (baseReg & 7)));
    }

    private static void AddReg(List<byte> c, int dst, int src) => RegReg(c, 0x01, dst, src);

    private static void MovReg(List<byte> c, int dst, int src) => RegReg(c, 0x89, dst, src);

    private static void TestReg(List<byte> c, int reg) => RegReg(c, 0x85, reg, reg);

    // op r/m64 (dst), r64 (src)
    private static void RegReg(List<byte> c, byte opcode, int dst, int src)
    {
        c.Add(Rex(true, src, 0, dst));
        c.Add(opcode);
        c.Add((byte)(0xC0 | ((src & 7) << 3) | (dst & 7)));
    }

    private static void AddImm(List<byte> c, int dst, int imm)
    {
        c.Add(Rex(true, 0, 0, dst));
        c.Add(0x81);
        c.Add((byte)(0xC0 | (dst & 7)));
        c.AddRange(BitConverter.GetBytes(imm));
    }

    private static void DecReg(List<byte> c, int reg)
    {
        c.Add(Rex(true, 0, 0, reg));
        c.Add(0xFF);
        c.Add((byte)(0xC8 | (reg & 7)));
    }

    private static void Prefetch0(List<byte> c, int baseReg, int disp)
    {
        if (baseReg >= 8)
        {
            c.Add(Rex(false, 0, 0, baseReg));
        }
        c.AddRange([0x0F, 0x18]);
        ModRmMemory(c, 1, new Mem(baseReg, -1, 1, disp));
    }

    // Jcc rel32; returns where the displacement goes.
    private static int JumpRel32(List<byte> c, byte condition)
    {
        c.AddRange([0x0F, condition, 0, 0, 0, 0]);
        return c.Count - 4;
    }

    private static void Patch(List<byte> c, int at, int target)
    {
        byte[] rel = BitConverter.GetBytes(target - (at + 4));
        for (int i = 0; i < 4; i++)
        {
            c[at + i] = rel[i];
        }
    }
}
