"""The GPU branches of the `cuda` and `fused` backends (what runs on device
kind "cuda": CuPy's RawModule and RawKernel, device contexts, the TF32
include folder, the CuPy element-wise kernels, device attributes), run on a
machine without a GPU: `cupy` is replaced by NumPy plus a RawModule that
builds the source CuPy would get, with the options CuPy would get, on the
cuda-emulator.  What this checks is the launch plumbing of the GPU branch
(sources, -D/-I options, arguments, shared-memory opt-in), against the
float64 reference; what it cannot check is CuPy itself (NVRTC, the driver).
"""
import hashlib
import re
import sys
import types

import numpy as np
import pytest

from gpubackprop import activations, losses
from gpubackprop.backends.base import Hyper
from gpubackprop.device import Device
from gpubackprop.optim import SGD

from emulated import KP, TOL, build_all, forward_ref, needs_emulator, problem, \
    reference_epoch
from reference import rel_err

pytestmark = needs_emulator
OPTIONS = []      # every RawModule's options, in order


class _RawModule:
    """CuPy's RawModule, built by the cuda-emulator from the same text and options."""

    def __init__(self, code, options):
        OPTIONS.append(options)
        self.code = code
        defines = {}
        for o in options:
            m = re.fullmatch(r"-D(\w+)=(.*)", o)
            if m:
                defines[m.group(1)] = m.group(2)
            else:
                assert o.startswith("-I"), o        # only defines and include folders
        self._options = defines

    def compile(self):
        folder = KP.emulator.default_cache() / "fake-cupy-sources"
        folder.mkdir(exist_ok=True)
        path = folder / f"{hashlib.sha256(self.code.encode()).hexdigest()[:16]}.cu"
        path.write_text(self.code)
        self._module = KP.load(path, self._options, "any", Device("cuda-emulator"))

    def get_function(self, name):
        return self._module.get(name)


class _Device:
    compute_capability = "90"
    attributes = {"MaxSharedMemoryPerBlockOptin": KP.MAX_SHARED_OPTIN_BYTES}

    def __init__(self, index=0):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _elementwise(params, outputs, body, name, preamble=""):
    """The three element-wise kernels of gpu_common, with NumPy (the formulas of
    activations.py); the backend's call (argument order, codes) is what counts."""
    names = {code: act for act, code in activations.CODES.items()}

    def sq_delta(a, y, act, d):
        d[...] = 2 * (a - y) * activations.derivative(names[int(act)], a, np)

    def bias_act(b, act, z):
        z[...] = activations.apply(names[int(act)], z + b, np)

    def mul_dsigma(a, act, g):
        g *= activations.derivative(names[int(act)], a, np)

    return {"gpubackprop_sq_delta": sq_delta, "gpubackprop_bias_act": bias_act,
            "gpubackprop_mul_dsigma": mul_dsigma}[name]


@pytest.fixture()
def gpu(monkeypatch):
    """Device("cuda", 0) with the fake CuPy installed."""
    build_all()
    fake = types.ModuleType("cupy")
    fake.__dict__.update({k: getattr(np, k) for k in dir(np) if not k.startswith("__")})
    fake.RawModule = _RawModule
    fake.ElementwiseKernel = _elementwise
    fake.cuda = types.SimpleNamespace(Device=_Device)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    from gpubackprop.backends import gpu_common
    from gpubackprop.kernels import gpu as gpu_seam

    gpu_seam.load.cache_clear()
    gpu_common.elementwise.cache_clear()
    monkeypatch.setattr(sys.modules["gpubackprop.device"], "cuda_include_path",
                        lambda: "/fake/cuda/include")
    OPTIONS.clear()
    yield Device("cuda", 0)
    gpu_seam.load.cache_clear()
    gpu_common.elementwise.cache_clear()


def test_cuda_backend_gpu_branch(gpu):
    from gpubackprop.backends.cuda_backend import CudaBackend

    sizes, acts = [33, 17, 4], ("sigmoid", "sigmoid")
    params, X, Y = problem(sizes, 150, "float32", seed=1)
    hyper = Hyper(acts, losses.get("sse"), 64, lr=0.5, momentum=0.9, weight_decay=1e-3)
    order = np.random.default_rng(0).permutation(150)
    ref, ref_costs, _ = reference_epoch(params, X, Y, order, hyper)
    be = CudaBackend(gpu)
    p = [(W.copy(), b.copy()) for W, b in params]
    costs, _, bad = be.train_epoch(p, SGD(0.5, 0.9, 1e-3).init_state(p), X, Y, order, hyper)
    for (W, b), (W0, b0) in zip(p, ref):
        assert rel_err(W, W0) <= TOL["float32"] and rel_err(b, b0) <= TOL["float32"]
    assert rel_err(costs, ref_costs) <= TOL["float32"] and int(bad) == -1
    assert all(set(KP.options(f, "float32")) <= set(o) for f, o in
               zip(("dense_forward.cu", "delta_propagate.cu", "weight_update.cu"), OPTIONS))
    tf32 = CudaBackend(gpu, tf32=True)
    (W, b), _ = params
    a = tf32.dense_forward(X, W, b, "tanh")
    assert "-I/fake/cuda/include" in OPTIONS[-1]          # the TF32 build's header folder
    assert 1e-6 < rel_err(a, forward_ref(X, W, b, "tanh")) <= 2e-2


def test_fused_backend_gpu_branch_opts_in_to_shared_memory(gpu):
    from gpubackprop.backends.fused_backend import FusedBackend, shared_bytes

    sizes, acts = [20, 128, 5], ("tanh", "softmax")
    assert shared_bytes(sizes, "float64") > 48 * 1024
    params, X, Y = problem(sizes, 70, "float64", seed=2)
    hyper = Hyper(acts, losses.get("cross_entropy"), 64, lr=0.1, momentum=0.5)
    order = np.random.default_rng(0).permutation(70)
    ref, ref_costs, _ = reference_epoch(params, X, Y, order, hyper)
    be = FusedBackend(gpu)
    be.check_network(sizes, acts, "float64")
    p = [(W.copy(), b.copy()) for W, b in params]
    costs, _, _ = be.train_epoch(p, SGD(0.1, 0.5).init_state(p), X, Y, order, hyper)
    for (W, b), (W0, b0) in zip(p, ref):
        assert rel_err(W, W0) <= TOL["float64"] and rel_err(b, b0) <= TOL["float64"]
    assert rel_err(costs, ref_costs) <= TOL["float64"]
