"""The `numba` backend on a GPU: the numba.cuda twins of the CUDA C kernels
(kernels/numba_kernels.py), same algorithms, layouts and launch shapes.

The four ops of the contract; the trainer's loop does the rest (its SGD step
runs with CuPy).  dense_forward, delta_propagate and weight_gradient launch
the tiled kernels; output_delta is element-wise and runs the reference
formula with CuPy.

On a CUDA device it launches on CuPy arrays: each array is wrapped with
``numba.cuda.as_cuda_array(x, sync=False)`` (a view through the CUDA Array
Interface, no copy, no stream sync) and the kernels run on CuPy's current
stream (wrapped with ``numba.cuda.external_stream``), so they order correctly
with CuPy's own kernels.

Simulator mode, for tests on machines without a GPU: when numba.cuda is the
CUDA simulator in this process (NUMBA_ENABLE_CUDASIM=1 set before numba.cuda
was first imported), construct the backend with a CPU Device; it then works on
NumPy arrays (xp = numpy) and the very same kernel code runs in the
simulator (slow: only for tiny shapes).  On a CPU Device without the
simulator, or on a CUDA device with it, the constructor raises RuntimeError
saying why.  `device_kinds` stays ("cuda",): that is where the backend is
meant to run; simulator mode is a testing aid, not a CPU backend.
"""
import contextlib
import functools
import importlib

import numpy as np

from .base import Backend
from .gpu_common import activation_code, copy_back, kernels_package, update_partials_bytes

GRADIENT = 0      # weight_update / bias_update mode: write dW, db


def numba_kernels():
    """The module kernels/numba_kernels.py (importing it applies the NumPy
    shim numba-cuda needs; see there)."""
    kernels_package()
    return importlib.import_module("gpubackprop.kernels.numba_kernels")


def simulator_active():
    """Whether `numba.cuda`, as imported in this process, is the CUDA simulator."""
    return numba_kernels().simulator_active()


@functools.lru_cache(maxsize=None)
def _probe(cc):
    """None if numba.cuda compiles a tiny kernel to PTX for `cc`, else why not
    (cached: one probe per compute capability and process)."""
    try:
        numba_kernels().probe_ptx(cc)
    except Exception as exc:  # AttributeError (NumPy/numba-cuda), NVVM missing, ...
        return (f"numba.cuda cannot compile a kernel for sm_{cc[0]}{cc[1]}: "
                f"{type(exc).__name__}: {exc}")
    return None


class NumbaCudaBackend(Backend):
    """numba.cuda kernels on CuPy arrays (or on NumPy arrays in the simulator)."""

    name = "numba"
    device_kinds = ("cuda",)

    def __init__(self, device):
        try:
            nk = numba_kernels()
        except Exception as exc:  # numba-cuda missing or broken
            raise RuntimeError(f"the numba backend needs numba.cuda (pip install numba-cuda); "
                               f"importing it failed: {exc}") from exc
        self.simulator = nk.simulator_active()
        if device.kind != "cuda" and not self.simulator:
            raise RuntimeError(
                "the numba backend runs on CUDA devices; on the CPU it only runs under the "
                "CUDA simulator (set NUMBA_ENABLE_CUDASIM=1 before numba is imported), "
                "which is meant for tests")
        if device.kind == "cuda" and self.simulator:
            raise RuntimeError(
                "numba.cuda is the CUDA simulator in this process (NUMBA_ENABLE_CUDASIM=1), "
                "which runs on NumPy arrays only: use device='cpu' for simulator tests, or "
                "unset NUMBA_ENABLE_CUDASIM to run on the GPU")
        super().__init__(device)       # xp: numpy (simulator) or cupy
        self._nk = nk
        self._cuda = nk.cuda
        self._kp = kernels_package()

    def scratch_bytes(self, sizes, batch, dtype):
        """The batch-split partial sums of the weight update (the largest layer's)."""
        return update_partials_bytes(sizes, batch, dtype)

    @classmethod
    def unavailable_reason(cls, device):
        """None when the kernels can run on `device`, else why not: a CUDA
        device, numba.cuda importable and not the simulator, and a tiny
        kernel compiled to PTX for the device's compute capability."""
        if device.kind != "cuda":
            return f"the numba GPU backend runs on CUDA devices, not on {device}"
        from ..device import cuda_status

        n, why = cuda_status()
        if not n:
            return why
        try:
            nk = numba_kernels()
        except Exception as exc:
            return f"numba.cuda could not be imported ({exc}); pip install numba-cuda"
        if nk.simulator_active():
            return ("numba.cuda is the CUDA simulator in this process "
                    "(NUMBA_ENABLE_CUDASIM=1), which cannot run on GPU arrays")
        cc = device.xp.cuda.Device(device.index).compute_capability
        reason = _probe((int(cc[:-1]), int(cc[-1])))
        if reason is None and not nk.cuda.is_available():
            reason = "numba.cuda finds no usable GPU (its driver check failed)"
        return reason

    # -- launching -----------------------------------------------------------
    def _dev(self, x):
        """An array the kernels accept: NumPy as is (simulator), CuPy as a
        numba device-array view without a stream sync."""
        if self.simulator:
            return x
        return self._cuda.as_cuda_array(x, sync=False)

    @contextlib.contextmanager
    def _launch(self):
        """The stream to launch on: CuPy's current stream of our GPU."""
        if self.simulator:
            yield 0
            return
        cp = self.xp
        with cp.cuda.Device(self.device.index), self._cuda.gpus[self.device.index]:
            ptr = cp.cuda.get_current_stream().ptr
            yield self._cuda.external_stream(ptr) if ptr else self._cuda.default_stream()

    def _run(self, k, name, grid, block, *args):
        """Launch kernel `name` of `k` on CuPy's current stream, after the checks
        an sm_90 GPU makes (kernels.check_launch: grid.y <= 65535, ...), so a
        launch the GPU would refuse fails here too, naming the kernel."""
        self._kp.check_launch(f"{name} (numba)", grid, block, 0, 0)
        args = [self._dev(a) if getattr(a, "ndim", 0) else a for a in args]
        with self._launch() as stream:
            getattr(k, name)[grid, block, stream](*args)

    def _kernels(self, dtype):
        dt = np.dtype(dtype)
        if dt not in (np.float32, np.float64):
            raise TypeError(f"the numba backend runs float32 and float64 arrays, not {dt}")
        return self._nk.kernels(dt)

    def _out(self, out, shape, dtype):
        """(buffer the kernel writes, whether it is a stand-in for `out`)."""
        xp = self.xp
        if out is None:
            return xp.empty(shape, dtype=dtype), False
        if tuple(out.shape) != tuple(shape):
            raise ValueError(f"out has shape {tuple(out.shape)}, expected {tuple(shape)}")
        contiguous = out.flags.c_contiguous
        return (out, False) if out.dtype == dtype and contiguous \
            else (xp.empty(shape, dtype=dtype), True)

    def _in(self, x):
        """A row-major contiguous array the kernels can index (the launchers
        assume it, as the .cu ones do)."""
        return x if x.flags.c_contiguous else self.xp.ascontiguousarray(x)

    # -- the contract ----------------------------------------------------------
    def dense_forward(self, a_prev, W, b, activation, out=None):
        a_prev, W, b = self._in(a_prev), self._in(W), self._in(b)
        M, N = a_prev.shape[0], W.shape[0]
        buf, copy = self._out(out, (M, N), a_prev.dtype)
        code = activation_code("identity" if activation == "softmax" else activation)
        if M and N:
            k = self._kernels(a_prev.dtype)
            self._run(k, "dense_forward", k.gemm_grid(M, N), k.threads, a_prev, W, b, buf, code)
        if activation == "softmax":
            from .. import activations

            activations.apply("softmax", buf, self.xp, out=buf)
        return copy_back(buf, out, copy)

    def delta_propagate(self, delta, W, a_prev, activation, out=None):
        delta, W, a_prev = self._in(delta), self._in(W), self._in(a_prev)
        M, N = delta.shape[0], W.shape[1]
        buf, copy = self._out(out, (M, N), delta.dtype)
        if M and N:
            k = self._kernels(delta.dtype)
            self._run(k, "delta_propagate", k.gemm_grid(M, N), k.threads, delta, W, a_prev, buf,
                      activation_code(activation))
        return copy_back(buf, out, copy)

    def _unused(self, dtype):
        """Placeholders for the arrays mode GRADIENT never touches (W, vW, b,
        vb).  Not aliases of the used arrays: the simulator copies NumPy
        arguments in and back out one by one, so an alias would overwrite the
        result with a stale copy."""
        xp = self.xp
        return xp.empty((1, 1), dtype=dtype), xp.empty((1,), dtype=dtype)

    def weight_gradient(self, delta, a_prev, scale, dW=None, db=None):
        delta, a_prev = self._in(delta), self._in(a_prev)
        B, n_out, n_in = delta.shape[0], delta.shape[1], a_prev.shape[1]
        wbuf, wcopy = self._out(dW, (n_out, n_in), delta.dtype)
        bbuf, bcopy = self._out(db, (n_out,), delta.dtype)
        u2, u1 = self._unused(delta.dtype)
        k = self._kernels(delta.dtype)
        s = delta.dtype.type
        hyper = (s(scale), s(0), s(0), s(0), GRADIENT)
        # the batch split of weight_update.cu: enough blocks to fill the GPU
        chunks, rows = self._kp.update_chunks(B, n_out, n_in, delta.dtype.name) \
            if n_out and n_in else (1, max(B, 1))
        part = self.xp.empty((chunks, n_out * n_in + n_out), delta.dtype) if chunks > 1 \
            else u2
        rows = np.int32(rows)
        if n_out and n_in:                    # B == 0: the kernels write zero sums
            self._run(k, "weight_update", k.update_grid(n_out, n_in, chunks), k.threads,
                      delta, a_prev, u2, u2, wbuf, part, rows, *hyper)
        if n_out:
            self._run(k, "bias_update", k.bias_grid(n_out, chunks), k.bias_block, delta, u1,
                      u1, bbuf, part, rows, *hyper)
        if chunks > 1:
            self._run(k, "update_reduce", k.reduce_grid(part.shape[1]), k.reduce_threads,
                      part, u2, u2, wbuf, u1, u1, bbuf, np.int32(n_out), np.int32(n_in),
                      *hyper)
        return copy_back(wbuf, dW, wcopy), copy_back(bbuf, db, bcopy)
