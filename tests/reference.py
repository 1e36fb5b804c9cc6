"""Helpers every test file shares (imported as `from reference import rel_err`;
a conftest.py cannot be imported by name once tests/sim has its own)."""
import numpy as np


def rel_err(x, ref):
    """max |x - ref| / max |ref| (relative to the reference's scale), computed
    in float64 on the host; x and ref may be NumPy, CuPy or Tensors."""
    def host(a):
        if hasattr(a, "numpy"):        # a gpubackprop.Tensor
            a = a.numpy()
        if hasattr(a, "get"):          # a CuPy array
            a = a.get()
        return np.asarray(a, dtype=np.float64)

    x, ref = host(x), host(ref)
    scale = max(np.abs(ref).max(initial=0.0), np.finfo(np.float64).tiny)
    return float(np.abs(x - ref).max(initial=0.0) / scale)
