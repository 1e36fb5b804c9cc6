"""The building blocks of the compiled CPU step that do not depend on the
activation table (numba_cpu_kernels.py builds the epoch from them): the
gather, the small forward GEMM, the cost, the gradient sums and the SGD
update.  All but _matmul_nt and the timing loop _time_forward are inlined
into the kernels that call them.

The epoch's cache entries are checked against SOURCE_HASH (numba notices an
edit of the file that holds a cached function, not of the files it calls).
"""
import hashlib
import math
from pathlib import Path

import numpy as np
from numba import njit

from .. import activations
from ..losses import Loss

SOFTMAX, IDENTITY = activations.CODES["softmax"], activations.CODES["identity"]
CROSS_ENTROPY = Loss.CODES["cross_entropy"]     # the other costs are squared errors
#: a column sum adds rows in order within blocks of this many (_column_sum);
#: a narrow network's step runs in blocks of it (numba_cpu.py)
COLUMN_BLOCK = 1024
#: forward GEMMs of fewer multiply-adds (batch x n_in x n_out) may run
#: _matmul_nt (the machine's choice: numba_cpu.py); BLAS runs the rest: on
#: the machines measured it wins from about 64 x 784 x 30 (bench/RESULTS.md)
SMALL_GEMM = 2 ** 20
#: this file's text, hashed: the compiled epoch returns it with the table's
SOURCE_HASH = int.from_bytes(hashlib.sha256(Path(__file__).read_bytes()).digest()[:7], "little")


@njit(inline="always")
def _gather(X, order, start, out):
    """out[i] = X[order[start + i]]: the batch's rows."""
    for i in range(out.shape[0]):
        r = order[start + i]                     # (loop invariants in locals: the
        for k in range(out.shape[1]):            #  inner loops vectorise)
            out[i, k] = X[r, k]


@njit(inline="always")
def _softmax_rows(z, a):
    """a = e^(z - max) / sum e^(z - max), row by row (a may be z)."""
    for i in range(z.shape[0]):
        m = z[i, 0]
        for j in range(z.shape[1]):
            m = max(m, z[i, j])
        total = 0.0
        for j in range(z.shape[1]):
            a[i, j] = math.exp(z[i, j] - m)
            total += a[i, j]
        for j in range(z.shape[1]):
            a[i, j] /= total


@njit(cache=True)
def _time_forward(x, W, z, hand, gemm, blas, reps):
    """reps forward GEMMs z = x @ W.T, by _matmul_nt or BLAS (the measurement)."""
    for _ in range(reps):
        if hand:
            _matmul_nt(x, W, z)
        else:
            _gemm(gemm, blas, x, W.T, z, 1, 0)


@njit(fastmath={"reassoc", "contract"})
def _matmul_nt(x, W, z):
    """z = x @ W.T for a small step: z[i, j] is the dot product of the rows
    x[i] and W[j] (contiguous), computed in blocks of four rows by four
    (sixteen sums, each row loaded once per block: the loads stay under the
    multiply-adds) and vectorised over k (reassoc lets LLVM split each sum
    over vector lanes).  Rows past the last repeat it."""
    B, K = x.shape
    N = W.shape[0]
    for i in range(0, B, 4):
        i1, i2, i3 = min(i + 1, B - 1), min(i + 2, B - 1), min(i + 3, B - 1)
        x0, x1, x2, x3 = x[i], x[i1], x[i2], x[i3]
        for j in range(0, N, 4):
            j1, j2, j3 = min(j + 1, N - 1), min(j + 2, N - 1), min(j + 3, N - 1)
            w0, w1, w2, w3 = W[j], W[j1], W[j2], W[j3]
            zero = x0[0] - x0[0]          # x's type: a float32 sum stays float32 (0 is int64)
            c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = zero
            c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = zero
            for k in range(K):
                a0, a1, a2, a3 = x0[k], x1[k], x2[k], x3[k]
                b0, b1, b2, b3 = w0[k], w1[k], w2[k], w3[k]
                c00 += a0 * b0
                c01 += a0 * b1
                c02 += a0 * b2
                c03 += a0 * b3
                c10 += a1 * b0
                c11 += a1 * b1
                c12 += a1 * b2
                c13 += a1 * b3
                c20 += a2 * b0
                c21 += a2 * b1
                c22 += a2 * b2
                c23 += a2 * b3
                c30 += a3 * b0
                c31 += a3 * b1
                c32 += a3 * b2
                c33 += a3 * b3
            z[i, j], z[i, j1], z[i, j2], z[i, j3] = c00, c01, c02, c03
            z[i1, j], z[i1, j1], z[i1, j2], z[i1, j3] = c10, c11, c12, c13
            z[i2, j], z[i2, j1], z[i2, j2], z[i2, j3] = c20, c21, c22, c23
            z[i3, j], z[i3, j1], z[i3, j2], z[i3, j3] = c30, c31, c32, c33


@njit(inline="always")
def _cost(a, y, loss_code, code, tiny):
    """(sum over the rows of C0, rows with argmax a == argmax y), as losses.Loss."""
    total, correct = 0.0, 0
    for i in range(a.shape[0]):
        ia = iy = 0                              # argmax, first maximum wins
        for j in range(a.shape[1]):
            ia = j if a[i, j] > a[i, ia] else ia
            iy = j if y[i, j] > y[i, iy] else iy
        correct += ia == iy
        if loss_code != CROSS_ENTROPY:
            for j in range(a.shape[1]):
                total += (a[i, j] - y[i, j]) ** 2
        elif code == SOFTMAX:
            for j in range(a.shape[1]):
                total -= y[i, j] * math.log(max(a[i, j], tiny))
        else:                                    # identity logits: stable log softmax
            m, lse = a[i, ia], 0.0
            for j in range(a.shape[1]):
                lse += math.exp(a[i, j] - m)
            for j in range(a.shape[1]):
                total -= y[i, j] * (a[i, j] - m - math.log(lse))
    return total, correct


@njit(inline="always")
def _column_sum(delta, db):
    """db[j] = sum_i delta[i, j]: rows in order within blocks of COLUMN_BLOCK
    rows, then the blocks' sums in order.  Row order reads delta once; the
    blocks keep a float32 sum's error growing with the block, not the batch."""
    B, n = delta.shape
    for j in range(n):
        db[j] = delta[0, j] if B else 0
    for i in range(1, min(B, COLUMN_BLOCK)):
        for j in range(n):
            db[j] += delta[i, j]
    part = np.empty(n if B > COLUMN_BLOCK else 0, delta.dtype)
    for start in range(COLUMN_BLOCK, B, COLUMN_BLOCK):
        for j in range(n):
            part[j] = delta[start, j]
        for i in range(start + 1, min(B, start + COLUMN_BLOCK)):
            for j in range(n):
                part[j] += delta[i, j]
        for j in range(n):
            db[j] += part[j]


@njit(inline="always")
def _add_gradient(delta, a_prev, dW, db, part_W, part_b, first, gemm, blas):
    """dW (+)= delta.T @ a_prev, db (+)= delta.sum(0) for one block of rows
    (first: the first block, which sets them; the others add their sums)."""
    sums_W, sums_b = (dW, db) if first else (part_W, part_b)
    _gemm(gemm, blas, delta.T, a_prev, sums_W, 1, 0)     # sum over the rows of outer products
    _column_sum(delta, sums_b)
    if not first:
        _add_into(dW, db, part_W, part_b)


@njit(inline="always")
def _add_into(dW, db, part_W, part_b):
    """dW += part_W; db += part_b."""
    for j in range(dW.shape[0]):
        for k in range(dW.shape[1]):
            dW[j, k] += part_W[j, k]
        db[j] += part_b[j]


@njit(inline="always")
def _gemm(gemm, blas, A, B, C, alpha, beta):
    """C = beta C + alpha A @ B in one BLAS call; A and B C-contiguous or
    transposed C-contiguous arrays, C C-contiguous.  gemm is the backend's
    sgemm or dgemm (numba_cpu_blas.gemm, passed in as an argument: a global
    function pointer would keep the epoch out of Numba's cache) and blas =
    (chars, ints, scalars, their addresses) the scratch its by-reference
    arguments point into (ints of the library's width).  BLAS is
    column-major, where row-major C is C.T = B.T @ A.T: a row-major array
    is its transpose to BLAS, a transposed one is taken transposed."""
    chars, ints, scalars, (c, i, f) = blas
    M, K = A.shape
    N = B.shape[1]
    b_rows, ldb = _major(B)
    a_rows, lda = _major(A)
    chars[0] = 78 if b_rows else 84                     # "N", "T"
    chars[1] = 78 if a_rows else 84
    ints[0], ints[1], ints[2] = N, M, K                 # m, n, k of C.T
    ints[3], ints[4], ints[5] = ldb, lda, max(1, N)
    scalars[0], scalars[1] = alpha, beta
    w = ints.itemsize
    gemm(c, c + 1, i, i + w, i + 2 * w, f, B.ctypes.data, i + 3 * w, A.ctypes.data, i + 4 * w,
         f + scalars.itemsize, C.ctypes.data, i + 5 * w)


@njit(cache=True, nogil=True)
def gemm_op(gemm, blas, A, B, C):
    """C = A @ B by _gemm, called from Python (numba_cpu_blas.matmul)."""
    _gemm(gemm, blas, A, B, C, 1, 0)


@njit(inline="always")
def _major(A):
    """(row-major?, leading dimension) of a C-contiguous array or the
    transpose of one (a row or column of one element is either)."""
    rows, cols = A.shape
    size = A.itemsize
    if A.strides[1] == size and (rows <= 1 or A.strides[0] == cols * size):
        return True, max(1, cols)
    return False, max(1, rows)


@njit(inline="always")
def _sgd_update(W, b, vW, vb, dW, db, scale, lr, mu, wd, momentum):
    """optim.SGD.step with (dW, db) = scale (the batch's sums), on W, b and
    their velocities vW, vb (not used without momentum):
    g = grad + wd p;  v = mu v + g;  p = p - lr v   (p = p - lr g without momentum).
    wd p is added even for wd = 0: g + 0 is g, the same arithmetic as SGD.step."""
    for j in range(W.shape[0]):
        if momentum:
            for k in range(W.shape[1]):
                vW[j, k] = mu * vW[j, k] + (dW[j, k] * scale + wd * W[j, k])
                W[j, k] = W[j, k] - lr * vW[j, k]
        else:
            for k in range(W.shape[1]):
                W[j, k] = W[j, k] - lr * (dW[j, k] * scale + wd * W[j, k])
        gb = db[j] * scale + wd * b[j]
        if momentum:
            vb[j] = mu * vb[j] + gb
            gb = vb[j]
        b[j] = b[j] - lr * gb


@njit(inline="always")
def _update(params, velocities, dW, db, scale, lr, mu, wd):
    """Every layer's SGD update from the batch's gradient sums."""
    momentum = len(velocities) > 0
    for l in range(len(dW)):
        W, b = params[2 * l], params[2 * l + 1][0]
        vW, vb = (velocities[2 * l], velocities[2 * l + 1][0]) if momentum else (W, b)
        _sgd_update(W, b, vW, vb, dW[l], db[l][0], scale, lr, mu, wd, momentum)
