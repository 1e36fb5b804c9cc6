"""The numba.cuda twins of the CUDA C kernels in this folder.

Same algorithms, layouts and launch shapes as dense_forward.cu,
delta_propagate.cu and weight_update.cu (read those files' headers and
README.md): a shared-memory tiled GEMM with a strided THREAD_M x THREAD_N
register micro-tile per thread, zero-filled edge tiles, guarded stores and
the element-wise part (bias + activation, * sigma'(a), the SGD update) fused
into the epilogue; the weight gradient split over the batch into chunks
whose partial sums are added in a fixed order (deterministic).  Two
differences forced by numba: sizes come from the arrays' shapes, and the
partials are a 2-D array part[chunk, N * K + N] (weight_update.cu: flat).
The tile sizes are the ones the .cu builds get (`GEMM_TILES`, `BIAS_ROWS` in
kernels/__init__.py); the activation switch is built from the table of
gpubackprop/activations.py (its scalar functions, compiled as device
functions).

Kernels are built per dtype by `kernels(dtype)` (cached): numba needs the
shared/local array shapes and element type as compile-time constants, so
they are closure variables of the factory; the kernels' own constants are of
that dtype.

This module is also where numba.cuda is made ready to compile on a real
GPU (`prepare_compiler`): the NumPy shim below, and libnvvm located.  The
same code runs under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) on plain
NumPy arrays; that is how tests/sim checks it on a machine without a GPU.
Arrays must be 2-D (1-D for biases), row-major and contiguous.
"""
import ctypes
import functools
import glob
import math
import os
import shutil
import sys
import types as pytypes

import numba
import numpy as np

# numba-cuda 0.30 registers `overload(np.row_stack)` (guarded only by NumPy >=
# 2.0) when its array support loads, at the first compile of any kernel.
# NumPy 2.5 removed np.row_stack (an alias of np.vstack, deprecated since
# 2.0), so that first compile raises AttributeError.  Give the alias back, only
# where it is missing, before numba.cuda can compile anything.
if not hasattr(np, "row_stack"):
    np.row_stack = np.vstack

from numba import cuda  # noqa: E402  (after the shim)

from . import BIAS_ROWS, GEMM_TILES, REDUCE_MAX_BLOCKS, REDUCE_THREADS, UPDATE_MODES  # noqa: E402

from gpubackprop import activations  # noqa: E402

# weight_update / bias_update / update_reduce modes (weight_update.cu)
GRADIENT, SGD = UPDATE_MODES["GB_GRADIENT"], UPDATE_MODES["GB_SGD"]

IDENTITY = activations.CODES["identity"]


def _device_function(fn):
    return cuda.jit(device=True, inline="always")(fn)


def simulator_active():
    """Whether `numba.cuda`, as imported in this process, is the CUDA simulator."""
    flag = getattr(cuda, "simulator_enabled", None)
    if flag is not None:
        return bool(flag)
    return getattr(cuda.jit, "__module__", "").startswith("numba.cuda.simulator")


# ---- the compiler's libraries ----------------------------------------------------

def libnvvm_candidates():
    """Files that may be libnvvm, most specific first: the NVIDIA wheels in
    sys.path (nvidia-nvvm for CUDA 13, nvidia-cuda-nvcc-cu12), then the CUDA
    toolkit of the `nvcc` on PATH, then /usr/local/cuda."""
    roots = [p for p in sys.path if p and os.path.isdir(os.path.join(p, "nvidia"))]
    patterns = [os.path.join(r, "nvidia", sub, "libnvvm.so*") for r in roots
                for sub in ("cu13/lib", "cu13/nvvm/lib64", "cuda_nvcc/nvvm/lib64")]
    nvcc = shutil.which("nvcc")
    homes = ([os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []) \
        + ["/usr/local/cuda"]
    patterns += [os.path.join(h, sub, "libnvvm.so*") for h in homes
                 for sub in ("nvvm/lib64", "lib64", "lib")]
    found = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern), reverse=True):
            if path not in found:
                found.append(path)
    return found


@functools.lru_cache(maxsize=1)
def prepare_compiler():
    """Make numba.cuda able to compile here; returns where libnvvm came from.

    numba-cuda asks cuda.pathfinder for libnvvm; when that fails it infers the
    toolkit from CUDA_HOME/CUDA_PATH, or from nvrtc's folder unless nvrtc came
    from a wheel (then it gives up).  pathfinder's documented first step is a
    library already loaded in the process, so a libnvvm found here is loaded
    before numba-cuda looks.  Raises RuntimeError when none is found."""
    try:
        from cuda import pathfinder
    except ImportError:                 # an older numba-cuda without pathfinder
        return "numba-cuda's own search"
    try:
        return pathfinder.load_nvidia_dynamic_lib("nvvm").abs_path
    except Exception as exc:            # DynamicLibNotFoundError
        first = exc
    for path in libnvvm_candidates():
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return pathfinder.load_nvidia_dynamic_lib("nvvm").abs_path
        except Exception:
            continue
    raise RuntimeError(f"libnvvm (NVVM, numba.cuda's compiler) was not found: {first}; "
                       "install the CUDA toolkit or pip install nvidia-nvvm")


# ---- launch shapes -------------------------------------------------------------------

def _cdiv(a, b):
    return (a + b - 1) // b


@functools.lru_cache(maxsize=None)
def kernels(dtype):
    """The kernels for `dtype` (float32 or float64), as a namespace:
    .sigma, .dsigma_from_a (device functions), .dense_forward,
    .delta_propagate, .weight_update, .bias_update, .update_reduce (kernels),
    and their launch shapes: .threads (GEMM block), .gemm_grid(rows, cols),
    .update_grid(n_out, n_in, chunks), .bias_block, .bias_grid(n, chunks),
    .reduce_threads, .reduce_grid(n_params).  The batch split (how many
    chunks) is kernels.update_chunks, as for weight_update.cu."""
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"numba kernels are built for float32 and float64, not {dt}")
    if not simulator_active():
        prepare_compiler()
    t = GEMM_TILES[dt.name]
    TILE_M, TILE_N, TILE_K = t["TILE_M"], t["TILE_N"], t["TILE_K"]
    THREAD_M, THREAD_N = t["THREAD_M"], t["THREAD_N"]
    TILE_M_PADDED, TILE_N_PADDED = TILE_M + t["SMEM_PAD"], TILE_N + t["SMEM_PAD"]
    NTX, NTY = TILE_N // THREAD_N, TILE_M // THREAD_M
    NTHREADS = NTX * NTY
    LOADS_MK = _cdiv(TILE_M * TILE_K, NTHREADS)
    LOADS_NK = _cdiv(TILE_N * TILE_K, NTHREADS)
    BIAS_PAD = 33                       # 32 columns + 1 (bank conflicts)
    DT = numba.from_dtype(dt)
    ZERO = dt.type(0)

    # sigma(code, z) and dsigma(code, a): the if-chain over the scalar functions of
    # gpubackprop/activations.py's TABLE (its Python floats make the float32
    # epilogue compute in float64: exact where float32 would round, one
    # conversion per output element)
    sigma = activations.dispatcher("sigma", _device_function)
    dsigma_from_a = activations.dispatcher("dsigma", _device_function)

    @cuda.jit(device=True, inline="always")
    def sgd_apply(p, v, idx, g, lr, momentum, weight_decay):
        w = p[idx]
        if weight_decay != ZERO:
            g += weight_decay * w
        if momentum != ZERO:
            vn = momentum * v[idx] + g
            v[idx] = vn
            g = vn
        p[idx] = w - lr * g

    @cuda.jit(device=True, inline="always")
    def finish(p, v, d, idx, g, lr, momentum, weight_decay, mode):
        """The gradient entry g of parameter idx: written (GRADIENT) or applied (SGD)."""
        if mode == GRADIENT:
            d[idx] = g
        else:
            sgd_apply(p, v, idx, g, lr, momentum, weight_decay)

    @cuda.jit(device=True, inline="always")
    def load_tile(src, row0, nrows, col0, ncols, tile, ROWS, COLS, NLOADS, transpose, tid):
        """Stage the ROWS x COLS block of the row-major `src` at (row0, col0)
        in the shared `tile`: tile[r, c] = src[row0 + r, col0 + c], or
        tile[c, r] when `transpose`; zero where row0 + r >= nrows or
        col0 + c >= ncols.  The block's NTHREADS threads share the work,
        NLOADS = ceil(ROWS * COLS / NTHREADS) elements each."""
        for l in range(NLOADS):
            e = tid + l * NTHREADS
            if e < ROWS * COLS:
                r = e // COLS
                c = e % COLS
                if row0 + r < nrows and col0 + c < ncols:
                    v = src[row0 + r, col0 + c]
                else:
                    v = ZERO
                if transpose:
                    tile[c, r] = v
                else:
                    tile[r, c] = v

    @cuda.jit(device=True, inline="always")
    def zero_acc(acc):
        for i in range(THREAD_M):
            for j in range(THREAD_N):
                acc[i, j] = ZERO

    @cuda.jit(device=True, inline="always")
    def mma_tile(Xs, Ys, xf, yf, acc, tx, ty):
        """acc[i, j] += sum_k Xs[k, ty + i * NTY] * Ys[k, tx + j * NTX] over the
        TILE_K rows of the two staged tiles, through the register fragments
        xf (THREAD_M) and yf (THREAD_N)."""
        for k in range(TILE_K):
            for i in range(THREAD_M):
                xf[i] = Xs[k, ty + i * NTY]
            for j in range(THREAD_N):
                yf[j] = Ys[k, tx + j * NTX]
            for i in range(THREAD_M):
                for j in range(THREAD_N):
                    acc[i, j] += xf[i] * yf[j]

    @cuda.jit
    def dense_forward(a_prev, W, bias, out, act):
        """out = sigma(a_prev @ W.T + bias); a_prev (M, K), W (N, K), out (M, N)."""
        As = cuda.shared.array((TILE_K, TILE_M_PADDED), DT)
        Ws = cuda.shared.array((TILE_K, TILE_N_PADDED), DT)
        acc = cuda.local.array((THREAD_M, THREAD_N), DT)
        af = cuda.local.array(THREAD_M, DT)
        wf = cuda.local.array(THREAD_N, DT)
        M = a_prev.shape[0]
        K = a_prev.shape[1]
        N = W.shape[0]
        tid = cuda.threadIdx.x
        tx = tid % NTX
        ty = tid // NTX
        m0 = cuda.blockIdx.x * TILE_M
        n0 = cuda.blockIdx.y * TILE_N
        zero_acc(acc)
        for k0 in range(0, K, TILE_K):
            load_tile(a_prev, m0, M, k0, K, As, TILE_M, TILE_K, LOADS_MK, True, tid)
            load_tile(W, n0, N, k0, K, Ws, TILE_N, TILE_K, LOADS_NK, True, tid)
            cuda.syncthreads()
            mma_tile(As, Ws, af, wf, acc, tx, ty)
            cuda.syncthreads()
        for j in range(THREAD_N):
            n = n0 + tx + j * NTX
            if n < N:
                bn = bias[n]
                for i in range(THREAD_M):
                    m = m0 + ty + i * NTY
                    if m < M:
                        out[m, n] = sigma(act, acc[i, j] + bn)

    @cuda.jit
    def delta_propagate(delta, W, a_prev, out, act):
        """out = (delta @ W) * sigma'(a_prev); delta (M, K), W (K, N), a_prev, out (M, N)."""
        Ds = cuda.shared.array((TILE_K, TILE_M_PADDED), DT)
        Ws = cuda.shared.array((TILE_K, TILE_N), DT)
        acc = cuda.local.array((THREAD_M, THREAD_N), DT)
        df = cuda.local.array(THREAD_M, DT)
        wf = cuda.local.array(THREAD_N, DT)
        M = delta.shape[0]
        K = delta.shape[1]
        N = W.shape[1]
        tid = cuda.threadIdx.x
        tx = tid % NTX
        ty = tid // NTX
        m0 = cuda.blockIdx.x * TILE_M
        n0 = cuda.blockIdx.y * TILE_N
        zero_acc(acc)
        for k0 in range(0, K, TILE_K):
            load_tile(delta, m0, M, k0, K, Ds, TILE_M, TILE_K, LOADS_MK, True, tid)
            load_tile(W, k0, K, n0, N, Ws, TILE_K, TILE_N, LOADS_NK, False, tid)
            cuda.syncthreads()
            mma_tile(Ds, Ws, df, wf, acc, tx, ty)
            cuda.syncthreads()
        for i in range(THREAD_M):
            m = m0 + ty + i * NTY
            if m < M:
                for j in range(THREAD_N):
                    n = n0 + tx + j * NTX
                    if n < N:
                        if act == IDENTITY:
                            out[m, n] = acc[i, j]
                        else:
                            out[m, n] = acc[i, j] * dsigma_from_a(act, a_prev[m, n])

    @cuda.jit
    def weight_update(delta, a_prev, W, vW, dW, part, rows, scale, lr, momentum,
                      weight_decay, mode):
        """mode SGD: W -= lr * v with g = scale * delta.T @ a_prev + wd * W (fused);
        mode GRADIENT: dW = scale * delta.T @ a_prev.  delta (B, N), a_prev (B, K),
        W, vW, dW (N, K), part (chunks, N * K + N).  Block z sums the batch rows
        [z * rows, (z + 1) * rows); with more than one chunk it writes its
        unscaled partial sums to part[z] and update_reduce finishes.  Arrays a
        mode does not touch (dW for SGD, W and vW for GRADIENT, vW when
        momentum == 0, part with one chunk) may be any array of the dtype and
        rank, e.g. a (1, 1) placeholder; under the simulator not an alias of a
        used one (it copies NumPy arguments back one by one)."""
        Ds = cuda.shared.array((TILE_K, TILE_M), DT)
        As = cuda.shared.array((TILE_K, TILE_N), DT)
        acc = cuda.local.array((THREAD_M, THREAD_N), DT)
        df = cuda.local.array(THREAD_M, DT)
        af = cuda.local.array(THREAD_N, DT)
        B = delta.shape[0]
        N = delta.shape[1]
        K = a_prev.shape[1]
        tid = cuda.threadIdx.x
        tx = tid % NTX
        ty = tid // NTX
        j0 = cuda.blockIdx.x * TILE_M
        k0 = cuda.blockIdx.y * TILE_N
        b_begin = cuda.blockIdx.z * rows                 # this chunk of the batch
        b_end = min(b_begin + rows, B)
        zero_acc(acc)
        for b0 in range(b_begin, b_end, TILE_K):
            load_tile(delta, b0, b_end, j0, N, Ds, TILE_K, TILE_M, LOADS_MK, False, tid)
            load_tile(a_prev, b0, b_end, k0, K, As, TILE_K, TILE_N, LOADS_NK, False, tid)
            cuda.syncthreads()
            mma_tile(Ds, As, df, af, acc, tx, ty)
            cuda.syncthreads()
        for i in range(THREAD_M):
            jr = j0 + ty + i * NTY
            if jr < N:
                for j in range(THREAD_N):
                    kc = k0 + tx + j * NTX
                    if kc < K:
                        if cuda.gridDim.z > 1:
                            part[cuda.blockIdx.z, jr * K + kc] = acc[i, j]
                        else:
                            finish(W, vW, dW, (jr, kc), scale * acc[i, j], lr, momentum,
                                   weight_decay, mode)

    @cuda.jit
    def bias_update(delta, b, vb, db, part, rows, scale, lr, momentum, weight_decay, mode):
        """The bias twin of weight_update with g = scale * delta.sum(0): block
        (32, BIAS_ROWS), a fixed-order shared-memory reduction; block y sums
        the chunk [y * rows, (y + 1) * rows) of the batch."""
        sums = cuda.shared.array((BIAS_ROWS, BIAS_PAD), DT)
        B = delta.shape[0]
        N = delta.shape[1]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        j = cuda.blockIdx.x * 32 + tx
        b_begin = cuda.blockIdx.y * rows
        b_end = min(b_begin + rows, B)
        s = ZERO
        if j < N:
            for r in range(b_begin + ty, b_end, BIAS_ROWS):
                s += delta[r, j]
        sums[ty, tx] = s
        cuda.syncthreads()
        if ty == 0 and j < N:
            t = ZERO
            for y in range(BIAS_ROWS):           # fixed order: deterministic
                t += sums[y, tx]
            if cuda.gridDim.y > 1:
                part[cuda.blockIdx.y, part.shape[1] - N + j] = t
            else:
                finish(b, vb, db, j, scale * t, lr, momentum, weight_decay, mode)

    @cuda.jit
    def update_reduce(part, W, vW, dW, b, vb, db, N, K, scale, lr, momentum, weight_decay,
                      mode):
        """The chunks' partial sums added in the fixed order 0, 1, ..., then
        scaled and applied as weight_update's mode: one thread per parameter
        of [W | b] (a grid-stride loop); W, dW (N, K)."""
        NK = N * K
        P = NK + N
        p = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
        while p < P:
            g = ZERO
            for c in range(part.shape[0]):
                g += part[c, p]
            g = scale * g
            if p < NK:
                finish(W, vW, dW, (p // K, p % K), g, lr, momentum, weight_decay, mode)
            else:
                finish(b, vb, db, p - NK, g, lr, momentum, weight_decay, mode)
            p += cuda.gridDim.x * cuda.blockDim.x

    return pytypes.SimpleNamespace(
        dtype=dt, tiles=dict(t), sigma=sigma, dsigma_from_a=dsigma_from_a,
        dense_forward=dense_forward, delta_propagate=delta_propagate,
        weight_update=weight_update, bias_update=bias_update, update_reduce=update_reduce,
        threads=NTHREADS, bias_block=(32, BIAS_ROWS), reduce_threads=REDUCE_THREADS,
        gemm_grid=lambda rows, cols: (_cdiv(rows, TILE_M), _cdiv(cols, TILE_N)),
        update_grid=lambda n_out, n_in, chunks: (_cdiv(n_out, TILE_M), _cdiv(n_in, TILE_N),
                                                 chunks),
        bias_grid=lambda n, chunks=1: (_cdiv(n, 32), chunks),
        reduce_grid=lambda n_params: (min(_cdiv(n_params, REDUCE_THREADS), REDUCE_MAX_BLOCKS),))


def probe_ptx(cc):
    """PTX of a tiny kernel for compute capability `cc` (major, minor):
    proves numba.cuda can compile here (typing, NVVM, libdevice) without a
    GPU.  Calls prepare_compiler first."""
    from numba import types

    prepare_compiler()

    def probe(x, y):
        i = cuda.grid(1)
        if i < x.shape[0]:
            y[i] = math.exp(x[i])

    arr = types.Array(types.float32, 1, "C")
    ptx, _ = cuda.compile_ptx(probe, (arr, arr), cc=tuple(cc))
    return ptx
