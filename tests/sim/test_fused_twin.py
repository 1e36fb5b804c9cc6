"""The numba.cuda twin of fused_forward (kernels/fused_mlp_numba.py) under
the CUDA simulator, against the float64 NumPy reference backend: thread-level
indexing, barriers and guards of the fused forward on tiny shapes."""
import importlib

import numpy as np
import pytest

from gpubackprop.backends.numba_cuda import numba_kernels, simulator_active
from gpubackprop.backends.numpy_backend import NumpyBackend
from gpubackprop.device import Device

if not simulator_active():
    pytest.skip("numba.cuda runs the real CUDA target in this process; run `pytest tests/sim` "
                "as its own invocation", allow_module_level=True)

numba_kernels()
fm = importlib.import_module("gpubackprop.kernels.fused_mlp_numba")
REF = NumpyBackend(Device("cpu"))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_twin_of_fused_forward(dtype):
    """2 tiles of 64 rows, the last ragged; a 40-wide input staged in two
    32-column chunks; a shuffled gather; softmax on the output."""
    rng = np.random.default_rng(0)
    sizes, acts = [40, 17, 3], ("tanh", "softmax")
    params = [(rng.normal(0, i ** -0.5, (o, i)), rng.normal(0, 0.2, o))
              for i, o in zip(sizes, sizes[1:])]
    X = rng.normal(size=(90, 40))
    idx = rng.permutation(90)[:70]
    out = fm.forward(params, acts, X, idx, dtype=dtype)
    p64 = [(W.astype(dtype).astype(np.float64), b.astype(dtype).astype(np.float64))
           for W, b in params]
    ref = REF.feedforward(p64, acts, X[idx].astype(dtype).astype(np.float64))[1:]
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, r in zip(out, ref):
        assert a.shape == r.shape and a.dtype == dtype
        assert np.linalg.norm(a - r) / np.linalg.norm(r) < tol
