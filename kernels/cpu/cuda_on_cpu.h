// cuda_on_cpu.h: the CPU runtime that lets a C++17 compiler build the CUDA C
// kernels of kernels/ unmodified and run them on the "cuda-emulator" device.
//
// Execution model (what a kernel sees):
//   * blocks run one after another, in order x fastest, then y, then z;
//   * each thread of a block is a fiber (ucontext, its own stack with a guard
//     page) on the calling OS thread; fibers never preempt each other;
//   * __syncthreads() switches back to the block's scheduler.  The scheduler
//     resumes the live fibers round-robin (thread 0, 1, ... or, with
//     gbemu_set_schedule(1), the reverse), so one round is one barrier phase.
//     A barrier that some threads of the block reach while others return is
//     an error naming the kernel, the block and the phase (on a GPU it hangs
//     or corrupts silently);
//   * __shared__ is block-scope `thread_local` storage: static storage shared
//     by the fibers of the running block (blocks are serial and all fibers
//     run on one OS thread; launches of one library are serialized);
//   * extern __shared__ arrays get the launch's shared_mem bytes; every
//     shared array, static or extern, is filled with 0xFF bytes (NaN as float
//     and as double) at the start of every block, so a read of an element no
//     thread of the block wrote shows up in the results;
//   * threadIdx, blockIdx, blockDim, gridDim are set by the scheduler;
//     atomics are plain read-modify-writes (no fiber can interleave);
//   * nvcuda::wmma (#include <mma.h>, kernels/cpu/mma.h) holds every fragment
//     whole in every thread of the warp; TF32 conversion rounds as cvt.rna.
// What it cannot emulate fails the build with a message that says so: warp
// shuffles and votes, __syncwarp, cooperative groups, inline PTX (asm).
//
// The loader (gpubackprop.kernels) compiles `g++ -std=c++17 -include
// cuda_on_cpu.h -I kernels/cpu` over a wrapper that includes the kernel
// source and exports, per kernel K, `gbemu_signature_K` (the parameter type
// codes) and `gbemu_launch_K(grid[3], block[3], shared_mem, args, err, len)`
// with `args` an array of pointers to the argument values, as cuLaunchKernel's
// kernelParams.  Launch limits (block size, grid, shared memory) are checked
// in Python before the call, with the same constants as an sm_90 GPU.
#ifndef GPUBACKPROP_CUDA_ON_CPU_H
#define GPUBACKPROP_CUDA_ON_CPU_H

#if __cplusplus < 201703L
#error "cuda_on_cpu.h needs C++17 (-std=c++17)"
#endif

#include <dlfcn.h>
#include <link.h>
#include <math.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cmath>
#include <cstddef>
#include <mutex>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

// ---- CUDA C keywords that mean nothing on the CPU -----------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __constant__ static
#define __managed__
#define __shared__ thread_local
// __restrict__ is understood by g++ and clang++ as it is

// ---- the built-in variables ---------------------------------------------------
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1)
        : x(x_), y(y_), z(z_) {}
};
typedef dim3 uint3;

// Plain globals: launches are serialized by gbemu::launch_mutex, so the only
// thread_local storage of a kernel library is its shared memory (see poison).
inline uint3 threadIdx;
inline uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
constexpr int warpSize = 32;

// ---- device functions -----------------------------------------------------------
template <class A, class B>
inline typename std::common_type<A, B>::type min(A a, B b)
{
    typedef typename std::common_type<A, B>::type T;
    return (T)a < (T)b ? (T)a : (T)b;
}
template <class A, class B>
inline typename std::common_type<A, B>::type max(A a, B b)
{
    typedef typename std::common_type<A, B>::type T;
    return (T)a > (T)b ? (T)a : (T)b;
}
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

// atomics: plain read-modify-write (fibers of a block never interleave)
template <class T>
inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <class T>
inline T atomicSub(T* p, T v) { T old = *p; *p = old - v; return old; }
template <class T>
inline T atomicMax(T* p, T v) { T old = *p; *p = old > v ? old : v; return old; }
template <class T>
inline T atomicMin(T* p, T v) { T old = *p; *p = old < v ? old : v; return old; }
template <class T>
inline T atomicExch(T* p, T v) { T old = *p; *p = v; return old; }
template <class T>
inline T atomicCAS(T* p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }
inline void __threadfence() {}
inline void __threadfence_block() {}

// ---- what cannot be emulated: a build error that says so -------------------------
#define GBEMU_UNSUPPORTED_(what) \
    _Pragma(#what)
#define __shfl_sync(...) GBEMU_UNSUPPORTED_(GCC error "cuda_on_cpu.h: warp shuffles (__shfl_sync) cannot be emulated on the CPU") 0
#define __shfl_up_sync(...) GBEMU_UNSUPPORTED_(GCC error "cuda_on_cpu.h: warp shuffles (__shfl_up_sync) cannot be emulated on the CPU") 0
#define __shfl_down_sync(...) GBEMU_UNSUPPORTED_(GCC error "cuda_on_cpu.h: warp shuffles (__shfl_down_sync) cannot be emulated on the CPU") 0
#define __shfl_xor_sync(...) GBEMU_UNSUPPORTED_(GCC error "cuda_on_cpu.h: warp shuffles (__shfl_xor_sync) cannot be emulated on the CPU") 0
#define __ballot_sync(...) GBEMU_UNSUPPORTED_(GCC error "cuda_on_cpu.h: warp votes (__ballot_sync) cannot be emulated on the CPU") 0
#define __any_sync(...) GBEMU_UNSUPPORTED_(GCC error "cuda_on_cpu.h: warp votes (__any_sync) cannot be emulated on the CPU") 0
#define __all_sync(...) GBEMU_UNSUPPORTED_(GCC error "cuda_on_cpu.h: warp votes (__all_sync) cannot be emulated on the CPU") 0
#define __activemask(...) GBEMU_UNSUPPORTED_(GCC error "cuda_on_cpu.h: __activemask cannot be emulated on the CPU") 0
#define __syncwarp(...) GBEMU_UNSUPPORTED_(GCC error "cuda_on_cpu.h: __syncwarp cannot be emulated on the CPU") 0
#define __match_any_sync(...) GBEMU_UNSUPPORTED_(GCC error "cuda_on_cpu.h: __match_any_sync cannot be emulated on the CPU") 0
#define asm GBEMU_UNSUPPORTED_(GCC error "cuda_on_cpu.h: inline PTX (asm) cannot be emulated on the CPU") (void)
// (cooperative groups: kernels/cpu/cooperative_groups.h is an #error)

// the library's entry points; everything else is hidden (-fvisibility=hidden), so
// two loaded kernel libraries never share the runtime's state
#define GBEMU_API __attribute__((visibility("default")))

// ---- the fiber scheduler -------------------------------------------------------------
namespace gbemu {

constexpr size_t kStack = 64 * 1024;   // per thread of a block; the kernels keep small frames
constexpr size_t kGuard = 4096;        // PROT_NONE page under each stack: overflow = SIGSEGV

struct Fiber {
    ucontext_t uc;
    jmp_buf jb;
    char* stack = nullptr;
    bool started = false;
    bool done = false;
    bool at_barrier = false;
};

// the state of the launch running on this OS thread
struct Launch {
    const char* kernel = "";
    void (*body)(void*) = nullptr;
    void* ctx = nullptr;
    std::vector<Fiber> fibers;
    jmp_buf sched;
    int current = -1;
    std::string error;
};

inline Launch* current_launch = nullptr;
inline int schedule_order = 0;   // 0: threads 0, 1, ...; 1: reverse
inline std::mutex launch_mutex;  // one launch at a time per library
inline thread_local unsigned char tls_anchor;   // makes this thread's TLS block exist

inline std::vector<char*>& stack_pool()
{
    static std::vector<char*> pool;
    return pool;
}

inline char* stack_for(size_t i)
{
    auto& pool = stack_pool();
    while (pool.size() <= i) {
        void* p = mmap(nullptr, kStack + kGuard, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return nullptr;
        mprotect(p, kGuard, PROT_NONE);
        pool.push_back(static_cast<char*>(p));
    }
    return pool[i];
}

inline void set_thread_index(int t)
{
    const unsigned bx = blockDim.x, by = blockDim.y;
    threadIdx = uint3(t % bx, (t / bx) % by, t / (bx * by));
}

// the first code of every fiber: run the kernel body, then leave for good
inline void trampoline()
{
    Launch* L = current_launch;
    L->body(L->ctx);
    L = current_launch;
    L->fibers[L->current].done = true;
    _longjmp(L->sched, 1);
}

}  // namespace gbemu

// __syncthreads: back to the scheduler until every live thread of the block is here
inline void __syncthreads()
{
    gbemu::Launch* L = gbemu::current_launch;
    gbemu::Fiber& f = L->fibers[L->current];
    f.at_barrier = true;
    if (_setjmp(f.jb) == 0)
        _longjmp(L->sched, 1);
    gbemu::set_thread_index(gbemu::current_launch->current);
}

inline int __syncthreads_count(int p) = delete;   // needs a block-wide reduction: not emulated

inline void __trap()
{
    gbemu::Launch* L = gbemu::current_launch;
    L->error = std::string("kernel ") + L->kernel + " executed __trap()";
    L->fibers[L->current].done = true;
    _longjmp(L->sched, 2);
}

namespace gbemu {

// Runs one block; returns false (with L.error set) on a barrier mismatch or trap.
inline bool run_block(Launch& L, int n_threads)
{
    for (int t = 0; t < n_threads; ++t) {
        Fiber& f = L.fibers[t];
        f.started = f.done = f.at_barrier = false;
    }
    for (int phase = 0;; ++phase) {
        int waiting = 0, finished = 0;
        for (int i = 0; i < n_threads; ++i) {
            const int t = schedule_order ? n_threads - 1 - i : i;
            Fiber& f = L.fibers[t];
            if (f.done)
                continue;
            f.at_barrier = false;
            L.current = t;
            set_thread_index(t);
            const int rc = _setjmp(L.sched);
            if (rc == 0) {
                if (!f.started) {
                    f.started = true;
                    getcontext(&f.uc);
                    f.uc.uc_stack.ss_sp = f.stack;
                    f.uc.uc_stack.ss_size = kStack;
                    f.uc.uc_link = nullptr;
                    makecontext(&f.uc, (void (*)())trampoline, 0);
                    setcontext(&f.uc);
                }
                _longjmp(f.jb, 1);
            }
            if (rc == 2)
                return false;
            if (f.at_barrier)
                ++waiting;
            else
                ++finished;
        }
        if (waiting == 0)
            return true;
        if (finished != 0) {
            char msg[400];
            snprintf(msg, sizeof msg,
                     "kernel %s: block (%u, %u, %u): __syncthreads() in barrier phase %d was "
                     "reached by %d of its %d threads while %d returned without it (every "
                     "thread of a block must reach each barrier; on a GPU this hangs or "
                     "corrupts shared memory)",
                     L.kernel, blockIdx.x, blockIdx.y, blockIdx.z, phase, waiting,
                     waiting + finished, finished);
            L.error = msg;
            return false;
        }
    }
}

// This library's thread-local storage in the calling thread: all of it is
// shared memory (every __shared__ array, static or extern), so filling it
// with 0xFF bytes (NaN as float and double) at each block start makes a read
// of an element no thread of the block wrote show up.  {nullptr, 0} where
// the C library does not say (the extern arrays are then filled alone).
struct TlsBlock {
    unsigned char* data = nullptr;
    size_t size = 0;
};

inline int find_tls(struct dl_phdr_info* info, size_t, void* out)
{
    const char* here = reinterpret_cast<const char*>(&find_tls);
    bool mine = false;
    size_t tls_size = 0;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        const char* start = reinterpret_cast<const char*>(info->dlpi_addr + ph.p_vaddr);
        if (ph.p_type == PT_LOAD && here >= start && here < start + ph.p_memsz)
            mine = true;
        if (ph.p_type == PT_TLS)
            tls_size = ph.p_memsz;
    }
    if (!mine)
        return 0;
    auto* block = static_cast<TlsBlock*>(out);
    block->data = static_cast<unsigned char*>(info->dlpi_tls_data);
    block->size = block->data ? tls_size : 0;
    return 1;
}

inline TlsBlock shared_memory_block()
{
    *static_cast<volatile unsigned char*>(&tls_anchor) = 0;
    TlsBlock block;
    dl_iterate_phdr(find_tls, &block);
    return block;
}

// Runs the whole grid; `dyn` are the extern __shared__ arrays to fill with NaN.
inline int run_grid(const char* kernel, const unsigned* grid, const unsigned* block,
                    unsigned long long smem, void (*body)(void*), void* ctx,
                    unsigned char* const* dyn, int n_dyn, char* err, size_t errlen)
{
    std::lock_guard<std::mutex> lock(launch_mutex);   // the stacks and globals are shared
    Launch L;
    L.kernel = kernel;
    L.body = body;
    L.ctx = ctx;
    const int n_threads = (int)(block[0] * block[1] * block[2]);
    L.fibers.resize(n_threads);
    for (int t = 0; t < n_threads; ++t) {
        L.fibers[t].stack = stack_for(t);
        if (L.fibers[t].stack == nullptr) {
            snprintf(err, errlen, "kernel %s: could not map a stack for thread %d", kernel, t);
            return 1;
        }
        L.fibers[t].stack += kGuard;
    }
    const TlsBlock tls = shared_memory_block();
    current_launch = &L;
    gridDim = dim3(grid[0], grid[1], grid[2]);
    blockDim = dim3(block[0], block[1], block[2]);
    int rc = 0;
    for (unsigned z = 0; z < grid[2] && rc == 0; ++z)
        for (unsigned y = 0; y < grid[1] && rc == 0; ++y)
            for (unsigned x = 0; x < grid[0] && rc == 0; ++x) {
                blockIdx = uint3(x, y, z);
                if (tls.data != nullptr)
                    memset(tls.data, 0xFF, tls.size);
                else
                    for (int i = 0; i < n_dyn; ++i)
                        memset(dyn[i], 0xFF, smem);
                if (!run_block(L, n_threads)) {
                    snprintf(err, errlen, "%s", L.error.c_str());
                    rc = 1;
                }
            }
    current_launch = nullptr;
    return rc;
}

// ---- calling a kernel with cuLaunchKernel-style arguments ---------------------------
template <class T> struct code { static constexpr const char* c = nullptr; };
template <> struct code<float> { static constexpr const char* c = "f"; };
template <> struct code<double> { static constexpr const char* c = "d"; };
template <> struct code<int> { static constexpr const char* c = "i"; };
template <> struct code<unsigned int> { static constexpr const char* c = "I"; };
template <> struct code<long long> { static constexpr const char* c = "q"; };
template <> struct code<unsigned long long> { static constexpr const char* c = "Q"; };
template <> struct code<long> { static constexpr const char* c = "q"; };
template <> struct code<unsigned long> { static constexpr const char* c = "Q"; };
template <> struct code<unsigned char> { static constexpr const char* c = "B"; };
template <> struct code<signed char> { static constexpr const char* c = "b"; };
template <> struct code<char> { static constexpr const char* c = "b"; };
template <> struct code<short> { static constexpr const char* c = "h"; };

template <class T>
inline std::string type_code()
{
    typedef typename std::remove_cv<T>::type U;
    if constexpr (std::is_pointer<U>::value) {
        typedef typename std::remove_pointer<U>::type V;   // "P": writable, "R": read-only
        return (std::is_const<V>::value ? "R" : "P") + type_code<V>();
    } else {
        static_assert(code<U>::c != nullptr,
                      "cuda_on_cpu.h: a kernel parameter type the emulator's launcher "
                      "does not know (add it to gbemu::code)");
        return code<U>::c;
    }
}

// "Rf,Pf,i,d": the kernel's parameter types, for the Python side's checks
// (R = pointer to const, P = pointer the kernel may write through)
template <class... A>
inline const char* signature(void (*)(A...))
{
    static const std::string s = [] {
        std::string out;
        ((out += (out.empty() ? "" : ","), out += type_code<A>()), ...);
        return out;
    }();
    return s.c_str();
}

template <class... A>
struct Call {
    void (*kernel)(A...);
    void** args;
    template <size_t... I>
    void run(std::index_sequence<I...>) { kernel(*static_cast<A*>(args[I])...); }
    static void body(void* self)
    {
        static_cast<Call*>(self)->run(std::index_sequence_for<A...>{});
    }
};

template <class... A>
inline int launch(const char* name, void (*kernel)(A...), const unsigned* grid,
                  const unsigned* block, unsigned long long smem, void** args,
                  unsigned char* const* dyn, int n_dyn, char* err, size_t errlen)
{
    Call<A...> call{kernel, args};
    return run_grid(name, grid, block, smem, &Call<A...>::body, &call, dyn, n_dyn, err, errlen);
}

}  // namespace gbemu

// the order threads run within a barrier phase: 0 = 0, 1, ..., 1 = reverse
extern "C" GBEMU_API void gbemu_set_schedule(int order) { gbemu::schedule_order = order; }

// GBEMU_EXPORT(K): the ctypes entry points of kernel K.  The including file
// defines `static int gbemu_dynamic_shared(unsigned char** out)`, which lists
// its extern __shared__ arrays, at most GBEMU_MAX_DYN (the loader generates it).
#define GBEMU_MAX_DYN 8
#define GBEMU_EXPORT(K)                                                                  \
    extern "C" GBEMU_API const char* gbemu_signature_##K()                               \
    {                                                                                    \
        return gbemu::signature(&K);                                                     \
    }                                                                                    \
    extern "C" GBEMU_API int gbemu_launch_##K(const unsigned* grid, const unsigned* block, \
                                              unsigned long long smem, void** args,      \
                                              char* err, size_t errlen)                  \
    {                                                                                    \
        unsigned char* dyn[GBEMU_MAX_DYN];                                               \
        const int n_dyn = gbemu_dynamic_shared(dyn);                                     \
        return gbemu::launch(#K, &K, grid, block, smem, args, dyn, n_dyn, err, errlen);  \
    }

#endif  // GPUBACKPROP_CUDA_ON_CPU_H
