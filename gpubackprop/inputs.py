"""Checks and conversions for the data given to the public API.

Inputs may be NumPy arrays, CuPy arrays or Tensors; they are checked (shape,
dtype, finiteness, label range) and moved to the network's device once.
"""
import numpy as np

from .device import all_finite, import_cupy, is_cupy_array, to_host
from .tensor import unwrap


def rows(X):
    """The number of rows of an array-like, or None if it has none (before
    any check: the checks then say what is wrong with it)."""
    X = unwrap(X)
    shape = getattr(X, "shape", None)
    if shape is None and isinstance(X, (list, tuple)):
        return len(X)
    return int(shape[0]) if shape else None


def as_array(X):
    """X itself if a NumPy or CuPy array (or a list, checked later); another
    array object as one of those: a GPU one through DLPack as CuPy, any
    other with __array__ (a torch CPU tensor, a pandas frame) as NumPy."""
    X = unwrap(X)
    if isinstance(X, (np.ndarray, list, tuple)) or is_cupy_array(X):
        return X
    if hasattr(X, "__dlpack_device__") and X.__dlpack_device__()[0] == _DLPACK_CUDA:
        return import_cupy().from_dlpack(X)
    return np.asarray(X) if hasattr(X, "__array__") else X


_DLPACK_CUDA = 2        # DLPack's kDLCUDA device type


def features(X, n_in, device, dtype, argument="X"):
    """X as a (batch, n_in) array of `dtype` on `device`."""
    X = as_array(X)
    _refuse_masked(X, argument)
    if isinstance(X, (list, tuple)):
        X = _from_sequence(X, argument, f"(batch, {n_in})")
    if not hasattr(X, "shape") or not hasattr(X, "dtype"):
        raise TypeError(f"{argument} must be an array of shape (batch, {n_in}); "
                        f"got {type(X).__name__}")
    if np.dtype(X.dtype).kind not in "fiub":
        raise TypeError(f"{argument} must hold real numbers; got dtype {X.dtype}")
    if X.ndim == 1 and n_in == 1:
        X = X.reshape(-1, 1)
    if X.ndim != 2 or X.shape[1] != n_in:
        raise ValueError(f"{argument} must have shape (batch, {n_in}) for a network with "
                         f"{n_in} inputs; got {tuple(X.shape)}")
    if X.shape[0] == 0:
        raise ValueError(f"{argument} is empty: it must hold at least one example")
    return cast_finite(X, device, dtype, argument)


def cast_finite(array, device, dtype, argument):
    """`array` as `dtype` on `device`, checked finite AFTER the cast: a float64
    value beyond float32's range becomes inf in the cast, and that is said
    as an overflow (ValueError naming the argument and the largest value)."""
    with np.errstate(over="ignore", invalid="ignore"):
        cast = device.asarray(array, dtype=dtype)
    if not all_finite(cast):
        raise nonfinite_error(array, dtype, argument)
    return cast


def nonfinite_error(original, dtype, argument):
    """The ValueError for a value that is not finite as `dtype`: an overflow
    when `original` itself is finite, else NaN/inf in the data."""
    if np.dtype(original.dtype).kind == "f" and all_finite(original):
        xp = import_cupy() if is_cupy_array(original) else np
        big = float(to_host(xp.abs(original).max()))
        return ValueError(f"{argument} holds values that overflow {np.dtype(dtype).name} "
                          f"(largest magnitude {big:.4g}; {np.dtype(dtype).name} holds up "
                          f"to {float(np.finfo(dtype).max):.4g})")
    return ValueError(f"{argument} contains NaN or infinite values")


def _from_sequence(seq, argument, shape):
    """A list/tuple as a NumPy array, or a clear error for a ragged one (the
    dtype is checked by the caller)."""
    try:
        return np.asarray(seq)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{argument} must be a rectangular array of shape {shape}; the "
                         f"nested lists given have rows of different lengths ({exc})") from None


def targets(Y, n_out, batch, device, dtype, argument="Y", loss=None):
    """Y as a (batch, n_out) array of `dtype` on `device`.

    Class indices (batch,) are turned into one-hot rows when the network has
    n_out > 1 outputs; (batch, n_out) targets are taken as they are, and for
    the cross-entropy `loss` they must be distributions (check_distributions).
    """
    Y = as_array(Y)
    _refuse_masked(Y, argument)
    if isinstance(Y, (list, tuple)):
        Y = _from_sequence(Y, argument, f"(batch,) or (batch, {n_out})")
    if not hasattr(Y, "shape") or not hasattr(Y, "dtype"):
        raise TypeError(f"{argument} must be an array of class indices (batch,) or targets "
                        f"(batch, {n_out}); got {type(Y).__name__}")
    kind = np.dtype(Y.dtype).kind
    if kind not in "fiub":
        raise TypeError(f"{argument} must hold numbers; got dtype {Y.dtype}")
    if Y.shape[:1] != (batch,):
        raise ValueError(f"{argument} must have {batch} rows, one per row of X; "
                         f"got shape {tuple(Y.shape)}")
    if Y.ndim == 1 and n_out == 1:
        Y = Y.reshape(-1, 1)
    elif Y.ndim == 1:
        return one_hot(Y, n_out, device, dtype, argument)
    if Y.ndim != 2 or Y.shape[1] != n_out:
        raise ValueError(f"{argument} must be class indices (batch,) or targets (batch, {n_out}) "
                         f"for a network with {n_out} outputs; got shape {tuple(Y.shape)}")
    Y = cast_finite(Y, device, dtype, argument)
    if loss is not None and getattr(loss, "name", loss) == "cross_entropy":
        check_distributions(Y, argument)
    return Y


def check_distributions(Y, argument="Y"):
    """Cross-entropy targets given as rows: each non-negative and summing to 1
    (within 1e-6, or a few float32 roundings per column); ValueError naming
    the first bad row.  One read-back when all rows are good."""
    xp = import_cupy() if is_cupy_array(Y) else np
    n_out = Y.shape[1]
    if not Y.size:
        return
    tol = max(1e-6, 4 * n_out * float(np.finfo(Y.dtype).eps))
    # row sums by einsum's own loop and one minimum: a row-wise sum over a few
    # columns is several times slower, and a matrix-vector product wakes
    # NumPy's BLAS threads, which spin on the cores the epoch right after
    # needs where that runs another BLAS (every fit checks its Y; RESULTS.md)
    Y64 = Y.astype(xp.float64, copy=False)
    sums = xp.einsum("ij->i", Y64) if xp is np else Y64 @ xp.ones(n_out, dtype=xp.float64)
    if bool(to_host((Y.min() >= 0) & (xp.abs(sums - 1.0).max() <= tol))):
        return
    bad = (Y < 0).any(axis=1) | (xp.abs(sums - 1.0) > tol)
    i = int(to_host(xp.argmax(bad)))
    row = to_host(Y[i])
    raise ValueError(f"{argument} row {i} is not a probability distribution (sum "
                     f"{float(to_host(sums[i])):.6g}, smallest entry {float(row.min()):.6g}): "
                     f"cross_entropy targets given as rows must be non-negative and sum to 1 "
                     f"(within {tol:.1e}); give class indices (batch,) or one-hot rows")


def _refuse_masked(X, argument):
    """A masked array's mask would be ignored silently by the arithmetic."""
    if isinstance(X, np.ma.MaskedArray):
        raise TypeError(f"{argument} is a masked array, whose mask the network would ignore; "
                        f"pass {argument.split()[-1]}.filled(value) or drop the masked rows")


def _label(value):
    """A label as given: 3 for 3 or 3.0, 1e+20 for a float too large for int64."""
    if isinstance(value, (np.floating, float)) and abs(value) >= 2.0 ** 63:
        return f"{float(value):g}"
    return str(int(value))


def one_hot(labels, n_classes, device, dtype, argument="Y"):
    """(batch,) class indices -> (batch, n_classes) one-hot rows on `device`."""
    host = to_host(labels)
    kind = host.dtype.kind
    if kind == "f":
        if not np.all(np.isfinite(host)) or not np.all(host == np.round(host)):
            raise ValueError(f"{argument} given as class indices must hold whole numbers")
    elif kind not in "iub":
        raise TypeError(f"{argument} class indices must be integers; got dtype {host.dtype}")
    if host.size:      # the range of the values given, before any cast can wrap them
        lo, hi = host.min(), host.max()
        if lo < 0 or hi >= n_classes:
            raise ValueError(f"{argument} holds class labels out of range: expected "
                             f"0..{n_classes - 1} for {n_classes} outputs; got min "
                             f"{_label(lo)}, max {_label(hi)}")
    host = host.astype(np.int64)
    Y = np.zeros((host.shape[0], n_classes), dtype=dtype)
    Y[np.arange(host.shape[0]), host] = 1
    return device.asarray(Y)
