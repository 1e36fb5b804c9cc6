"""The BLAS of backend="numba": NumPy's own OpenBLAS where its sgemm and
dgemm can be found (the NumPy wheels' scipy-openblas64, 64-bit ints), else
SciPy's (cython_blas, 32-bit ints).  gemm feeds the compiled epoch's GEMMs
(numba_cpu_blocks._gemm; Numba's own np.dot would run SciPy's) and matmul
the loop's ops.

One library for the epoch, the loop, validation passes and the user's own
NumPy code: each OpenBLAS keeps a pool of worker threads that spin-wait for
a while after a call, so an epoch right after another library's GEMMs ran
on half the cores until those threads gave up (bench/RESULTS.md).  NumPy's
is the one the user's code wakes, and the epoch measured no slower on it.
"""
import ctypes
import functools
import os
import threading

import numba.extending
import numpy as np

from .numba_cpu_blocks import gemm_op


def matmul(a, b, out=None):
    """a @ b (into `out`, C-contiguous, if given) on the library: NumPy's
    matmul where it is NumPy's, or for what BLAS does not take (other
    dtypes, empty shapes, an `out` that overlaps an operand).  An operand
    neither C- nor F-contiguous is copied first."""
    if library()[0] == "numpy" or not _blas_operands(a, b, out):
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), a.dtype)
    _blas_matmul(np.ascontiguousarray(a) if _layout(a) is None else a,
                 np.ascontiguousarray(b) if _layout(b) is None else b, out)
    return out


@functools.cache
def library():
    """("numpy", address of sgemm, of dgemm, int dtype) for NumPy's OpenBLAS
    where found, else the same for SciPy's."""
    return _numpy_gemm() or scipy_gemm()


def scipy_gemm():
    """library()'s record for SciPy's BLAS."""
    get = numba.extending.get_cython_function_address
    return ("scipy", get("scipy.linalg.cython_blas", "sgemm"),
            get("scipy.linalg.cython_blas", "dgemm"), np.dtype(np.int32))


def _numpy_gemm():
    """NumPy's OpenBLAS sgemm and dgemm (the ILP64 scipy-openblas64 symbols of
    NumPy's wheels), or None: another NumPy build (MKL, Accelerate, a
    system OpenBLAS) keeps SciPy's."""
    try:
        import threadpoolctl
        found = threadpoolctl.threadpool_info()
    except Exception:                 # a library threadpoolctl cannot read
        return None
    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
    for info in found:
        path = info.get("filepath") or ""
        if info.get("internal_api") != "openblas" or not path.startswith(numpy_dir) \
                or "numpy" not in path[len(numpy_dir):]:
            continue
        try:
            lib = ctypes.CDLL(path)
            return ("numpy", ctypes.cast(lib.scipy_sgemm_64_, ctypes.c_void_p).value,
                    ctypes.cast(lib.scipy_dgemm_64_, ctypes.c_void_p).value, np.dtype(np.int64))
        except (OSError, AttributeError):
            return None
    return None


@functools.cache
def gemm(dtype):
    """The library's sgemm or dgemm as a ctypes function for compiled code
    (numba_cpu_blocks._gemm): every by-reference argument an address passed
    as a 64-bit integer."""
    address = library()[1 if np.dtype(dtype) == np.float32 else 2]
    return ctypes.CFUNCTYPE(None, *[ctypes.c_uint64] * 13)(address)


def scratch(dtype):
    """The arguments gemm's function reads by reference (chars, ints of the
    library's width, scalars) and their addresses: one set per thread."""
    held = np.frombuffer(b"NT", np.uint8).copy(), np.zeros(6, library()[3]), np.zeros(2, dtype)
    return (*held, tuple(x.ctypes.data for x in held))


def _layout(x):
    """'C' or 'F' for a contiguous 2-D array (BLAS reads it as it is), else None."""
    return "C" if x.flags.c_contiguous else "F" if x.flags.f_contiguous else None


#: SciPy's BLAS takes 32-bit dimensions (matmul's own calls are SciPy's)
_MAX_DIM = 2 ** 31 - 1


def _blas_operands(a, b, out):
    """True if gemm can compute out = a @ b: 2-D NumPy arrays of one
    float dtype, no dimension 0 or past _MAX_DIM, out (if given)
    C-contiguous, writable and apart from a and b."""
    if type(a) is not np.ndarray or type(b) is not np.ndarray or a.ndim != 2 or b.ndim != 2 \
            or a.dtype not in (np.float32, np.float64) or b.dtype != a.dtype \
            or a.shape[1] != b.shape[0] \
            or not 0 < min(*a.shape, b.shape[1]) <= max(*a.shape, b.shape[1]) <= _MAX_DIM:
        return False
    return out is None or (type(out) is np.ndarray and out.dtype == a.dtype
                           and out.shape == (a.shape[0], b.shape[1]) and out.flags.c_contiguous
                           and out.flags.writeable and not np.may_share_memory(out, a)
                           and not np.may_share_memory(out, b))


_scratch = threading.local()       # per thread: calls from two threads must not share it


def _blas_matmul(a, b, out):
    """out = a @ b by gemm (numba_cpu_blocks.gemm_op, compiled once per layout
    and cached), a and b C- or F-contiguous, out C-contiguous; with this
    thread's scratch, made once."""
    key = library()[0], a.dtype.char
    held = _scratch.__dict__.get(key)
    if held is None:
        held = _scratch.__dict__[key] = scratch(a.dtype)
    gemm_op(gemm(a.dtype), held, a, b, out)
