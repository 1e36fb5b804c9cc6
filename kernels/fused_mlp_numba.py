"""numba.cuda twin of fused_forward (kernels/fused_mlp.cu).

Same tile (FUSED_TILE_B rows per block), same 16 x 16 thread grid and
register micro-tile (rows ty + 16 i, columns tx + 16 j), same padding of
widths to 16, same FUSED_KC-wide staging of the weights and of the gathered
input rows, same order of every sum and the same guarded stores.  Two
differences, both forced by numba: the parameters come as one flat array
in the gradient layout [W_0 | b_0 | W_1 | b_1 | ...] (numba kernels take
no pointer tables), and the shared buffers are static arrays sized for the
network's padded width (`kernels(dtype, wpad)` builds and caches one kernel
per (dtype, wpad)); on a real GPU the 48 KiB of static shared memory limit
it to wpad <= 48 in float32 and wpad <= 16 in float64 (static_smem_bytes;
found by assembling its PTX with ptxas, tests/test_numba_ptx.py).  Its
purpose is to run the kernel's indexing under the CUDA simulator
(NUMBA_ENABLE_CUDASIM=1) on tiny shapes: tests/sim/test_fused_twin.py.  The
activation device function is numba_kernels' (one switch on the codes of
gpubackprop/activations.py), and importing numba_kernels first applies its
NumPy shim for numba-cuda.
"""
import functools
import math

import numba
import numpy as np

from . import DEFAULT_SHARED_BYTES, FUSED, FUSED_THREADS
from . import numba_kernels as nk
from gpubackprop.activations import CODES

cuda = nk.cuda
# the sizes fused_mlp.cu is built with (kernels/__init__.py)
TILE_B = FUSED["FUSED_TILE_B"]
MAX_W = FUSED["FUSED_MAX_W"]
PAD = FUSED["FUSED_PAD"]
KC = FUSED["FUSED_KC"]
THREADS = FUSED_THREADS
TM = TILE_B // 16
TN = MAX_W // 16
SOFTMAX = CODES["softmax"]


STATIC_SMEM_LIMIT = DEFAULT_SHARED_BYTES      # static shared memory: no opt-in above it


def _pad(n):
    return -(-n // PAD) * PAD


def static_smem_bytes(dtype, wpad):
    """Bytes of fused_forward's static shared arrays: buf, Wc and Xc."""
    LD = wpad + 1
    return (2 * TILE_B * LD + KC * LD + TILE_B * (KC + 1)) * np.dtype(dtype).itemsize


def flat_params(params, dtype):
    """[(W, b), ...] -> one flat array [W_0 | b_0 | W_1 | b_1 | ...]."""
    return np.concatenate([np.concatenate([np.ravel(W), np.ravel(b)])
                           for W, b in params]).astype(dtype)


@functools.lru_cache(maxsize=None)
def kernels(dtype, wpad):
    """{"fused_forward": kernel} for element type `dtype` and padded width `wpad`."""
    nbt = {np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}[np.dtype(dtype)]
    ty_ = getattr(numba, nbt)
    dt = np.dtype(dtype).type
    LD = wpad + 1          # shared rows padded by one (bank conflicts)
    KC1 = KC + 1           # numba.cuda wants shared shapes as plain constants, not sums
    zero = dt(0)
    sigma = nk.kernels(dtype).sigma

    @cuda.jit
    def fused_forward(X, idx, B, L, params, dims, acts, act_out):
        buf = cuda.shared.array((2, TILE_B, LD), ty_)      # ping-pong activations
        Wc = cuda.shared.array((KC, LD), ty_)              # Wc[kk][n] = W[n, k0 + kk]
        Xc = cuda.shared.array((TILE_B, KC1), ty_)      # gathered input chunk
        acc = cuda.local.array((TM, TN), ty_)
        a = cuda.local.array(TM, ty_)
        w = cuda.local.array(TN, ty_)
        tid = cuda.threadIdx.x
        tx = tid % 16
        tyy = tid // 16
        r0 = cuda.blockIdx.x * TILE_B
        rows = min(TILE_B, B - r0)
        cur = 0                                            # buf[cur] = a_l, buf[1-cur] = a_{l+1}
        p_off = 0
        a_off = 0
        for l in range(L):
            n_in = dims[l]
            n_out = dims[l + 1]
            kpad = (n_in + PAD - 1) // PAD * PAD
            npad = (n_out + PAD - 1) // PAD * PAD
            w_off = p_off
            b_off = p_off + n_out * n_in
            for i in range(TM):
                for j in range(TN):
                    acc[i, j] = zero
            for k0 in range(0, kpad, KC):
                kc = min(KC, kpad - k0)
                cuda.syncthreads()
                for e in range(tid, npad * KC, THREADS):
                    n = e // KC
                    kk = e % KC
                    k = k0 + kk
                    if kk < kc:
                        if n < n_out and k < n_in:
                            Wc[kk, n] = params[w_off + n * n_in + k]
                        else:
                            Wc[kk, n] = zero
                if l == 0:
                    for e in range(tid, TILE_B * KC, THREADS):
                        r = e // KC
                        kk = e % KC
                        k = k0 + kk
                        if kk < kc:
                            if r < rows and k < n_in:
                                Xc[r, kk] = X[idx[r0 + r], k]
                            else:
                                Xc[r, kk] = zero
                cuda.syncthreads()
                for kk in range(kc):                       # sequential k
                    for i in range(TM):
                        if l == 0:
                            a[i] = Xc[tyy + 16 * i, kk]
                        else:
                            a[i] = buf[cur, tyy + 16 * i, k0 + kk]
                    for j in range(TN):
                        if 16 * j < npad:
                            w[j] = Wc[kk, tx + 16 * j]
                    for j in range(TN):
                        if 16 * j < npad:
                            for i in range(TM):
                                acc[i, j] += a[i] * w[j]
            code = acts[l]
            nxt = 1 - cur
            for j in range(TN):
                n = tx + 16 * j
                if 16 * j < npad:
                    bn = params[b_off + n] if n < n_out else zero
                    for i in range(TM):
                        r = tyy + 16 * i
                        z = acc[i, j] + bn
                        if n < n_out and r < rows:
                            buf[nxt, r, n] = z if code == SOFTMAX else sigma(code, z)
                        else:
                            buf[nxt, r, n] = zero
            cuda.syncthreads()
            if code == SOFTMAX:
                if tid < rows:
                    m = buf[nxt, tid, 0]
                    for n in range(1, n_out):
                        if buf[nxt, tid, n] > m:
                            m = buf[nxt, tid, n]
                    s = zero
                    for n in range(n_out):
                        buf[nxt, tid, n] = math.exp(buf[nxt, tid, n] - m)
                        s += buf[nxt, tid, n]
                    for n in range(n_out):
                        buf[nxt, tid, n] /= s
                cuda.syncthreads()
            for e in range(tid, rows * n_out, THREADS):
                r = e // n_out
                n = e % n_out
                act_out[a_off + (r0 + r) * n_out + n] = buf[nxt, r, n]
            a_off += B * n_out
            p_off = b_off + n_out
            cur = nxt

    return {"fused_forward": fused_forward}


def forward(params, acts, X, idx=None, dtype=np.float32):
    """Run the twin of fused_forward (simulator or GPU); returns [a_1, ..., a_L]."""
    dtype = np.dtype(dtype)
    X = np.ascontiguousarray(X, dtype=dtype)
    idx = np.arange(X.shape[0], dtype=np.int64) if idx is None else np.asarray(idx, np.int64)
    B = len(idx)
    if B > np.iinfo(np.int32).max:
        raise ValueError(f"the twin takes the batch size as an int32: at most 2**31 - 1 rows, "
                         f"got {B}")
    sizes = [params[0][0].shape[1]] + [W.shape[0] for W, _ in params]
    wpad = max(_pad(n) for n in sizes[1:])
    if max(sizes[1:]) > MAX_W:
        raise ValueError(f"layer outputs must be at most {MAX_W} wide")
    if not nk.simulator_active() and static_smem_bytes(dtype, wpad) > STATIC_SMEM_LIMIT:
        raise ValueError(f"the numba twin needs {static_smem_bytes(dtype, wpad)} bytes of "
                         f"static shared memory for width {wpad} in {dtype.name}; a GPU gives "
                         f"{STATIC_SMEM_LIMIT} (the CUDA C kernel has no such limit)")
    act_out = np.zeros(B * sum(sizes[1:]), dtype=dtype)
    k = kernels(dtype, wpad)["fused_forward"]
    k[(-(-B // TILE_B),), (THREADS,)](X, idx, np.int32(B), np.int32(len(params)),
                                     flat_params(params, dtype),
                                     np.asarray(sizes, np.int32),
                                     np.asarray([CODES[a] for a in acts], np.int32), act_out)
    out, off = [], 0
    for n in sizes[1:]:
        out.append(act_out[off:off + B * n].reshape(B, n))
        off += B * n
    return out

