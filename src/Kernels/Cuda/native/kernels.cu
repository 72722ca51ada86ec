// Device kernels of Distributed.Kernels.Cuda.CudaKernelBackend, compiled at backend creation by NVRTC
// (no #include: NVRTC ships no C library headers, so everything here is plain C++ plus CUDA builtins).
//
// Conventions shared with the host code (CudaKernelModule.cs launches each entry point by name):
// * every entry point is extern "C" so its name is not mangled;
// * pointers are CUdeviceptr (64-bit), element counts are long long, widths/heights int;
// * reductions run with exactly ReduceThreads threads per block, one block per row, in a fixed order, so a row's
//   result never depends on the other rows of the launch (batch invariance of the non-GEMM ops);
// * bf16 values travel as their raw unsigned short bits (cuBLAS CUDA_R_16BF).
// "Split" layout: an fp32 activation row r is stored as two bf16 rows, 2r = hi = bf16(x) and 2r+1 = lo = bf16(x - hi),
// so one bf16 GEMM over 2*rows rows followed by (row 2r + row 2r+1) gives x*W to about 2^-16 relative error.

#define KERNEL extern "C" __global__
#define REDUCE_THREADS 256

__device__ __forceinline__ unsigned short f32_to_bf16(float f)
{
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u)
    {
        return (unsigned short)((u >> 16) | 0x40u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

__device__ __forceinline__ float bf16_to_f32(unsigned short b)
{
    return __uint_as_float(((unsigned int)b) << 16);
}

// ---------------------------------------------------------------- FP8 E4M3 (weights, W8A8 activations, KV rows)
// A code is 1 sign, 4 exponent (bias 7) and 3 mantissa bits; exponent 0 is subnormal (m/8 * 2^-6); 0x7F/0xFF are NaN
// (refused when a weight is created; the encoders below write one only for NaN input).

__device__ __forceinline__ float e4m3_to_f32(unsigned char c)
{
    int e = (c >> 3) & 15;
    int m = c & 7;
    float v = e == 0 ? (float)m * 0.001953125f : __uint_as_float(((unsigned int)(e + 120) << 23) | ((unsigned int)m << 20));
    return (c & 0x80) ? -v : v;
}

// Round to nearest E4M3, ties to even, saturating at 448 (callers clamp first); the same integer steps as the host
// encoder (Fp8E4M3.FromFloat), so a quantized row is bit for bit the one the CPU backend makes.
__device__ __forceinline__ unsigned char f32_to_e4m3(float v)
{
    unsigned int bits = __float_as_uint(v);
    unsigned char sign = (unsigned char)((bits >> 24) & 0x80u);
    float a = __uint_as_float(bits & 0x7fffffffu);
    if (a != a)
    {
        return 0x7f;
    }
    if (a < 0.015625f)
    {
        // Multiples of 2^-9; a * 512 is exact and rintf rounds ties to even.
        return (unsigned char)(sign | (unsigned char)rintf(a * 512.0f));
    }
    if (a >= 448.0f)
    {
        return (unsigned char)(sign | 0x7e);
    }
    unsigned int ab = bits & 0x7fffffffu;
    unsigned int rounded = (ab + 0x7ffffu + ((ab >> 20) & 1u)) >> 20;
    unsigned int code = rounded - (120u << 3);
    return (unsigned char)(sign | (code > 0x7eu ? 0x7eu : code));
}

__device__ __forceinline__ float neg_inf()
{
    return __int_as_float((int)0xff800000u);
}

// Writes v as bf16 into out: split=0 -> row r; split=1 -> rows 2r (hi) and 2r+1 (lo).
__device__ __forceinline__ void store_split(unsigned short* out, long long r, int c, int cols, float v, int split)
{
    unsigned short hi = f32_to_bf16(v);
    if (split)
    {
        out[(2 * r) * cols + c] = hi;
        out[(2 * r + 1) * cols + c] = f32_to_bf16(v - bf16_to_f32(hi));
    }
    else
    {
        out[r * cols + c] = hi;
    }
}

// a strictly better than b: NaN never beats a number, ties go to the lower column id, id < 0 means "none yet".
__device__ __forceinline__ bool better(float va, int ia, float vb, int ib)
{
    if (ia < 0)
    {
        return false;
    }
    if (ib < 0)
    {
        return true;
    }
    bool na = va != va;
    bool nb = vb != vb;
    if (na != nb)
    {
        return nb;
    }
    if (na)
    {
        return ia < ib;
    }
    return va > vb || (va == vb && ia < ib);
}

// Tree sum over exactly REDUCE_THREADS threads; fixed order; every thread gets the result.
__device__ float block_sum(float v, float* sh)
{
    int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int s = REDUCE_THREADS / 2; s > 0; s >>= 1)
    {
        if (t < s)
        {
            sh[t] = sh[t] + sh[t + s];
        }
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

__device__ float block_max(float v, float* sh)
{
    int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int s = REDUCE_THREADS / 2; s > 0; s >>= 1)
    {
        if (t < s)
        {
            sh[t] = fmaxf(sh[t], sh[t + s]);
        }
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}

// Best (value, id) over the block into sh_v[0], sh_i[0]; every thread gets the result.
__device__ void block_best(float* v, int* id, float* sh_v, int* sh_i)
{
    int t = threadIdx.x;
    sh_v[t] = *v;
    sh_i[t] = *id;
    __syncthreads();
    for (int s = REDUCE_THREADS / 2; s > 0; s >>= 1)
    {
        if (t < s && better(sh_v[t + s], sh_i[t + s], sh_v[t], sh_i[t]))
        {
            sh_v[t] = sh_v[t + s];
            sh_i[t] = sh_i[t + s];
        }
        __syncthreads();
    }
    *v = sh_v[0];
    *id = sh_i[0];
    __syncthreads();
}

// x [rows, cols] fp32 -> out bf16 ([rows, cols], or [2*rows, cols] when split). Row r lands at row map[r] of out
// (the padded per-expert layout of the batched expert GEMM), or at row r when map is null.
KERNEL void split_bf16(const float* x, unsigned short* out, const int* map, long long rows, int cols, int split)
{
    long long n = rows * cols;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        long long r = i / cols;
        int c = (int)(i - r * cols);
        long long p = map ? (long long)map[r] : r;
        store_split(out, p, c, cols, x[i], split);
    }
}

// y[r, c] = t[2p, c] + t[2p+1, c] (split: recombines the hi and lo halves of a split GEMM) or t[p, c], where p = map[r]
// (or r when map is null).
KERNEL void combine_split(const float* t, float* y, const int* map, long long rows, int cols, int split)
{
    long long n = rows * cols;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        long long r = i / cols;
        int c = (int)(i - r * cols);
        long long p = map ? (long long)map[r] : r;
        y[i] = split ? t[(2 * p) * cols + c] + t[(2 * p + 1) * cols + c] : t[p * cols + c];
    }
}

// t: gate_up GEMM output, [f*rows, 2*inter] fp32 (f = 2 when split); gate = columns [0, inter), up = [inter, 2*inter).
// h[r, c] = silu(gate) * up, written as bf16 ([f*rows, inter]) for the down GEMM.
KERNEL void swiglu_split(const float* t, unsigned short* h, long long rows, int inter, int split)
{
    long long n = rows * inter;
    long long stride = (long long)gridDim.x * blockDim.x;
    long long w = 2LL * inter;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        long long r = i / inter;
        int c = (int)(i - r * inter);
        float g;
        float u;
        if (split)
        {
            g = t[(2 * r) * w + c] + t[(2 * r + 1) * w + c];
            u = t[(2 * r) * w + inter + c] + t[(2 * r + 1) * w + inter + c];
        }
        else
        {
            g = t[r * w + c];
            u = t[r * w + inter + c];
        }
        float s = g / (1.0f + expf(-g));
        store_split(h, r, c, inter, s * u, split);
    }
}

// One block of REDUCE_THREADS per row. y may alias x.
KERNEL void rmsnorm(const float* x, const float* w, float* y, int cols, float eps, int has_weight)
{
    __shared__ float sh[REDUCE_THREADS];
    long long row = blockIdx.x;
    const float* xr = x + row * cols;
    float* yr = y + row * cols;
    float acc = 0.0f;
    for (int c = threadIdx.x; c < cols; c += REDUCE_THREADS)
    {
        float v = xr[c];
        acc += v * v;
    }
    float ss = block_sum(acc, sh);
    float r = 1.0f / sqrtf(ss / (float)cols + eps);
    for (int c = threadIdx.x; c < cols; c += REDUCE_THREADS)
    {
        float v = xr[c] * r;
        yr[c] = has_weight ? v * w[c] : v;
    }
}

KERNEL void silu_mul(const float* gate, const float* up, float* dst, long long n)
{
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        float g = gate[i];
        dst[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

KERNEL void add_inplace(float* dst, const float* src, long long n)
{
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        dst[i] = dst[i] + src[i];
    }
}

// dst[r, c] = src[r * srcStride + c] for c < cols, dst rows cols wide: a column slice of a row-major matrix (the q, k
// and v parts of the fused qkv projection on the device path). Exact copy.
KERNEL void copy_cols(const float* src, long long srcStride, float* dst, long long rows, int cols)
{
    long long n = rows * cols;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        long long r = i / cols;
        dst[i] = src[r * srcStride + (i - r * cols)];
    }
}

// x[r, c] *= factor[r] for x [rows, cols]: one fp32 multiply per element, as the host loop computes it (the NoPE
// layers' attention temperature tuning).
KERNEL void scale_rows(float* x, const float* factor, long long rows, int cols)
{
    long long n = rows * cols;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        x[i] = x[i] * factor[i / cols];
    }
}

// One block of REDUCE_THREADS per row: y = (x - mean) / sqrt(var + eps) * w + b (biased variance). y may alias x.
KERNEL void layernorm(const float* x, const float* w, const float* b, float* y, int cols, float eps)
{
    __shared__ float sh[REDUCE_THREADS];
    long long row = blockIdx.x;
    const float* xr = x + row * cols;
    float* yr = y + row * cols;
    float acc = 0.0f;
    for (int c = threadIdx.x; c < cols; c += REDUCE_THREADS)
    {
        acc += xr[c];
    }
    float mean = block_sum(acc, sh) / (float)cols;
    acc = 0.0f;
    for (int c = threadIdx.x; c < cols; c += REDUCE_THREADS)
    {
        float d = xr[c] - mean;
        acc += d * d;
    }
    float var = block_sum(acc, sh) / (float)cols;
    float r = 1.0f / sqrtf(var + eps);
    for (int c = threadIdx.x; c < cols; c += REDUCE_THREADS)
    {
        yr[c] = (xr[c] - mean) * r * w[c] + b[c];
    }
}

// Exact GELU (nn.GELU()): dst = x / 2 * (1 + erf(x / sqrt(2))). dst may alias x.
KERNEL void gelu(const float* x, float* dst, long long n)
{
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        float v = x[i];
        dst[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}

// x [rows, cols] in place: x[r, c] += b[c].
KERNEL void add_bias(float* x, const float* b, long long rows, int cols)
{
    long long n = rows * cols;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        x[i] = x[i] + b[i % cols];
    }
}

// x [rows, heads, 2*pairs] in place; pair i of every head of row r rotates by the angle whose cosine and sine are
// cos_sin[(r * pairs + i) * 2] and cos_sin[(r * pairs + i) * 2 + 1] (the Llama 4 vision 2-D RoPE).
KERNEL void rotate_pairs(float* x, const float* cos_sin, long long rows, int heads, int pairs)
{
    long long n = rows * heads * pairs;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        long long rh = i / pairs;
        int p = (int)(i - rh * pairs);
        long long row = rh / heads;
        float c = cos_sin[(row * pairs + p) * 2];
        float s = cos_sin[(row * pairs + p) * 2 + 1];
        float* e = x + rh * (2LL * pairs) + 2 * p;
        float x0 = e[0];
        float x1 = e[1];
        e[0] = x0 * c - x1 * s;
        e[1] = x0 * s + x1 * c;
    }
}

// x [rows, heads, 2*half] in place; pair (2i, 2i+1) rotates by fl32(pos[row] * inv_freq[i]).
KERNEL void rope(float* x, const int* pos, const float* inv_freq, long long rows, int heads, int half)
{
    long long n = rows * heads * half;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        long long rh = i / half;
        int p = (int)(i - rh * half);
        long long row = rh / heads;
        float theta = (float)pos[row] * inv_freq[p];
        float c = cosf(theta);
        float s = sinf(theta);
        float* e = x + rh * (2LL * half) + 2 * p;
        float x0 = e[0];
        float x1 = e[1];
        e[0] = x0 * c - x1 * s;
        e[1] = x0 * s + x1 * c;
    }
}

// K and V element access for the attention kernels: element c of row `row` (a store slot, or a contiguous key index)
// of `width` = kv_heads * head_dim elements, decoded to fp32. The store keeps rows in fp32, bf16, or FP8 E4M3 with one
// fp32 scale per row (--kv-dtype); a row was rounded once when it was written.
struct KvF32
{
    const float* p;
    __device__ __forceinline__ float at(long long row, int width, int c) const { return p[row * width + c]; }
};

struct KvBf16
{
    const unsigned short* p;
    __device__ __forceinline__ float at(long long row, int width, int c) const { return bf16_to_f32(p[row * width + c]); }
};

struct KvFp8
{
    const unsigned char* p;
    const float* s;
    __device__ __forceinline__ float at(long long row, int width, int c) const { return e4m3_to_f32(p[row * width + c]) * s[row]; }
};

// Row of key j in k/v: j itself (contiguous), or through a paged block table: slot s = first_slot + j lives in row
// s % block_size of block table[s / block_size] of the store.
__device__ __forceinline__ long long key_row(long long j, const int* table, int first_slot, int block_size)
{
    if (table == 0)
    {
        return j;
    }
    long long s = (long long)first_slot + j;
    return (long long)table[s / block_size] * block_size + s % block_size;
}

// Key indices [lo, hi] a query at absolute position p may see: causal, and on chunked layers not before its chunk.
__device__ __forceinline__ void visible_keys(long long p, int keys, int key_start, int chunk, long long* lo, long long* hi)
{
    *hi = p - key_start;
    if (*hi > keys - 1)
    {
        *hi = keys - 1;
    }
    *lo = 0;
    if (chunk > 0)
    {
        long long cs = (p / chunk) * chunk - key_start;
        if (cs > *lo)
        {
            *lo = cs;
        }
    }
}

__device__ __forceinline__ float dot(const float* a, const float* b, int n)
{
    float acc = 0.0f;
    for (int d = 0; d < n; d++)
    {
        acc += a[d] * b[d];
    }
    return acc;
}

// One block of REDUCE_THREADS per (query row, head) of the slice [row_base, row_base + gridDim.x / heads).
// q/out [rows, heads, head_dim]; k/v [keys, kv_heads, head_dim], key j at absolute position key_start + j;
// scratch [gridDim.x, keys] holds the probabilities of each block's row. (Ranges beyond SPLIT_KEYS use attention_split.)
KERNEL void attention(const float* q, const int* qpos, const float* k, const float* v, float* out, float* scratch,
    int keys, int key_start, int heads, int kv_heads, int head_dim, float scale, int chunk, int row_base)
{
    __shared__ float sh[REDUCE_THREADS];
    int bh = blockIdx.x;
    int lr = bh / heads;
    int h = bh - lr * heads;
    long long row = (long long)row_base + lr;
    int kvh = h / (heads / kv_heads);
    const float* qr = q + (row * heads + h) * head_dim;
    float* o = out + (row * heads + h) * head_dim;
    float* s = scratch + (long long)bh * keys;
    long long lo;
    long long hi;
    visible_keys(qpos[row], keys, key_start, chunk, &lo, &hi);
    if (hi < lo)
    {
        for (int d = threadIdx.x; d < head_dim; d += REDUCE_THREADS)
        {
            o[d] = 0.0f;
        }
        return;
    }
    float m = neg_inf();
    for (long long j = lo + threadIdx.x; j <= hi; j += REDUCE_THREADS)
    {
        float acc = dot(qr, k + (j * kv_heads + kvh) * head_dim, head_dim) * scale;
        s[j] = acc;
        m = fmaxf(m, acc);
    }
    m = block_max(m, sh);
    float sum = 0.0f;
    for (long long j = lo + threadIdx.x; j <= hi; j += REDUCE_THREADS)
    {
        float e = expf(s[j] - m);
        s[j] = e;
        sum += e;
    }
    sum = block_sum(sum, sh);
    float inv = 1.0f / sum;
    for (long long j = lo + threadIdx.x; j <= hi; j += REDUCE_THREADS)
    {
        s[j] = s[j] * inv;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < head_dim; d += REDUCE_THREADS)
    {
        float acc = 0.0f;
        for (long long j = lo; j <= hi; j++)
        {
            acc += s[j] * v[(j * kv_heads + kvh) * head_dim + d];
        }
        o[d] = acc;
    }
}

// Long key ranges (decode over a long context) are split so that the GPU is not left with one block per (row, head):
// key index space is cut at fixed multiples of SPLIT_KEYS (the same cuts for every row of the call, so a row's result
// depends only on its own visible keys), one block per (row, head, split) computes its split's max, exp-sum and
// unnormalized output into partial, and attention_combine merges the splits in split order.
#define SPLIT_KEYS 256

// Block b = ((row - row_base) * heads + h) * splits + split; partial [gridDim.x, head_dim + 2] = (max, sum, out...).
// meta, when not 0, gives each query row its own sequence (several sequences in one launch): meta[4 row ..] = keys,
// key_start, first_slot and the offset of its block table in table; keys is then the largest of them.
template <typename KV>
__device__ void attention_split_body(const float* q, const int* qpos, KV k, KV v, const int* table, int first_slot,
    int block_size, const int* meta, float* partial, int keys, int key_start, int heads, int kv_heads, int head_dim, float scale,
    int chunk, int row_base, int splits)
{
    __shared__ float sh[REDUCE_THREADS];
    __shared__ float ps[SPLIT_KEYS];
    int b = blockIdx.x;
    int bh = b / splits;
    int split = b - bh * splits;
    int lr = bh / heads;
    int h = bh - lr * heads;
    long long row = (long long)row_base + lr;
    int kvh = h / (heads / kv_heads);
    int width = kv_heads * head_dim;
    const float* qr = q + (row * heads + h) * head_dim;
    float* part = partial + (long long)b * (head_dim + 2);
    if (meta != 0)
    {
        const int* m = meta + 4 * row;
        keys = m[0];
        key_start = m[1];
        first_slot = m[2];
        table = table + m[3];
    }
    long long lo;
    long long hi;
    visible_keys(qpos[row], keys, key_start, chunk, &lo, &hi);
    long long base = (long long)split * SPLIT_KEYS;
    if (base > lo)
    {
        lo = base;
    }
    if (base + SPLIT_KEYS - 1 < hi)
    {
        hi = base + SPLIT_KEYS - 1;
    }
    if (hi < lo)
    {
        for (int d = threadIdx.x; d < head_dim; d += REDUCE_THREADS)
        {
            part[2 + d] = 0.0f;
        }
        if (threadIdx.x == 0)
        {
            part[0] = neg_inf();
            part[1] = 0.0f;
        }
        return;
    }
    float m = neg_inf();
    for (long long j = lo + threadIdx.x; j <= hi; j += REDUCE_THREADS)
    {
        long long kr = key_row(j, table, first_slot, block_size);
        float acc = 0.0f;
        for (int d = 0; d < head_dim; d++)
        {
            acc += qr[d] * k.at(kr, width, kvh * head_dim + d);
        }
        acc = acc * scale;
        ps[j - base] = acc;
        m = fmaxf(m, acc);
    }
    m = block_max(m, sh);
    float sum = 0.0f;
    for (long long j = lo + threadIdx.x; j <= hi; j += REDUCE_THREADS)
    {
        float e = expf(ps[j - base] - m);
        ps[j - base] = e;
        sum += e;
    }
    sum = block_sum(sum, sh);
    __syncthreads();
    for (int d = threadIdx.x; d < head_dim; d += REDUCE_THREADS)
    {
        float acc = 0.0f;
        for (long long j = lo; j <= hi; j++)
        {
            acc += ps[j - base] * v.at(key_row(j, table, first_slot, block_size), width, kvh * head_dim + d);
        }
        part[2 + d] = acc;
    }
    if (threadIdx.x == 0)
    {
        part[0] = m;
        part[1] = sum;
    }
}

KERNEL void attention_split(const float* q, const int* qpos, const float* k, const float* v, const int* table, int first_slot,
    int block_size, const int* meta, float* partial, int keys, int key_start, int heads, int kv_heads, int head_dim, float scale,
    int chunk, int row_base, int splits)
{
    KvF32 kk = {k};
    KvF32 vv = {v};
    attention_split_body(q, qpos, kk, vv, table, first_slot, block_size, meta, partial, keys, key_start, heads, kv_heads, head_dim, scale,
        chunk, row_base, splits);
}

// attention_split over a bf16 store.
KERNEL void attention_split_bf16(const float* q, const int* qpos, const unsigned short* k, const unsigned short* v, const int* table,
    int first_slot, int block_size, const int* meta, float* partial, int keys, int key_start, int heads, int kv_heads, int head_dim,
    float scale, int chunk, int row_base, int splits)
{
    KvBf16 kk = {k};
    KvBf16 vv = {v};
    attention_split_body(q, qpos, kk, vv, table, first_slot, block_size, meta, partial, keys, key_start, heads, kv_heads, head_dim, scale,
        chunk, row_base, splits);
}

// attention_split over an FP8 store (codes plus one scale per row for K and for V).
KERNEL void attention_split_fp8(const float* q, const int* qpos, const unsigned char* k, const unsigned char* v, const float* k_scale,
    const float* v_scale, const int* table, int first_slot, int block_size, const int* meta, float* partial, int keys, int key_start,
    int heads, int kv_heads, int head_dim, float scale, int chunk, int row_base, int splits)
{
    KvFp8 kk = {k, k_scale};
    KvFp8 vv = {v, v_scale};
    attention_split_body(q, qpos, kk, vv, table, first_slot, block_size, meta, partial, keys, key_start, heads, kv_heads, head_dim, scale,
        chunk, row_base, splits);
}

// One block per (row, head) of the slice: out = sum_s exp(m_s - M) * o_s / sum_s exp(m_s - M) * l_s, splits in order.
KERNEL void attention_combine(const float* partial, float* out, int splits, int heads, int head_dim, int row_base)
{
    int bh = blockIdx.x;
    int lr = bh / heads;
    int h = bh - lr * heads;
    long long row = (long long)row_base + lr;
    float* o = out + (row * heads + h) * head_dim;
    const float* parts = partial + (long long)bh * splits * (head_dim + 2);
    float mx = neg_inf();
    for (int s = 0; s < splits; s++)
    {
        mx = fmaxf(mx, parts[(long long)s * (head_dim + 2)]);
    }
    if (mx == neg_inf())
    {
        for (int d = threadIdx.x; d < head_dim; d += REDUCE_THREADS)
        {
            o[d] = 0.0f;
        }
        return;
    }
    float total = 0.0f;
    for (int s = 0; s < splits; s++)
    {
        float ms = parts[(long long)s * (head_dim + 2)];
        if (ms != neg_inf())
        {
            total += parts[(long long)s * (head_dim + 2) + 1] * expf(ms - mx);
        }
    }
    float inv = 1.0f / total;
    for (int d = threadIdx.x; d < head_dim; d += REDUCE_THREADS)
    {
        float acc = 0.0f;
        for (int s = 0; s < splits; s++)
        {
            float ms = parts[(long long)s * (head_dim + 2)];
            if (ms != neg_inf())
            {
                acc += parts[(long long)s * (head_dim + 2) + 2 + d] * expf(ms - mx);
            }
        }
        o[d] = acc * inv;
    }
}

// Row r of k/v [rows, width] goes to row slots[r] of the store's store_k/store_v [*, width]; a negative slot writes
// nothing (the padded rows of a CUDA-graph bucket, which must never touch a real sequence's keys).
KERNEL void kv_scatter(const float* k, const float* v, const int* slots, float* store_k, float* store_v, long long rows, int width)
{
    long long n = rows * width;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        long long r = i / width;
        long long c = i - r * width;
        if (slots[r] < 0)
        {
            continue;
        }
        long long dst = (long long)slots[r] * width + c;
        store_k[dst] = k[i];
        store_v[dst] = v[i];
    }
}

// kv_scatter into a bf16 store: each element rounded to nearest even.
KERNEL void kv_scatter_bf16(const float* k, const float* v, const int* slots, unsigned short* store_k, unsigned short* store_v, long long rows,
    int width)
{
    long long n = rows * width;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        long long r = i / width;
        long long c = i - r * width;
        if (slots[r] < 0)
        {
            continue;
        }
        long long dst = (long long)slots[r] * width + c;
        store_k[dst] = f32_to_bf16(k[i]);
        store_v[dst] = f32_to_bf16(v[i]);
    }
}

// The FP8 scale of one row of width elements, computed by a block of REDUCE_THREADS: s = max(max|x| / 448, 1/(448*512))
// (Fp8E4M3.RowScale on the host, bit for bit).
__device__ float fp8_row_scale(const float* x, int width, float* sh)
{
    float m = 0.0f;
    for (int c = threadIdx.x; c < width; c += REDUCE_THREADS)
    {
        m = fmaxf(m, fabsf(x[c]));
    }
    m = block_max(m, sh);
    return fmaxf(m / 448.0f, 1.0f / (448.0f * 512.0f));
}

// One row into an FP8 store: s = fp8_row_scale, codes e4m3_rne(clamp(x / s, -448, 448)) (the host store's
// Fp8E4M3.QuantizeRow, bit for bit).
__device__ void fp8_store_row(const float* x, unsigned char* codes, float* scale, int width, float* sh)
{
    float s = fp8_row_scale(x, width, sh);
    for (int c = threadIdx.x; c < width; c += REDUCE_THREADS)
    {
        codes[c] = f32_to_e4m3(fminf(fmaxf(x[c] / s, -448.0f), 448.0f));
    }
    if (threadIdx.x == 0)
    {
        *scale = s;
    }
}

// kv_scatter into an FP8 store: one block of REDUCE_THREADS per row; row r of k/v [rows, width] to slot slots[r] (none
// when negative).
KERNEL void kv_scatter_fp8(const float* k, const float* v, const int* slots, unsigned char* store_k, unsigned char* store_v, float* scale_k,
    float* scale_v, int width)
{
    __shared__ float sh[REDUCE_THREADS];
    long long r = blockIdx.x;
    long long slot = slots[r];
    if (slot < 0)
    {
        return;
    }
    fp8_store_row(k + r * width, store_k + slot * width, scale_k + slot, width, sh);
    fp8_store_row(v + r * width, store_v + slot * width, scale_v + slot, width, sh);
}

// One block of REDUCE_THREADS per row, in place.
KERNEL void softmax_rows(float* x, int cols)
{
    __shared__ float sh[REDUCE_THREADS];
    float* xr = x + (long long)blockIdx.x * cols;
    float m = neg_inf();
    for (int c = threadIdx.x; c < cols; c += REDUCE_THREADS)
    {
        m = fmaxf(m, xr[c]);
    }
    m = block_max(m, sh);
    float sum = 0.0f;
    for (int c = threadIdx.x; c < cols; c += REDUCE_THREADS)
    {
        float e = expf(xr[c] - m);
        xr[c] = e;
        sum += e;
    }
    sum = block_sum(sum, sh);
    float inv = 1.0f / sum;
    for (int c = threadIdx.x; c < cols; c += REDUCE_THREADS)
    {
        xr[c] = xr[c] * inv;
    }
}

// One block of REDUCE_THREADS per row: the column of the largest value (lowest id on ties, NaN never beats a number).
KERNEL void argmax_rows(const float* x, int* ids, int cols)
{
    __shared__ float sv[REDUCE_THREADS];
    __shared__ int si[REDUCE_THREADS];
    const float* xr = x + (long long)blockIdx.x * cols;
    float bv = 0.0f;
    int bi = -1;
    for (int c = threadIdx.x; c < cols; c += REDUCE_THREADS)
    {
        float v = xr[c];
        if (better(v, c, bv, bi))
        {
            bv = v;
            bi = c;
        }
    }
    block_best(&bv, &bi, sv, si);
    if (threadIdx.x == 0)
    {
        ids[blockIdx.x] = bi < 0 ? 0 : bi;
    }
}

// One block of REDUCE_THREADS per row: k rounds of argmax over the columns not chosen yet.
KERNEL void topk_rows(const float* x, int* ids, float* vals, int cols, int k)
{
    __shared__ float sv[REDUCE_THREADS];
    __shared__ int si[REDUCE_THREADS];
    const float* xr = x + (long long)blockIdx.x * cols;
    int* idr = ids + (long long)blockIdx.x * k;
    float* vr = vals + (long long)blockIdx.x * k;
    for (int pick = 0; pick < k; pick++)
    {
        float bv = 0.0f;
        int bi = -1;
        for (int c = threadIdx.x; c < cols; c += REDUCE_THREADS)
        {
            bool taken = false;
            for (int q = 0; q < pick; q++)
            {
                if (idr[q] == c)
                {
                    taken = true;
                    break;
                }
            }
            float v = xr[c];
            if (!taken && better(v, c, bv, bi))
            {
                bv = v;
                bi = c;
            }
        }
        block_best(&bv, &bi, sv, si);
        if (threadIdx.x == 0)
        {
            idr[pick] = bi;
            vr[pick] = bv;
        }
        __syncthreads();
    }
}

// ---------------------------------------------------------------- FP8 E4M3 weights (compressed-tensors per channel)

#define F8_TM 32
#define F8_TN 64
#define F8_TK 32

// y [rows, n] = (x [rows, k] . W) * scales[c] (* row_scales[r] when not null), W given as codes w [n, k] (row c = output
// column c, its k codes contiguous). Block b covers rows [32 tm, +32) and columns [64 tn, +64) with b = tm * tiles_n + tn;
// 256 threads, 2 rows x 4 columns each. Every output element is ONE fmaf chain over k = 0..k-1 in order from +0, then
// the scale(s): the CPU backend's arithmetic exactly, so a row's result does not depend on the batch (batch invariant)
// and matches the CPU bit for bit.
KERNEL void fp8_gemm(const float* x, const unsigned char* w, const float* scales, const float* row_scales, float* y, int rows, int k, int n)
{
    __shared__ float xs[F8_TM][F8_TK + 1];
    __shared__ float ws[F8_TK][F8_TN + 1];
    int tiles_n = (n + F8_TN - 1) / F8_TN;
    int tm = blockIdx.x / tiles_n;
    int tn = blockIdx.x - tm * tiles_n;
    int r0 = tm * F8_TM;
    int c0 = tn * F8_TN;
    int t = threadIdx.x;
    int tr = t / 16;
    int tc = t - tr * 16;
    float acc[2][4];
    for (int i = 0; i < 2; i++)
    {
        for (int j = 0; j < 4; j++)
        {
            acc[i][j] = 0.0f;
        }
    }
    for (int k0 = 0; k0 < k; k0 += F8_TK)
    {
        for (int i = t; i < F8_TM * F8_TK; i += 256)
        {
            int rr = i / F8_TK;
            int kk = i - rr * F8_TK;
            int gr = r0 + rr;
            int gk = k0 + kk;
            xs[rr][kk] = (gr < rows && gk < k) ? x[(long long)gr * k + gk] : 0.0f;
        }
        for (int i = t; i < F8_TN * F8_TK; i += 256)
        {
            int cc = i / F8_TK;
            int kk = i - cc * F8_TK;
            int gc = c0 + cc;
            int gk = k0 + kk;
            ws[kk][cc] = (gc < n && gk < k) ? e4m3_to_f32(w[(long long)gc * k + gk]) : 0.0f;
        }
        __syncthreads();
        int kn = k - k0 < F8_TK ? k - k0 : F8_TK;
        for (int kk = 0; kk < kn; kk++)
        {
            for (int i = 0; i < 2; i++)
            {
                float xv = xs[tr * 2 + i][kk];
                for (int j = 0; j < 4; j++)
                {
                    acc[i][j] = fmaf(xv, ws[kk][tc * 4 + j], acc[i][j]);
                }
            }
        }
        __syncthreads();
    }
    for (int i = 0; i < 2; i++)
    {
        int gr = r0 + tr * 2 + i;
        if (gr >= rows)
        {
            continue;
        }
        for (int j = 0; j < 4; j++)
        {
            int gc = c0 + tc * 4 + j;
            if (gc < n)
            {
                float v = acc[i][j] * scales[gc];
                y[(long long)gr * n + gc] = row_scales ? v * row_scales[gr] : v;
            }
        }
    }
}

// W8A8 input: one block of REDUCE_THREADS per row of x [rows, cols]; s = max(max|x| / 448, 1/(448*512)),
// q[r, i] = value of e4m3_rne(clamp(x / s, -448, 448)) (the code's value, not times s), row_scales[r] = s.
KERNEL void fp8_quant_rows(const float* x, float* q, float* row_scales, int cols)
{
    __shared__ float sh[REDUCE_THREADS];
    long long row = blockIdx.x;
    const float* xr = x + row * cols;
    float* qr = q + row * cols;
    float s = fp8_row_scale(xr, cols, sh);
    for (int c = threadIdx.x; c < cols; c += REDUCE_THREADS)
    {
        float v = xr[c] / s;
        v = fminf(fmaxf(v, -448.0f), 448.0f);
        qr[c] = e4m3_to_f32(f32_to_e4m3(v));
    }
    if (threadIdx.x == 0)
    {
        row_scales[row] = s;
    }
}

// t [rows, 2 * inter] fp32 (gate columns first) -> h [rows, inter] = silu(gate) * up, fp32.
KERNEL void swiglu_f32(const float* t, float* h, long long rows, int inter)
{
    long long n = rows * inter;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        long long r = i / inter;
        int c = (int)(i - r * inter);
        float g = t[r * 2LL * inter + c];
        h[i] = g / (1.0f + expf(-g)) * t[r * 2LL * inter + inter + c];
    }
}

// ---------------------------------------------------------------- worker wire rows (CudaKernelBackend.Wire.cs)
// The data plane's row encodings (WireCodec on the host, little-endian): format 0 = fp32 bits; 1 = bf16 bits; 2 = per
// row a 4-byte fp32 scale then one E4M3 code per element, decoded as code value * scale.

#define WIRE_F32 0
#define WIRE_BF16 1
#define WIRE_FP8 2

__device__ __forceinline__ bool wire_finite(float v)
{
    return (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u;
}

// One block of REDUCE_THREADS per row r of src: x[r, :] = the decoded fp32 values (what WireCodec.TryDecodeFinite
// stores), bad[r] = 1 when the row cannot be used, else 0: a NaN or +-Inf value; for FP8 also a scale that is not
// finite and positive, a NaN code (0x7F/0xFF) or a product code * scale that overflows. The scale is read once per row.
KERNEL void wire_decode_rows(const unsigned char* src, float* x, int* bad, int hidden, int format)
{
    __shared__ int flag;
    long long r = blockIdx.x;
    float* xr = x + r * hidden;
    if (threadIdx.x == 0)
    {
        flag = 0;
    }
    __syncthreads();
    int b = 0;
    if (format == WIRE_FP8)
    {
        const unsigned char* row = src + r * (hidden + 4);
        unsigned int sb = (unsigned int)row[0] | ((unsigned int)row[1] << 8) | ((unsigned int)row[2] << 16) | ((unsigned int)row[3] << 24);
        float s = __uint_as_float(sb);
        b = !(s > 0.0f) || !wire_finite(s);
        for (int c = threadIdx.x; c < hidden; c += REDUCE_THREADS)
        {
            unsigned char code = row[4 + c];
            float v = e4m3_to_f32(code) * s;
            xr[c] = v;
            b |= (code & 0x7f) == 0x7f || !wire_finite(v);
        }
    }
    else if (format == WIRE_BF16)
    {
        const unsigned short* row = (const unsigned short*)src + r * hidden;
        for (int c = threadIdx.x; c < hidden; c += REDUCE_THREADS)
        {
            float v = bf16_to_f32(row[c]);
            xr[c] = v;
            b |= !wire_finite(v);
        }
    }
    else
    {
        const float* row = (const float*)src + r * hidden;
        for (int c = threadIdx.x; c < hidden; c += REDUCE_THREADS)
        {
            float v = row[c];
            xr[c] = v;
            b |= !wire_finite(v);
        }
    }
    if (b)
    {
        // Every writer stores the same value.
        flag = 1;
    }
    __syncthreads();
    if (threadIdx.x == 0)
    {
        bad[r] = flag;
    }
}

// y [n] fp32 -> out [n] bf16 bits, round to nearest even, NaN kept (quieted): WireCodec.FloatToBf16 bit for bit.
KERNEL void wire_encode_bf16(const float* y, unsigned short* out, long long n)
{
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        out[i] = f32_to_bf16(y[i]);
    }
}

// ---------------------------------------------------------------- in-process routed experts on device rows
// (CudaDeviceStep.RoutedExperts; DispatchPlan.GatherScaled / Combine on the host, bit for bit.)

// rows[r, c] = x[token[r], c] * score[r]: one fp32 multiply per element; with round_bf16, the product rounded to bf16
// and widened back (a bf16 dispatch wire's rounding, WireCodec.EncodeRows then DecodeRows).
KERNEL void gather_scaled_rows(const float* x, const int* token, const float* score, float* rows, long long n_rows, int cols, int round_bf16)
{
    long long n = n_rows * cols;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        long long r = i / cols;
        int c = (int)(i - r * cols);
        float v = x[(long long)token[r] * cols + c] * score[r];
        rows[i] = round_bf16 ? bf16_to_f32(f32_to_bf16(v)) : v;
    }
}

// out[t, c] = sum over slots s = 0..top_k-1, in that order, of e[row_of[t * top_k + s], c], starting from the slot-0 value
// (top-1 is an exact copy); with round_bf16 every expert value is first rounded to bf16 and widened (a bf16 combine wire).
KERNEL void combine_rows(const float* e, const int* row_of, float* out, long long tokens, int top_k, int cols, int round_bf16)
{
    long long n = tokens * cols;
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    {
        long long t = i / cols;
        int c = (int)(i - t * cols);
        float v = e[(long long)row_of[t * top_k] * cols + c];
        float sum = round_bf16 ? bf16_to_f32(f32_to_bf16(v)) : v;
        for (int s = 1; s < top_k; s++)
        {
            v = e[(long long)row_of[t * top_k + s] * cols + c];
            sum += round_bf16 ? bf16_to_f32(f32_to_bf16(v)) : v;
        }
        out[i] = sum;
    }
}
