"""SciPy's BLAS, the library numba's np.dot calls in the compiled epoch, for
the rest of backend="numba" too: gemm for the epoch's folded update
(numba_cpu_blocks._gemm_update) and matmul for the loop's ops.

NumPy bundles another OpenBLAS.  Each library's worker threads spin-wait
for a while after a call, so an epoch right after NumPy's matmul (a
validation pass, the user's own code) ran on half the cores until those
threads gave up (bench/RESULTS.md): the backend keeps to one library.
"""
import ctypes
import functools

import numba.extending
import numpy as np


def matmul(a, b, out=None):
    """a @ b (into `out`, C-contiguous, if given) on SciPy's BLAS; NumPy's
    matmul for what BLAS does not take (other dtypes, empty shapes, an `out`
    that overlaps an operand).  An operand neither C- nor F-contiguous is
    copied first."""
    if not _blas_operands(a, b, out):
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), a.dtype)
    _blas_matmul(np.ascontiguousarray(a) if _layout(a) is None else a,
                 np.ascontiguousarray(b) if _layout(b) is None else b, out)
    return out


@functools.cache
def gemm(dtype):
    """SciPy's BLAS sgemm or dgemm as a ctypes function: the epoch's folded
    update calls it (blocks._gemm_update).  Its by-reference arguments are
    passed as 64-bit integers (addresses)."""
    name = {np.dtype(np.float32): "sgemm", np.dtype(np.float64): "dgemm"}[np.dtype(dtype)]
    address = numba.extending.get_cython_function_address("scipy.linalg.cython_blas", name)
    return ctypes.CFUNCTYPE(None, *[ctypes.c_uint64] * 13)(address)


def scratch(dtype):
    """The arguments gemm's function reads by reference (chars, ints,
    scalars): one set per call, as threads share the function."""
    return np.frombuffer(b"NT", np.uint8).copy(), np.zeros(6, np.int32), np.zeros(2, dtype)


def _layout(x):
    """'C' or 'F' for a contiguous 2-D array (BLAS reads it as it is), else None."""
    return "C" if x.flags.c_contiguous else "F" if x.flags.f_contiguous else None


#: SciPy's BLAS takes 32-bit dimensions
_MAX_DIM = 2 ** 31 - 1


def _blas_operands(a, b, out):
    """True if gemm can compute out = a @ b: 2-D NumPy arrays of one
    float dtype, no dimension 0 or past _MAX_DIM, out (if given)
    C-contiguous, writable and apart from a and b."""
    arrays = (a, b) if out is None else (a, b, out)
    if not all(type(x) is np.ndarray and x.ndim == 2 for x in arrays) \
            or a.dtype not in (np.float32, np.float64) \
            or any(x.dtype != a.dtype for x in arrays) or a.shape[1] != b.shape[0] \
            or not 0 < min(*a.shape, b.shape[1]) <= max(*a.shape, b.shape[1]) <= _MAX_DIM:
        return False
    return out is None or (out.shape == (a.shape[0], b.shape[1]) and out.flags.c_contiguous
                           and out.flags.writeable and not np.may_share_memory(out, a)
                           and not np.may_share_memory(out, b))


def _blas_matmul(a, b, out):
    """out = a @ b by gemm, a and b C- or F-contiguous, out C-contiguous.
    BLAS is column-major, where row-major out is out.T = b.T @ a.T: a
    C-contiguous (M, K) array is column-major a.T (ld K), an F-contiguous
    one column-major a itself (ld M), so it is taken transposed."""
    (M, K), N = a.shape, b.shape[1]
    chars, ints, scalars = scratch(a.dtype)
    b_c, a_c = _layout(b) == "C", _layout(a) == "C"
    chars[:] = (ord("N") if b_c else ord("T"), ord("N") if a_c else ord("T"))
    ints[:] = (N, M, K, max(1, N if b_c else K), max(1, K if a_c else M), max(1, N))
    scalars[:] = (1, 0)
    i4, f = ints.ctypes.data, scalars.ctypes.data
    gemm(a.dtype)(chars.ctypes.data, chars.ctypes.data + 1, i4, i4 + 4, i4 + 8, f,
                  b.ctypes.data, i4 + 12, a.ctypes.data, i4 + 16, f + scalars.itemsize,
                  out.ctypes.data, i4 + 20)
