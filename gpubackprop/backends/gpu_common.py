"""What the GPU backends share (cupy, cuda, fused, numba on a GPU): no backend
imports another backend, they all import this.

    kernels_package()   the gpubackprop.kernels package (kernels/ of a checkout)
    activation_code     an activation's integer code (activations.CODES)
    copy_back           a kernel's stand-in output copied into the caller's `out`
    writable_out        the buffer a kernel writes into for an optional `out`
    on_device(device)   the CuPy device context (nothing on the emulator)
    device_unavailable_reason   why a device cannot run the CUDA C kernels
    pointer(array)      the address a pointer table holds (CuPy or NumPy array)
    elementwise()       the CuPy element-wise kernels (activations.cuh as preamble)

CuPy is imported lazily: importing this module needs no GPU and no CuPy.
"""
import contextlib
import functools

from .. import activations
from ..device import import_cupy


def kernels_package():
    """The `gpubackprop.kernels` package (the top-level kernels/ folder of a
    source checkout, shipped inside the wheel as gpubackprop.kernels)."""
    import importlib
    import importlib.util
    import pathlib
    import sys

    try:
        module = importlib.import_module("gpubackprop.kernels")
    except ImportError:
        # a source checkout run without installing: kernels/ sits next to gpubackprop/
        root = pathlib.Path(__file__).resolve().parents[2] / "kernels"
        init = root / "__init__.py"
        if not init.is_file():
            raise ImportError(f"gpubackprop.kernels not found (looked for {init})") from None
        spec = importlib.util.spec_from_file_location(
            "gpubackprop.kernels", init, submodule_search_locations=[str(root)])
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpubackprop.kernels"] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules["gpubackprop.kernels"]
            raise
    importlib.import_module("gpubackprop.kernels.emulator")
    return module


def device_unavailable_reason(device, name):
    """None if `device` can run the CUDA C kernels, else why not (shared by the
    backends that launch them: the reason the device layer gives)."""
    if device.kind == "cuda":
        from ..device import cuda_status

        n, why = cuda_status()
        return None if n else why
    if device.kind == "cuda-emulator":
        from ..device import emulator_status

        return emulator_status()[1] or None
    return _wrong_device(device, name)


def require_kernel_device(device, name):
    """ValueError unless `device` runs the CUDA C kernels (a GPU or the cuda-emulator)."""
    if device.kind not in ("cuda", "cuda-emulator"):
        raise ValueError(_wrong_device(device, name))


def _wrong_device(device, name):
    return f"backend {name!r} runs on cuda or cuda-emulator devices, not on {device}"


def cdiv(a, b):
    """ceil(a / b) for positive ints."""
    return -(-a // b)


def in_kernels(activation):
    """True if the CUDA C kernels implement `activation` (kernels/activations.cuh)."""
    return activation in _kernel_activations()


@functools.lru_cache(maxsize=1)
def _kernel_activations():
    return kernels_package().kernel_activations()


def activation_code(activation):
    """The integer code of an element-wise activation (activations.CODES);
    ValueError for one the CUDA C kernels do not implement."""
    if not in_kernels(activation):
        raise ValueError(f"activation {activation!r} has no CUDA C form in "
                         f"kernels/activations.cuh (it has {sorted(_kernel_activations())})")
    return activations.CODES[activation]


def copy_back(buf, out, copied):
    """The result of a kernel that wrote into `buf` for the caller's `out`:
    `out`, filled from `buf`, when `buf` was a stand-in (`copied`), else `buf`."""
    if copied:
        out[...] = buf
        return out
    return buf


def writable_out(out, shape, dtype, xp):
    """(buffer to compute into, whether it must be copied into `out`): `out`
    itself when it is C-contiguous of `dtype`, else a fresh array."""
    if out is None:
        return xp.empty(shape, dtype=dtype), False
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out has shape {tuple(out.shape)}, expected {tuple(shape)}")
    if out.dtype == dtype and out.flags.c_contiguous:
        return out, False
    return xp.empty(shape, dtype=dtype), True


def on_device(device):
    """The context that makes `device` current: CuPy's on a GPU, none on the emulator."""
    if device.kind == "cuda":
        return import_cupy().cuda.Device(device.index)
    return contextlib.nullcontext()


def pointer(array):
    """The address of `array`'s data, as a kernel's pointer table stores it."""
    if array is None:
        return 0
    data = getattr(array, "data", None)
    if hasattr(data, "ptr"):            # cupy.ndarray
        return int(data.ptr)
    return int(array.ctypes.data)       # numpy.ndarray (cuda-emulator)


def preamble():
    """activations.cuh with the activation codes defined ahead of it (the text
    the CuPy element-wise kernels are compiled with)."""
    kp = kernels_package()
    defines = "".join(f"#define {k} {v}\n" for k, v in kp.activation_defines().items())
    return defines + kp.source("activations.cuh")


@functools.lru_cache(maxsize=None)
def elementwise():
    """The fused CuPy element-wise kernels (built once; CuPy compiles each per
    dtype on first use and caches the binary on disk).  GPU only."""
    cp = import_cupy()
    text = preamble()

    class K:
        pass

    k = K()
    # a = sigma(z + b); b (n_out,) broadcasts over the batch rows
    k.bias_act = cp.ElementwiseKernel(
        "T b, int32 act", "T z", "z = gb_sigma<T>(z + b, act)",
        "gpubackprop_bias_act", preamble=text)
    # delta_L = 2 (a - y) sigma'(a): the squared costs' output error
    k.sq_delta = cp.ElementwiseKernel(
        "T a, T y, int32 act", "T d", "d = (T)2 * (a - y) * gb_dsigma_from_a<T>(a, act)",
        "gpubackprop_sq_delta", preamble=text)
    # g *= sigma'(a): delta propagation's epilogue
    k.mul_dsigma = cp.ElementwiseKernel(
        "T a, int32 act", "T g", "g = g * gb_dsigma_from_a<T>(a, act)",
        "gpubackprop_mul_dsigma", preamble=text)
    return k


def update_partials_bytes(sizes, batch, dtype):
    """Bytes of the largest batch-split partial-sum buffer that weight_update.cu
    (and its numba.cuda twin) need for a network of layer `sizes` at `batch`
    rows: one (n_out x n_in + n_out) partial per chunk, when a layer splits."""
    import numpy as np

    kp = kernels_package()
    parts = [chunks * (o * i + o) for i, o in zip(sizes, sizes[1:])
             for chunks, _ in [kp.update_chunks(batch, o, i, np.dtype(dtype).name)]
             if chunks > 1]
    return max(parts, default=0) * np.dtype(dtype).itemsize
