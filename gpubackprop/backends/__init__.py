"""Backends: one file each, behind the small contract of base.py.

    numpy  the reference (CPU)                    backends/numpy_backend.py
    numba  CPU: a Numba-compiled SGD epoch        backends/numba_cpu.py
           GPU: the kernels written in numba.cuda  backends/numba_cuda.py
    cupy   GPU: cuBLAS + fused element-wise        backends/cupy_backend.py
    cuda   GPU: hand-written CUDA C kernels        backends/cuda_backend.py
    fused  GPU: the whole narrow MLP in one kernel  backends/fused_backend.py
    auto   the fastest correct one for the device (the rule: AUTO below)

The cuda and fused backends also run on the "cuda-emulator" device (the same
CUDA C, compiled for the CPU).  Modules are imported only when their backend
is asked for, so a missing optional dependency (CuPy, numba's CUDA target)
only affects that backend.  Options are arguments of the backend's class,
passed as `MLP(..., backend="cuda", backend_options={"tf32": True})`.

Adding a backend is adding a file and one line per device kind to REGISTRY.
"""
import importlib

from ..checks import choice

NAMES = ("auto", "numpy", "numba", "cupy", "cuda", "fused")

#: (name, device kind) -> "module:Class"
REGISTRY = {
    ("numpy", "cpu"): "numpy_backend:NumpyBackend",
    ("numba", "cpu"): "numba_cpu:NumbaCPUBackend",
    ("numba", "cuda"): "numba_cuda:NumbaCudaBackend",
    ("cupy", "cuda"): "cupy_backend:CupyBackend",
    ("cuda", "cuda"): "cuda_backend:CudaBackend",
    ("fused", "cuda"): "fused_backend:FusedBackend",
    ("cuda", "cuda-emulator"): "cuda_backend:CudaBackend",
    ("fused", "cuda-emulator"): "fused_backend:FusedBackend",
}

#: what "auto" picks, first usable wins; why: AUTO_REASONS
AUTO = {"cpu": ("numba", "numpy"), "cuda": ("cupy", "cuda", "numba"),
        "cuda-emulator": ("cuda",)}
#: the rule of AUTO in one sentence per device kind (`gpubackprop info` prints it)
AUTO_REASONS = {
    "cpu": "numba: its compiled epoch, or the trainer's loop on its ops where that is "
           "faster, measured once per shape on this machine (autotune.py)",
    "cuda": "cupy until the hand-written kernels are measured on a GPU (its slowest step "
            "is a cuBLAS GEMM, which uses the whole GPU at any shape)",
    "cuda-emulator": "cuda: the hand-written CUDA C kernels the emulator exists to run",
}


def _load(name, kind):
    module, cls = REGISTRY[(name, kind)].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def unavailable_reason(name, device):
    """None if backend `name` can run on `device`, else a sentence saying why not."""
    if (name, device.kind) not in REGISTRY:
        kinds = sorted(k for n, k in REGISTRY if n == name)
        return f"backend {name!r} runs on {' or '.join(kinds)} devices, not on {device}"
    try:
        cls = _load(name, device.kind)
    except Exception as exc:  # missing optional dependency
        return f"backend {name!r} could not be loaded: {exc}"
    return cls.unavailable_reason(device)


def create(name, device, options=None):
    """A backend instance for `device`; "auto" (or None) picks one by AUTO.
    `options` (a dict) are keyword arguments of the backend's class."""
    name = choice("backend", "auto" if name is None else name, NAMES)
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"backend_options must be a dict of keyword arguments; "
                        f"got {type(options).__name__}")
    if name == "auto":
        for candidate in AUTO[device.kind]:
            if unavailable_reason(candidate, device) is None:
                name = candidate
                break
        else:
            raise RuntimeError(f"no backend can run on {device}: "
                               + "; ".join(f"{n}: {unavailable_reason(n, device)}"
                                           for n in AUTO[device.kind]))
    reason = unavailable_reason(name, device)
    if reason is not None:
        raise ValueError(reason) if "runs on" in reason else RuntimeError(reason)
    cls = _load(name, device.kind)
    try:
        return cls(device, **(options or {}))
    except TypeError as exc:
        raise TypeError(f"backend_options {options!r} do not fit backend {name!r}: {exc}") \
            from None


def available(device):
    """{backend name: None if usable on device, else the reason}."""
    return {n: unavailable_reason(n, device) for n in NAMES[1:]
            if (n, device.kind) in REGISTRY}
