"""Test set-up shared by every test module.

Without a GPU, numba.cuda kernels run under the CUDA simulator; the switch
must be set before numba is first imported, so it is set here, at the very
start of the session.  On a machine with a GPU nothing is changed.
"""
import os
import shutil


def _gpu_present():
    return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


if "NUMBA_ENABLE_CUDASIM" not in os.environ and not _gpu_present():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"


def rel_err(x, ref):
    """max |x - ref| / max |ref| (relative to the reference's scale), computed
    in float64 on the host; x and ref may be NumPy, CuPy or Tensors."""
    import numpy as np

    def host(a):
        if hasattr(a, "numpy"):        # a gpubackprop.Tensor
            a = a.numpy()
        if hasattr(a, "get"):          # a CuPy array
            a = a.get()
        return np.asarray(a, dtype=np.float64)

    x, ref = host(x), host(ref)
    scale = max(np.abs(ref).max(initial=0.0), np.finfo(np.float64).tiny)
    return float(np.abs(x - ref).max(initial=0.0) / scale)
