// A CPU emulation of the slice of the CUDA driver API, cuBLAS and NVRTC that Distributed.Kernels.Cuda binds to.
// Development aid only: it lets the whole CUDA backend (bindings, staging, GEMM op/ld choices, kernel launches and
// the kernels themselves, compiled from the same kernels.cu) run on a machine without a GPU, so the one-shot run on a
// real device is not the first time the code executes. It is not a performance model.
//
// Kernels run one block at a time; the threads of a block are ucontext fibers switched at __syncthreads().
// Device memory is poisoned with 0xFF bytes (a NaN pattern) so reads of unwritten memory show up as NaN.
// Build: tests/Kernels.Tests/Cuda/Emulator/build.sh (writes libcuda.so.1, libcublas.so.13, libnvrtc.so.13).
//
// Devices: FAKE_CUDA_DEVICES (count, default 1) and FAKE_CUDA_MEMORY_MIB (each device's total memory in MiB, comma
// separated, the last value repeating; default 4096). Each device has its own primary context; an allocation counts
// against the device whose context is current on the calling thread, and cuMemGetInfo reports that device's total minus
// its live allocations (clamped at 0; allocations beyond it still succeed: host memory backs them). In-process tests,
// whose environment changes do not reach getenv, call fake_cuda_configure instead.

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <ucontext.h>
#include <utility>
#include <vector>

namespace emu
{
struct Dim3
{
    unsigned x, y, z;
};
static Dim3 tid, bid, bdim, gdim;
void sync_threads();
inline unsigned int float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
inline float uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
inline float int_as_float(int u) { float f; std::memcpy(&f, &u, 4); return f; }
}

#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
#define __syncthreads() emu::sync_threads()
#define threadIdx emu::tid
#define blockIdx emu::bid
#define blockDim emu::bdim
#define gridDim emu::gdim
#define __float_as_uint emu::float_as_uint
#define __uint_as_float emu::uint_as_float
#define __int_as_float emu::int_as_float

#include KERNELS_CU

#undef threadIdx
#undef blockIdx
#undef blockDim
#undef gridDim

// ---------------------------------------------------------------- fibers

namespace emu
{
static const size_t StackBytes = 64 * 1024;
static ucontext_t scheduler;
static std::vector<ucontext_t> fibers;
static std::vector<std::vector<char>> stacks;
static std::vector<int> state; // 0 runnable, 1 at barrier, 2 done
static int current = -1;
static std::function<void()> body;
static std::string launch_error;

void sync_threads()
{
    state[current] = 1;
    swapcontext(&fibers[current], &scheduler);
}

static void fiber_entry()
{
    body();
    state[current] = 2;
    swapcontext(&fibers[current], &scheduler);
}

// Runs one block of n threads; returns false on divergent barriers.
static bool run_block(unsigned n)
{
    if (fibers.size() < n)
    {
        fibers.resize(n);
        stacks.resize(n);
    }
    state.assign(n, 0);
    for (unsigned t = 0; t < n; t++)
    {
        stacks[t].resize(StackBytes);
        getcontext(&fibers[t]);
        fibers[t].uc_stack.ss_sp = stacks[t].data();
        fibers[t].uc_stack.ss_size = StackBytes;
        fibers[t].uc_link = nullptr;
        makecontext(&fibers[t], fiber_entry, 0);
    }
    for (;;)
    {
        for (unsigned t = 0; t < n; t++)
        {
            if (state[t] == 2)
            {
                continue;
            }
            state[t] = 0;
            current = (int)t;
            tid = Dim3{t, 0, 0};
            swapcontext(&scheduler, &fibers[t]);
        }
        unsigned done = 0, waiting = 0;
        for (unsigned t = 0; t < n; t++)
        {
            done += state[t] == 2;
            waiting += state[t] == 1;
        }
        if (done == n)
        {
            return true;
        }
        if (done != 0 && waiting != 0)
        {
            launch_error = "divergent __syncthreads: some threads exited while others wait at a barrier";
            return false;
        }
    }
}
}

// ---------------------------------------------------------------- registry of kernels

template <typename... A, size_t... I>
static void call_impl(void (*f)(A...), void** args, std::index_sequence<I...>)
{
    f(*static_cast<A*>(args[I])...);
}

template <typename... A>
static std::function<void(void**)> invoker(void (*f)(A...))
{
    return [f](void** args) { call_impl(f, args, std::index_sequence_for<A...>{}); };
}

// Bytes of each parameter, so that a launch recorded by stream capture keeps the values (not the caller's addresses).
template <typename... A>
static std::vector<size_t> arg_sizes(void (*)(A...))
{
    return {sizeof(A)...};
}

struct KernelEntry
{
    KernelEntry(const char* n, std::function<void(void**)> i, std::vector<size_t> s) : name(n), invoke(std::move(i)), sizes(std::move(s)) {}
    const char* name;
    std::function<void(void**)> invoke;
    std::vector<size_t> sizes;
};

static std::vector<KernelEntry>& kernels()
{
    static std::vector<KernelEntry> k = {
        {"split_bf16", invoker(split_bf16), arg_sizes(split_bf16)},
        {"combine_split", invoker(combine_split), arg_sizes(combine_split)},
        {"swiglu_split", invoker(swiglu_split), arg_sizes(swiglu_split)},
        {"rmsnorm", invoker(rmsnorm), arg_sizes(rmsnorm)},
        {"silu_mul", invoker(silu_mul), arg_sizes(silu_mul)},
        {"add_inplace", invoker(add_inplace), arg_sizes(add_inplace)},
        {"rope", invoker(rope), arg_sizes(rope)},
        {"attention", invoker(attention), arg_sizes(attention)},
        {"attention_split", invoker(attention_split), arg_sizes(attention_split)},
        {"attention_combine", invoker(attention_combine), arg_sizes(attention_combine)},
        {"kv_scatter", invoker(kv_scatter), arg_sizes(kv_scatter)},
        {"softmax_rows", invoker(softmax_rows), arg_sizes(softmax_rows)},
        {"argmax_rows", invoker(argmax_rows), arg_sizes(argmax_rows)},
        {"topk_rows", invoker(topk_rows), arg_sizes(topk_rows)},
        {"fp8_gemm", invoker(fp8_gemm), arg_sizes(fp8_gemm)},
        {"fp8_quant_rows", invoker(fp8_quant_rows), arg_sizes(fp8_quant_rows)},
        {"swiglu_f32", invoker(swiglu_f32), arg_sizes(swiglu_f32)},
        {"attention_split_bf16", invoker(attention_split_bf16), arg_sizes(attention_split_bf16)},
        {"attention_split_fp8", invoker(attention_split_fp8), arg_sizes(attention_split_fp8)},
        {"kv_scatter_bf16", invoker(kv_scatter_bf16), arg_sizes(kv_scatter_bf16)},
        {"kv_scatter_fp8", invoker(kv_scatter_fp8), arg_sizes(kv_scatter_fp8)},
        {"layernorm", invoker(layernorm), arg_sizes(layernorm)},
        {"gelu", invoker(gelu), arg_sizes(gelu)},
        {"add_bias", invoker(add_bias), arg_sizes(add_bias)},
        {"rotate_pairs", invoker(rotate_pairs), arg_sizes(rotate_pairs)},
        {"copy_cols", invoker(copy_cols), arg_sizes(copy_cols)},
        {"scale_rows", invoker(scale_rows), arg_sizes(scale_rows)},
        {"wire_decode_rows", invoker(wire_decode_rows), arg_sizes(wire_decode_rows)},
        {"wire_encode_bf16", invoker(wire_encode_bf16), arg_sizes(wire_encode_bf16)},
        {"gather_scaled_rows", invoker(gather_scaled_rows), arg_sizes(gather_scaled_rows)},
        {"combine_rows", invoker(combine_rows), arg_sizes(combine_rows)},
    };
    return k;
}

// ---------------------------------------------------------------- memory bookkeeping

// Recursive: a graph launch replays recorded operations that take the lock themselves.
static std::recursive_mutex g_lock;
static std::map<uintptr_t, size_t> g_device; // base -> bytes
static std::map<uintptr_t, int> g_device_owner; // base -> device ordinal
static std::map<uintptr_t, size_t> g_pinned;

// ---------------------------------------------------------------- devices

static const int MaxDevices = 64;
static int g_device_count = -1; // -1: not configured yet (read from the environment on first use)
static size_t g_total[MaxDevices];
static size_t g_used[MaxDevices];
static int g_ctx_markers[MaxDevices];
static thread_local int g_current_device = 0;

static void configure_from_environment()
{
    if (g_device_count >= 0)
    {
        return;
    }
    const char* n = std::getenv("FAKE_CUDA_DEVICES");
    int count = n ? std::atoi(n) : 1;
    g_device_count = count < 0 ? 0 : (count > MaxDevices ? MaxDevices : count);
    size_t last = (size_t)4096 << 20;
    const char* mib = std::getenv("FAKE_CUDA_MEMORY_MIB");
    for (int d = 0; d < MaxDevices; d++)
    {
        if (mib && *mib)
        {
            char* end = nullptr;
            unsigned long long v = std::strtoull(mib, &end, 10);
            if (end != mib)
            {
                last = (size_t)v << 20;
            }
            mib = (end && *end == ',') ? end + 1 : end;
        }
        g_total[d] = last;
    }
}

static int device_of_context(void* ctx)
{
    for (int d = 0; d < MaxDevices; d++)
    {
        if (ctx == &g_ctx_markers[d])
        {
            return d;
        }
    }
    return -1;
}

static bool in_map(const std::map<uintptr_t, size_t>& m, uintptr_t p, size_t bytes)
{
    auto it = m.upper_bound(p);
    if (it == m.begin())
    {
        return false;
    }
    --it;
    return p >= it->first && p + bytes <= it->first + it->second;
}

static bool device_range(uintptr_t p, size_t bytes) { return in_map(g_device, p, bytes); }

static void complain(const char* what)
{
    std::fprintf(stderr, "fake_cuda: %s\n", what);
}

// ---------------------------------------------------------------- streams, stream capture and graphs
//
// The emulator is synchronous: an operation issued on a stream runs at once, except on a stream that is capturing
// (cuStreamBeginCapture_v2). There it is recorded instead, its parameters copied by value at the call as the real
// driver does (kernel arguments, cuBLAS scalars and host parameter arrays, copy sizes); pointers keep their addresses,
// so a replay reads and writes whatever those buffers hold then. cuStreamEndCapture turns the recording into a graph,
// cuGraphInstantiateWithFlags into an executable graph, and cuGraphLaunch replays its operations in order.
//
// The misuse the real driver refuses is refused the same way, so that a test fails when capture is misused:
// - an unsafe call while a capture is active (allocation, free, pinned allocation, context synchronization; from any
//   thread in global mode, from the capturing thread in thread-local mode, never in relaxed mode) returns
//   CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidates the capture;
// - cuStreamSynchronize of a capturing stream, or an async copy between the device and pageable (not pinned) host
//   memory on it, returns CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidates the capture;
// - operations on an invalidated capture return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, and so does
//   cuStreamEndCapture, which then ends the capture with a NULL graph;
// - cuStreamEndCapture from another thread than the one that began a global or thread-local capture returns
//   CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD; cuStreamBeginCapture_v2 on a capturing stream CUDA_ERROR_ILLEGAL_STATE.
namespace emu
{
using Op = std::function<void()>;

struct StreamState
{
    int capture = 0; // 0: not capturing, 1: capturing, 2: capture invalidated
    int mode = 0;    // CUstreamCaptureMode: 0 global, 1 thread-local, 2 relaxed
    std::thread::id thread;
    std::vector<Op> ops;
};

struct GraphState
{
    std::vector<Op> ops;
};

static std::vector<StreamState*> capturing_streams;
static unsigned long long graph_launches = 0;
static unsigned long long refused_during_capture = 0;

static StreamState* stream_state(void* s) { return (StreamState*)s; }

// Runs op now, or records it when stream s is capturing; 901 on an invalidated capture.
static int issue(void* s, Op op)
{
    StreamState* st = stream_state(s);
    if (st && st->capture == 2)
    {
        return 901;
    }
    if (st && st->capture == 1)
    {
        st->ops.push_back(std::move(op));
        return 0;
    }
    op();
    return 0;
}

static bool recording(void* s)
{
    StreamState* st = stream_state(s);
    return st && st->capture != 0;
}

static void invalidate(StreamState* st)
{
    st->capture = 2;
    st->ops.clear();
}

// An unsafe call (allocation, free, context synchronization): refused while a capture that forbids it is active.
static int refuse_unsafe(const char* call)
{
    bool refused = false;
    for (StreamState* st : capturing_streams)
    {
        if (st->capture == 1 && (st->mode == 0 || (st->mode == 1 && st->thread == std::this_thread::get_id())))
        {
            invalidate(st);
            refused = true;
        }
    }
    if (!refused)
    {
        return 0;
    }
    refused_during_capture++;
    std::fprintf(stderr, "fake_cuda: %s during stream capture: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED (capture invalidated)\n", call);
    return 900;
}
}

extern "C" {

typedef int CUresult;
enum
{
    OK = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    INVALID_CONTEXT = 201,
    INVALID_IMAGE = 200,
    NOT_FOUND = 500,
    LAUNCH_FAILED = 719,
    ILLEGAL_ADDRESS = 700,
    INVALID_HANDLE = 400,
    ILLEGAL_STATE = 401,
    CAPTURE_UNSUPPORTED = 900,
    CAPTURE_INVALIDATED = 901,
    CAPTURE_WRONG_THREAD = 908,
};

// Test control (not a CUDA API): graphs launched so far, and unsafe calls refused during a capture so far.
void fake_cuda_graph_counters(unsigned long long* launches, unsigned long long* refused)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    *launches = emu::graph_launches;
    *refused = emu::refused_during_capture;
}

// Test control (not a CUDA API): `devices` devices, device d with totals_mib[min(d, n - 1)] MiB (4096 when n is 0);
// devices = -1 goes back to the environment's configuration. Live allocations stay counted against their device.
// Returns INVALID_VALUE for a count outside [-1, 64].
int fake_cuda_configure(int devices, const unsigned long long* totals_mib, int n)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    if (devices < -1 || devices > MaxDevices || n < 0 || (n > 0 && !totals_mib))
    {
        return INVALID_VALUE;
    }
    g_device_count = -1;
    configure_from_environment();
    if (devices >= 0)
    {
        g_device_count = devices;
        for (int d = 0; d < MaxDevices; d++)
        {
            g_total[d] = n == 0 ? (size_t)4096 << 20 : (size_t)totals_mib[d < n ? d : n - 1] << 20;
        }
    }
    return OK;
}

CUresult cuInit(unsigned) { return OK; }
CUresult cuDriverGetVersion(int* v) { *v = 13000; return OK; }
CUresult cuDeviceGetCount(int* c)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    configure_from_environment();
    *c = g_device_count;
    return OK;
}
CUresult cuDeviceGet(int* d, int ordinal)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    configure_from_environment();
    if (ordinal < 0 || ordinal >= g_device_count)
    {
        return INVALID_VALUE;
    }
    *d = ordinal;
    return OK;
}
CUresult cuDeviceGetName(char* name, int len, int) { std::snprintf(name, len, "Emulated CUDA device (CPU)"); return OK; }
CUresult cuDeviceGetAttribute(int* v, int attr, int)
{
    switch (attr)
    {
    case 75: *v = 9; break;
    case 76: *v = 0; break;
    case 16: *v = 2; break;
    case 1: *v = 1024; break;
    default: *v = 0; break;
    }
    return OK;
}
CUresult cuDeviceTotalMem_v2(size_t* b, int d)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    configure_from_environment();
    if (d < 0 || d >= g_device_count)
    {
        return INVALID_VALUE;
    }
    *b = g_total[d];
    return OK;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, int d)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    configure_from_environment();
    if (d < 0 || d >= g_device_count)
    {
        return INVALID_VALUE;
    }
    *ctx = &g_ctx_markers[d];
    return OK;
}
CUresult cuDevicePrimaryCtxRelease_v2(int) { return OK; }
CUresult cuCtxSetCurrent(void* ctx)
{
    if (ctx == nullptr)
    {
        return OK;
    }
    int d = device_of_context(ctx);
    if (d < 0)
    {
        return INVALID_CONTEXT;
    }
    g_current_device = d;
    return OK;
}
CUresult cuCtxSynchronize()
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    return emu::refuse_unsafe("cuCtxSynchronize");
}
CUresult cuMemGetInfo_v2(size_t* f, size_t* t)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    configure_from_environment();
    int d = g_current_device;
    *t = g_total[d];
    *f = g_used[d] >= g_total[d] ? 0 : g_total[d] - g_used[d];
    return OK;
}

CUresult cuMemAlloc_v2(unsigned long long* p, size_t bytes)
{
    {
        std::lock_guard<std::recursive_mutex> g(g_lock);
        if (int r = emu::refuse_unsafe("cuMemAlloc_v2"))
        {
            return r;
        }
    }
    if (bytes == 0)
    {
        return INVALID_VALUE;
    }
    size_t size = (bytes + 255) / 256 * 256;
    void* m = std::aligned_alloc(256, size);
    if (!m)
    {
        return OUT_OF_MEMORY;
    }
    std::memset(m, 0xFF, size);
    std::lock_guard<std::recursive_mutex> g(g_lock);
    g_device[(uintptr_t)m] = bytes;
    g_device_owner[(uintptr_t)m] = g_current_device;
    g_used[g_current_device] += size;
    *p = (unsigned long long)(uintptr_t)m;
    return OK;
}

CUresult cuMemFree_v2(unsigned long long p)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    if (int r = emu::refuse_unsafe("cuMemFree_v2"))
    {
        return r;
    }
    auto it = g_device.find((uintptr_t)p);
    if (it == g_device.end())
    {
        complain("cuMemFree_v2 of a pointer that is not a live allocation");
        return INVALID_VALUE;
    }
    size_t size = (it->second + 255) / 256 * 256;
    g_device.erase(it);
    auto owner = g_device_owner.find((uintptr_t)p);
    if (owner != g_device_owner.end())
    {
        g_used[owner->second] -= size;
        g_device_owner.erase(owner);
    }
    std::free((void*)(uintptr_t)p);
    return OK;
}

CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned)
{
    {
        std::lock_guard<std::recursive_mutex> g(g_lock);
        if (int r = emu::refuse_unsafe("cuMemHostAlloc"))
        {
            return r;
        }
    }
    void* m = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!m)
    {
        return OUT_OF_MEMORY;
    }
    std::lock_guard<std::recursive_mutex> g(g_lock);
    g_pinned[(uintptr_t)m] = bytes;
    *p = m;
    return OK;
}

CUresult cuMemFreeHost(void* p)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    if (int r = emu::refuse_unsafe("cuMemFreeHost"))
    {
        return r;
    }
    if (g_pinned.erase((uintptr_t)p) == 0)
    {
        complain("cuMemFreeHost of a pointer that is not pinned memory");
        return INVALID_VALUE;
    }
    std::free(p);
    return OK;
}

// A host ↔ device copy on a capturing stream needs pinned host memory (a pageable copy synchronizes): refused otherwise.
static int check_capturable_host(void* stream, const void* host, size_t bytes, const char* call)
{
    emu::StreamState* st = emu::stream_state(stream);
    if (!st || st->capture != 1 || in_map(g_pinned, (uintptr_t)host, bytes))
    {
        return OK;
    }
    emu::invalidate(st);
    emu::refused_during_capture++;
    std::fprintf(stderr, "fake_cuda: %s with pageable host memory during stream capture: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED\n", call);
    return CAPTURE_UNSUPPORTED;
}

CUresult cuMemcpyHtoDAsync_v2(unsigned long long dst, const void* src, size_t bytes, void* stream)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    if (!device_range(dst, bytes))
    {
        complain("cuMemcpyHtoDAsync_v2: destination range is not inside one device allocation");
        return INVALID_VALUE;
    }
    if (int r = check_capturable_host(stream, src, bytes, "cuMemcpyHtoDAsync_v2"))
    {
        return r;
    }
    return emu::issue(stream, [dst, src, bytes]() {
        if (!device_range(dst, bytes))
        {
            complain("graph replay: cuMemcpyHtoDAsync_v2 destination is no longer a device allocation");
            return;
        }
        std::memcpy((void*)(uintptr_t)dst, src, bytes);
    });
}

CUresult cuMemcpyDtoHAsync_v2(void* dst, unsigned long long src, size_t bytes, void* stream)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    if (!device_range(src, bytes))
    {
        complain("cuMemcpyDtoHAsync_v2: source range is not inside one device allocation");
        return INVALID_VALUE;
    }
    if (int r = check_capturable_host(stream, dst, bytes, "cuMemcpyDtoHAsync_v2"))
    {
        return r;
    }
    return emu::issue(stream, [dst, src, bytes]() {
        if (!device_range(src, bytes))
        {
            complain("graph replay: cuMemcpyDtoHAsync_v2 source is no longer a device allocation");
            return;
        }
        std::memcpy(dst, (void*)(uintptr_t)src, bytes);
    });
}

CUresult cuMemcpyDtoDAsync_v2(unsigned long long dst, unsigned long long src, size_t bytes, void* stream)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    if (!device_range(src, bytes) || !device_range(dst, bytes))
    {
        complain("cuMemcpyDtoDAsync_v2: range is not inside device allocations");
        return INVALID_VALUE;
    }
    return emu::issue(stream, [dst, src, bytes]() {
        if (!device_range(src, bytes) || !device_range(dst, bytes))
        {
            complain("graph replay: cuMemcpyDtoDAsync_v2 range is no longer inside device allocations");
            return;
        }
        std::memmove((void*)(uintptr_t)dst, (void*)(uintptr_t)src, bytes);
    });
}

CUresult cuMemsetD32Async(unsigned long long dst, unsigned int value, size_t count, void* stream)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    return emu::issue(stream, [dst, value, count]() {
        unsigned int* p = (unsigned int*)(uintptr_t)dst;
        for (size_t i = 0; i < count; i++)
        {
            p[i] = value;
        }
    });
}

CUresult cuStreamCreate(void** s, unsigned)
{
    *s = new emu::StreamState();
    return OK;
}

CUresult cuStreamDestroy_v2(void* s)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    emu::StreamState* st = emu::stream_state(s);
    auto& list = emu::capturing_streams;
    for (size_t i = 0; i < list.size(); i++)
    {
        if (list[i] == st)
        {
            list.erase(list.begin() + (long)i);
            break;
        }
    }
    delete st;
    return OK;
}

CUresult cuStreamSynchronize(void* s)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    emu::StreamState* st = emu::stream_state(s);
    if (st && st->capture == 1)
    {
        emu::invalidate(st);
        emu::refused_during_capture++;
        complain("cuStreamSynchronize of a capturing stream: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED (capture invalidated)");
        return CAPTURE_UNSUPPORTED;
    }
    return st && st->capture == 2 ? CAPTURE_INVALIDATED : OK;
}

CUresult cuStreamBeginCapture_v2(void* s, int mode)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    emu::StreamState* st = emu::stream_state(s);
    if (!st || mode < 0 || mode > 2)
    {
        return INVALID_VALUE;
    }
    if (st->capture != 0)
    {
        return ILLEGAL_STATE;
    }
    st->capture = 1;
    st->mode = mode;
    st->thread = std::this_thread::get_id();
    st->ops.clear();
    emu::capturing_streams.push_back(st);
    return OK;
}

CUresult cuStreamEndCapture(void* s, void** graph)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    emu::StreamState* st = emu::stream_state(s);
    if (!st || !graph)
    {
        return INVALID_VALUE;
    }
    if (st->capture == 0)
    {
        return ILLEGAL_STATE;
    }
    if (st->mode != 2 && st->thread != std::this_thread::get_id())
    {
        return CAPTURE_WRONG_THREAD;
    }
    auto& list = emu::capturing_streams;
    for (size_t i = 0; i < list.size(); i++)
    {
        if (list[i] == st)
        {
            list.erase(list.begin() + (long)i);
            break;
        }
    }
    bool invalid = st->capture == 2;
    st->capture = 0;
    if (invalid)
    {
        st->ops.clear();
        *graph = nullptr;
        return CAPTURE_INVALIDATED;
    }
    auto* gs = new emu::GraphState();
    gs->ops.swap(st->ops);
    *graph = gs;
    return OK;
}

CUresult cuStreamIsCapturing(void* s, int* status)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    emu::StreamState* st = emu::stream_state(s);
    *status = st ? st->capture : 0;
    return OK;
}

CUresult cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    if (!exec || !graph)
    {
        return INVALID_VALUE;
    }
    // An executable graph is a snapshot of the graph's operations (later changes to the graph do not reach it).
    *exec = new emu::GraphState(*(emu::GraphState*)graph);
    return OK;
}

CUresult cuGraphLaunch(void* exec, void* stream)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    if (!exec)
    {
        return INVALID_HANDLE;
    }
    emu::GraphState* gs = (emu::GraphState*)exec;
    if (!emu::recording(stream))
    {
        emu::graph_launches++;
    }
    return emu::issue(stream, [gs]() {
        for (auto& op : gs->ops)
        {
            op();
        }
    });
}

CUresult cuGraphExecDestroy(void* exec)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    delete (emu::GraphState*)exec;
    return OK;
}

CUresult cuGraphDestroy(void* graph)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    delete (emu::GraphState*)graph;
    return OK;
}

CUresult cuEventCreate(void** e, unsigned) { *e = new double(0); return OK; }
CUresult cuEventDestroy_v2(void* e) { delete (double*)e; return OK; }
CUresult cuEventRecord(void* e, void*)
{
    *(double*)e = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
    return OK;
}
CUresult cuEventSynchronize(void*) { return OK; }
CUresult cuEventElapsedTime(float* ms, void* a, void* b) { *ms = (float)(*(double*)b - *(double*)a); return OK; }

CUresult cuModuleLoadData(void** m, const void* image)
{
    if (!image)
    {
        return INVALID_IMAGE;
    }
    *m = new int(2);
    return OK;
}
CUresult cuModuleUnload(void* m) { delete (int*)m; return OK; }
CUresult cuModuleGetFunction(void** f, void*, const char* name)
{
    for (auto& k : kernels())
    {
        if (std::strcmp(k.name, name) == 0)
        {
            *f = &k;
            return OK;
        }
    }
    return NOT_FOUND;
}

static CUresult run_kernel(KernelEntry* k, unsigned gx, unsigned gy, unsigned gz, unsigned bx, void** params);

CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
    unsigned shmem, void* stream, void** params, void** extra)
{
    if (!f || extra || gx == 0 || gy == 0 || gz == 0 || bx == 0 || by != 1 || bz != 1 || bx > 1024 || shmem != 0)
    {
        return INVALID_VALUE;
    }
    std::lock_guard<std::recursive_mutex> g(g_lock);
    KernelEntry* k = (KernelEntry*)f;
    if (emu::recording(stream))
    {
        // Captured: the argument values as they are now, as the driver copies them into the kernel node.
        auto values = std::make_shared<std::vector<std::vector<char>>>();
        for (size_t i = 0; i < k->sizes.size(); i++)
        {
            values->emplace_back((const char*)params[i], (const char*)params[i] + k->sizes[i]);
        }
        return emu::issue(stream, [k, gx, gy, gz, bx, values]() {
            std::vector<void*> args;
            for (auto& v : *values)
            {
                args.push_back(v.data());
            }
            std::lock_guard<std::recursive_mutex> g2(g_lock);
            if (run_kernel(k, gx, gy, gz, bx, args.data()) != OK)
            {
                complain("graph replay: a kernel failed");
            }
        });
    }
    return run_kernel(k, gx, gy, gz, bx, params);
}

static CUresult run_kernel(KernelEntry* k, unsigned gx, unsigned gy, unsigned gz, unsigned bx, void** params)
{
    emu::gdim = emu::Dim3{gx, gy, gz};
    emu::bdim = emu::Dim3{bx, 1, 1};
    emu::body = [k, params]() { k->invoke(params); };
    for (unsigned z = 0; z < gz; z++)
    {
        for (unsigned y = 0; y < gy; y++)
        {
            for (unsigned x = 0; x < gx; x++)
            {
                emu::bid = emu::Dim3{x, y, z};
                if (!emu::run_block(bx))
                {
                    std::fprintf(stderr, "fake_cuda: kernel %s: %s\n", k->name, emu::launch_error.c_str());
                    return LAUNCH_FAILED;
                }
            }
        }
    }
    return OK;
}

static const char* error_name(int r)
{
    switch (r)
    {
    case OK: return "CUDA_SUCCESS";
    case INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
    case OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
    case INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
    case INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
    case NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
    case LAUNCH_FAILED: return "CUDA_ERROR_LAUNCH_FAILED";
    case INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
    case ILLEGAL_STATE: return "CUDA_ERROR_ILLEGAL_STATE";
    case CAPTURE_UNSUPPORTED: return "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED";
    case CAPTURE_INVALIDATED: return "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED";
    case CAPTURE_WRONG_THREAD: return "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD";
    default: return "CUDA_ERROR_UNKNOWN";
    }
}
CUresult cuGetErrorName(int r, const char** s) { *s = error_name(r); return OK; }
CUresult cuGetErrorString(int r, const char** s) { *s = error_name(r); return OK; }

// ---------------------------------------------------------------- cuBLAS

static float load(const void* p, int type, size_t i)
{
    if (type == 14)
    {
        unsigned short b = ((const unsigned short*)p)[i];
        return emu::uint_as_float(((unsigned int)b) << 16);
    }
    return ((const float*)p)[i];
}

static size_t elem(int type) { return type == 14 ? 2 : 4; }

// Column-major C[m×n] = alpha·op(A)·op(B) + beta·C, fp32 accumulation in k order.
static int gemm(int ta, int tb, int m, int n, int k, float alpha, const void* A, int at, int lda, const void* B, int bt,
    int ldb, float beta, void* C, int ct, int ldc, int compute)
{
    if (compute != 68 || at != 14 || bt != 14 || (ct != 0 && ct != 14))
    {
        return 15;
    }
    if (m < 0 || n < 0 || k < 0 || lda < (ta == 0 ? m : k) || ldb < (tb == 0 ? k : n) || ldc < m || lda < 1 || ldb < 1)
    {
        return 7;
    }
    if (m == 0 || n == 0)
    {
        return 0;
    }
    size_t aCols = ta == 0 ? k : m, aRows = ta == 0 ? m : k;
    size_t bCols = tb == 0 ? n : k, bRows = tb == 0 ? k : n;
    if (!device_range((uintptr_t)A, ((aCols - 1) * lda + aRows) * elem(at)) ||
        !device_range((uintptr_t)B, ((bCols - 1) * ldb + bRows) * elem(bt)) ||
        !device_range((uintptr_t)C, ((size_t)(n - 1) * ldc + m) * elem(ct)))
    {
        complain("gemm: an operand range is not inside one device allocation");
        return 13;
    }
    for (int j = 0; j < n; j++)
    {
        for (int i = 0; i < m; i++)
        {
            float acc = 0.0f;
            for (int l = 0; l < k; l++)
            {
                float a = ta == 0 ? load(A, at, (size_t)l * lda + i) : load(A, at, (size_t)i * lda + l);
                float b = tb == 0 ? load(B, bt, (size_t)j * ldb + l) : load(B, bt, (size_t)l * ldb + j);
                acc += a * b;
            }
            size_t at_c = (size_t)j * ldc + i;
            float prev = beta == 0.0f ? 0.0f : load(C, ct, at_c);
            float v = alpha * acc + beta * prev;
            if (ct == 0)
            {
                ((float*)C)[at_c] = v;
            }
            else
            {
                ((unsigned short*)C)[at_c] = f32_to_bf16(v);
            }
        }
    }
    return 0;
}

// A cuBLAS handle: the stream its calls are issued on (recorded like any other operation while it captures).
struct BlasHandle
{
    void* stream = nullptr;
};

// The result of a cuBLAS call on handle h: run now, or recorded (scalars and host arrays already copied by the caller)
// when its stream is capturing, where errors surface at the replay (CUBLAS_STATUS_EXECUTION_FAILED, 13, on an
// invalidated capture).
static int blas_issue(void* h, std::function<int()> call)
{
    void* stream = h ? ((BlasHandle*)h)->stream : nullptr;
    if (!emu::recording(stream))
    {
        return call();
    }
    int r = emu::issue(stream, [call]() {
        if (call() != 0)
        {
            complain("graph replay: a cuBLAS call failed");
        }
    });
    return r == 0 ? 0 : 13;
}

static int strided(int ta, int tb, int m, int n, int k, float al, const void* A, int at, int lda, long long sa, const void* B, int bt,
    int ldb, long long sb, float be, void* C, int ct, int ldc, long long sc, int batch, int compute);

int cublasCreate_v2(void** h) { *h = new BlasHandle(); return 0; }
int cublasDestroy_v2(void* h) { delete (BlasHandle*)h; return 0; }
int cublasSetStream_v2(void* h, void* s) { ((BlasHandle*)h)->stream = s; return 0; }
int cublasGetVersion_v2(void*, int* v) { *v = 130000; return 0; }

int cublasGemmEx(void* h, int ta, int tb, int m, int n, int k, const float* alpha, const void* A, int at, int lda,
    const void* B, int bt, int ldb, const float* beta, void* C, int ct, int ldc, int compute, int)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    float al = *alpha, be = *beta;
    return blas_issue(h, [=]() { return gemm(ta, tb, m, n, k, al, A, at, lda, B, bt, ldb, be, C, ct, ldc, compute); });
}

int cublasGemmStridedBatchedEx(void* h, int ta, int tb, int m, int n, int k, const float* alpha, const void* A, int at,
    int lda, long long sa, const void* B, int bt, int ldb, long long sb, const float* beta, void* C, int ct, int ldc,
    long long sc, int batch, int compute, int)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    float al = *alpha, be = *beta;
    return blas_issue(h, [=]() { return strided(ta, tb, m, n, k, al, A, at, lda, sa, B, bt, ldb, sb, be, C, ct, ldc, sc, batch, compute); });
}

static int strided(int ta, int tb, int m, int n, int k, float al, const void* A, int at, int lda, long long sa, const void* B, int bt,
    int ldb, long long sb, float be, void* C, int ct, int ldc, long long sc, int batch, int compute)
{
    const float* alpha = &al;
    const float* beta = &be;
    for (int i = 0; i < batch; i++)
    {
        int r = gemm(ta, tb, m, n, k, *alpha, (const char*)A + sa * i * elem(at), at, lda,
            (const char*)B + sb * i * elem(bt), bt, ldb, *beta, (char*)C + sc * i * 4, ct, ldc, compute);
        if (r != 0)
        {
            return r;
        }
    }
    return 0;
}

int cublasGemmBatchedEx(void* h, int ta, int tb, int m, int n, int k, const float* alpha, const void* const* A, int at, int lda,
    const void* const* B, int bt, int ldb, const float* beta, void* const* C, int ct, int ldc, int batch, int compute, int)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    const char* unsupported = std::getenv("FAKE_CUBLAS_BATCHED_UNSUPPORTED");
    if (unsupported && unsupported[0] == '1')
    {
        return 15;
    }
    if (!device_range((uintptr_t)A, batch * 8) || !device_range((uintptr_t)B, batch * 8) || !device_range((uintptr_t)C, batch * 8))
    {
        complain("cublasGemmBatchedEx: pointer arrays must be device memory");
        return 7;
    }
    float al = *alpha, be = *beta;
    // The pointer arrays are device memory: a replay reads them as they are then.
    return blas_issue(h, [=]() {
        for (int i = 0; i < batch; i++)
        {
            int r = gemm(ta, tb, m, n, k, al, A[i], at, lda, B[i], bt, ldb, be, C[i], ct, ldc, compute);
            if (r != 0)
            {
                return r;
            }
        }
        return 0;
    });
}

static int grouped(const std::vector<int>& ta, const std::vector<int>& tb, const std::vector<int>& m, const std::vector<int>& n,
    const std::vector<int>& k, const std::vector<float>& alpha, const void* const* A, int at, const std::vector<int>& lda, const void* const* B,
    int bt, const std::vector<int>& ldb, const std::vector<float>& beta, void* const* C, int ct, const std::vector<int>& ldc, int groups,
    const std::vector<int>& sizes, int compute);

int cublasGemmGroupedBatchedEx(void* h, const int* ta, const int* tb, const int* m, const int* n, const int* k,
    const float* alpha, const void* const* A, int at, const int* lda, const void* const* B, int bt, const int* ldb,
    const float* beta, void* const* C, int ct, const int* ldc, int groups, const int* sizes, int compute)
{
    std::lock_guard<std::recursive_mutex> g(g_lock);
    // cuBLAS documents bf16 A/B only with bf16 C for this API; FAKE_CUBLAS_GROUPED_F32=1 pretends fp32 C works.
    const char* f32 = std::getenv("FAKE_CUBLAS_GROUPED_F32");
    if (ct == 0 && !(f32 && f32[0] == '1'))
    {
        return 15;
    }
    // The host arrays must be host memory and the pointer arrays device memory, as on a real device.
    if (device_range((uintptr_t)m, 4) || device_range((uintptr_t)alpha, 4))
    {
        complain("cublasGemmGroupedBatchedEx: a host parameter array lies in device memory");
        return 7;
    }
    int total = 0;
    for (int i = 0; i < groups; i++)
    {
        total += sizes[i];
    }
    if (!device_range((uintptr_t)A, total * 8) || !device_range((uintptr_t)B, total * 8) || !device_range((uintptr_t)C, total * 8))
    {
        complain("cublasGemmGroupedBatchedEx: pointer arrays must be device memory");
        return 7;
    }
    // The host parameter arrays are copied at the call (a captured call keeps these values); the pointer arrays are
    // device memory, read when the call runs.
    std::vector<int> vta(ta, ta + groups), vtb(tb, tb + groups), vm(m, m + groups), vn(n, n + groups), vk(k, k + groups);
    std::vector<int> vlda(lda, lda + groups), vldb(ldb, ldb + groups), vldc(ldc, ldc + groups), vsizes(sizes, sizes + groups);
    std::vector<float> valpha(alpha, alpha + groups), vbeta(beta, beta + groups);
    return blas_issue(h, [=]() { return grouped(vta, vtb, vm, vn, vk, valpha, A, at, vlda, B, bt, vldb, vbeta, C, ct, vldc, groups, vsizes, compute); });
}

static int grouped(const std::vector<int>& ta, const std::vector<int>& tb, const std::vector<int>& m, const std::vector<int>& n,
    const std::vector<int>& k, const std::vector<float>& alpha, const void* const* A, int at, const std::vector<int>& lda, const void* const* B,
    int bt, const std::vector<int>& ldb, const std::vector<float>& beta, void* const* C, int ct, const std::vector<int>& ldc, int groups,
    const std::vector<int>& sizes, int compute)
{
    int p = 0;
    for (int i = 0; i < groups; i++)
    {
        for (int j = 0; j < sizes[i]; j++, p++)
        {
            int r = gemm(ta[i], tb[i], m[i], n[i], k[i], alpha[i], A[p], at, lda[i], B[p], bt, ldb[i], beta[i], C[p], ct,
                ldc[i], compute);
            if (r != 0)
            {
                return r;
            }
        }
    }
    return 0;
}

// ---------------------------------------------------------------- NVRTC

struct Program
{
    std::string source;
    std::string log;
    std::string arch;
};

int nvrtcVersion(int* major, int* minor) { *major = 13; *minor = 0; return 0; }
int nvrtcCreateProgram(void** p, const char* src, const char*, int, const char**, const char**)
{
    Program* prog = new Program();
    prog->source = src ? src : "";
    *p = prog;
    return 0;
}
int nvrtcDestroyProgram(void** p) { delete (Program*)*p; *p = nullptr; return 0; }
int nvrtcCompileProgram(void* p, int n, const char** options)
{
    Program* prog = (Program*)p;
    for (int i = 0; i < n; i++)
    {
        if (std::strncmp(options[i], "--gpu-architecture=", 19) == 0)
        {
            prog->arch = options[i] + 19;
        }
    }
    if (prog->arch.empty())
    {
        prog->log = "fake nvrtc: no --gpu-architecture given";
        return 6;
    }
    const char* fail = std::getenv("FAKE_NVRTC_FAIL");
    if (fail && std::strstr(prog->arch.c_str(), fail))
    {
        prog->log = "kernels.cu(1): error: emulated compile failure for " + prog->arch;
        return 6;
    }
    for (auto& k : kernels())
    {
        std::string needle = std::string("KERNEL void ") + k.name + "(";
        if (prog->source.find(needle) == std::string::npos)
        {
            prog->log = std::string("fake nvrtc: source lacks entry point ") + k.name;
            return 6;
        }
    }
    prog->log = "";
    return 0;
}
int nvrtcGetPTXSize(void* p, size_t* s) { *s = ((Program*)p)->source.size() + 1; return 0; }
int nvrtcGetPTX(void* p, char* out) { std::memcpy(out, ((Program*)p)->source.c_str(), ((Program*)p)->source.size() + 1); return 0; }
int nvrtcGetCUBINSize(void* p, size_t* s) { *s = ((Program*)p)->source.size() + 1; return 0; }
int nvrtcGetCUBIN(void* p, char* out) { return nvrtcGetPTX(p, out); }
int nvrtcGetProgramLogSize(void* p, size_t* s) { *s = ((Program*)p)->log.size() + 1; return 0; }
int nvrtcGetProgramLog(void* p, char* out) { std::memcpy(out, ((Program*)p)->log.c_str(), ((Program*)p)->log.size() + 1); return 0; }
const char* nvrtcGetErrorString(int r) { return r == 0 ? "NVRTC_SUCCESS" : r == 6 ? "NVRTC_ERROR_COMPILATION" : "NVRTC_ERROR"; }

} // extern "C"
