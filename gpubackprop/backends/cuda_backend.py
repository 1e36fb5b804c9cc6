"""The `cuda` backend: the hand-written CUDA C kernels of kernels/.

    dense_forward    kernels/dense_forward.cu      (or dense_forward_tf32.cu, tf32=True)
    delta_propagate  kernels/delta_propagate.cu
    weight_gradient  kernels/weight_update.cu      mode GB_GRADIENT
    train_epoch      the mini-batch loop with weight_update.cu in mode GB_SGD:
                     the gradient fused with the update, dW never written
    output_delta     CuPy element-wise kernels on a GPU; the base class's xp
                     formulas on the emulator

It runs unchanged on a GPU ("cuda": CuPy arrays, NVRTC) and on the
"cuda-emulator" device (NumPy arrays, the same .cu compiled for the CPU):
every kernel is started through the seam `kernels.load(...).get(name)(grid,
block, args)` with the same arguments.  Arrays must be float32 or float64
and activations those of kernels/activations.cuh (anything else, such as an
activation registered in activations.py, takes the base class's xp
formulas); inputs that are not row-major contiguous are copied, an `out`
that is not gets the result copied into it.

TF32: ``CudaBackend(device, tf32=True)`` runs the float32 forward GEMM on
tensor cores (sm_80+; about 1e-3 relative error, as PyTorch's allow_tf32).
If the TF32 kernel cannot be built (NVRTC without crt/mma.h) the backend
warns once and uses the FP32 kernel.
"""
import warnings

import numpy as np

from .. import activations
from ..checks import boolean
from .base import Backend
from .gpu_common import activation_code, cdiv, copy_back, device_unavailable_reason, \
    elementwise, in_kernels, kernels_package, on_device, require_kernel_device, \
    update_partials_bytes, writable_out

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_INT32_MAX = 2**31 - 1


class CudaBackend(Backend):
    """The CUDA C kernels, on a GPU or on the cuda-emulator."""

    name = "cuda"
    device_kinds = ("cuda", "cuda-emulator")
    _FILES = ("dense_forward.cu", "delta_propagate.cu", "weight_update.cu",
              "dense_forward_tf32.cu")

    def __init__(self, device, tf32=False):
        require_kernel_device(device, self.name)
        self.tf32 = boolean("tf32", tf32)
        super().__init__(device)
        self._kp = kernels_package()
        self._gpu = device.kind == "cuda"
        self._tf32_broken = None        # why the TF32 kernel could not be built
        self._partials = {}
        self._prepared = set()          # dtypes whose emulator builds were started together

    def scratch_bytes(self, sizes, batch, dtype):
        """The batch-split partial sums of the weight update (the largest layer's)."""
        return update_partials_bytes(sizes, batch, dtype)

    @classmethod
    def unavailable_reason(cls, device):
        return device_unavailable_reason(device, cls.name)

    # -- helpers -----------------------------------------------------------
    def _kernel(self, file, dtype, name, include_dirs=()):
        dtype = str(np.dtype(dtype))
        if not self._gpu and dtype not in self._prepared:    # first use: build all at once
            self._prepared.add(dtype)
            files = [f for f in self._FILES if dtype in self._kp.DTYPES[f]
                     and (self.tf32 or "tf32" not in f)]
            self._kp.emulator.build_many([(f, self._kp.defines(f, dtype), dtype) for f in files])
        module = self._kp.load(file, None, dtype, self.device, include_dirs=include_dirs)
        return module.get(name)

    def _supported(self, *arrays):
        dt = arrays[0].dtype
        return dt in _FLOATS and all(a.dtype == dt for a in arrays) and \
            all(s <= _INT32_MAX for a in arrays for s in a.shape)

    def _contiguous(self, *arrays):
        return tuple(self.xp.ascontiguousarray(a) for a in arrays)

    def _tf32_kernel(self, dtype):
        """dense_forward_tf32, or None (tf32 off, not float32, an older GPU, or
        the kernel failed to build: one warning, then the FP32 kernel)."""
        if not self.tf32 or dtype != np.float32 or self._tf32_broken:
            return None
        include = ()
        if self._gpu:
            cc = int(self.xp.cuda.Device(self.device.index or 0).compute_capability)
            if cc < self._kp.MIN_ARCH["dense_forward_tf32.cu"]:
                return None
            from ..device import cuda_include_path

            path = cuda_include_path()
            include = (path,) if path else ()
        try:
            return self._kernel("dense_forward_tf32.cu", dtype, "dense_forward_tf32", include)
        except Exception as exc:  # NVRTC or the C++ compiler refused it
            self._tf32_broken = str(exc).splitlines()[0]
            warnings.warn(f"backend 'cuda': the TF32 kernel could not be built "
                          f"({self._tf32_broken}); using the FP32 kernel", RuntimeWarning,
                          stacklevel=3)
            return None

    # -- the contract ----------------------------------------------------------
    def dense_forward(self, a_prev, W, b, activation, out=None):
        if not (self._supported(a_prev, W, b) and in_kernels(activation)):
            return super().dense_forward(a_prev, W, b, activation, out=out)
        xp = self.xp
        with on_device(self.device):
            a_prev, W, b = self._contiguous(a_prev, W, b)
            M, K = a_prev.shape
            N = W.shape[0]
            dt = a_prev.dtype
            buf, copy = writable_out(out, (M, N), dt, xp)
            code = activation_code("identity" if activation == "softmax" else activation)
            if M and N:
                args = (a_prev, W, b, buf, np.int32(M), np.int32(N), np.int32(K), np.int32(code))
                fn = self._tf32_kernel(dt)
                if fn is not None:
                    t = self._kp.TF32_TILES
                    fn((cdiv(M, t["TC_TILE_M"]), cdiv(N, t["TC_TILE_N"])),
                       (self._kp.TF32_THREADS,), args)
                else:
                    t = self._kp.GEMM_TILES[str(dt)]
                    fn = self._kernel("dense_forward.cu", dt, "dense_forward")
                    fn((cdiv(M, t["TILE_M"]), cdiv(N, t["TILE_N"])),
                       (self._kp.gemm_threads(dt),), args)
            if activation == "softmax":
                activations.apply("softmax", buf, xp, out=buf)
            return copy_back(buf, out, copy)

    def output_delta(self, a, y, loss, activation, out=None):
        if not self._gpu or loss.name == "cross_entropy" or activation == "softmax" \
                or not (self._supported(a) and in_kernels(activation)):
            return super().output_delta(a, y, loss, activation, out=out)
        cp = self.xp
        with on_device(self.device):           # delta = 2 (a - y) sigma'(a) in one kernel
            y = cp.asarray(y, dtype=a.dtype)
            out = cp.empty_like(a) if out is None else out
            elementwise().sq_delta(a, y, activation_code(activation), out)
            return out

    def delta_propagate(self, delta, W, a_prev, activation, out=None):
        if not (self._supported(delta, W, a_prev) and in_kernels(activation)):
            return super().delta_propagate(delta, W, a_prev, activation, out=out)
        with on_device(self.device):
            delta, W, a_prev = self._contiguous(delta, W, a_prev)
            M, K = delta.shape
            N = W.shape[1]
            dt = delta.dtype
            buf, copy = writable_out(out, (M, N), dt, self.xp)
            if M and N:
                t = self._kp.GEMM_TILES[str(dt)]
                fn = self._kernel("delta_propagate.cu", dt, "delta_propagate")
                fn((cdiv(M, t["TILE_M"]), cdiv(N, t["TILE_N"])), (self._kp.gemm_threads(dt),),
                   (delta, W, a_prev, buf, np.int32(M), np.int32(N), np.int32(K),
                    np.int32(activation_code(activation))))
            return copy_back(buf, out, copy)

    def weight_gradient(self, delta, a_prev, scale, dW=None, db=None):
        if not self._supported(delta, a_prev):
            return super().weight_gradient(delta, a_prev, scale, dW=dW, db=db)
        xp = self.xp
        with on_device(self.device):
            delta, a_prev = self._contiguous(delta, a_prev)
            n_out, n_in = delta.shape[1], a_prev.shape[1]
            wbuf, wcopy = writable_out(dW, (n_out, n_in), delta.dtype, xp)
            bbuf, bcopy = writable_out(db, (n_out,), delta.dtype, xp)
            # the pointers mode GRADIENT never reads get the output buffers
            self._launch_update(delta, a_prev, wbuf, wbuf, wbuf, bbuf, bbuf, bbuf,
                                scale, 0.0, 0.0, 0.0, self._kp.UPDATE_MODES["GB_GRADIENT"])
            return copy_back(wbuf, dW, wcopy), copy_back(bbuf, db, bcopy)

    def _partial_buffer(self, n, dtype):
        """Scratch for the batch-split partial sums (grown, never shrunk)."""
        buf = self._partials.get(str(dtype))
        if buf is None or buf.size < n:
            buf = self._partials[str(dtype)] = self.xp.empty(n, dtype=dtype)
        return buf

    def _launch_update(self, delta, a_prev, W, vW, dW, b, vb, db, scale, lr, momentum,
                       weight_decay, mode):
        """weight_update + bias_update (+ update_reduce when the batch is split)."""
        B, N = delta.shape
        K = a_prev.shape[1]
        if not (N and K):
            return
        dt = delta.dtype
        s = dt.type
        t = self._kp.GEMM_TILES[str(dt)]
        chunks, rows = self._kp.update_chunks(B, N, K, dt)
        part = self._partial_buffer(chunks * (N * K + N), dt) if chunks > 1 else dW
        hyper = (s(scale), s(lr), s(momentum), s(weight_decay), np.int32(mode))
        sizes = (np.int32(B), np.int32(N), np.int32(K), np.int32(rows))
        self._kernel("weight_update.cu", dt, "weight_update")(
            (cdiv(N, t["TILE_M"]), cdiv(K, t["TILE_N"]), chunks), (self._kp.gemm_threads(dt),),
            (delta, a_prev, W, vW, dW, part, *sizes, *hyper))
        self._kernel("weight_update.cu", dt, "bias_update")(
            (cdiv(N, 32), chunks), (32, self._kp.BIAS_ROWS), (delta, b, vb, db, part, *sizes, *hyper))
        if chunks > 1:
            P = N * K + N
            self._kernel("weight_update.cu", dt, "update_reduce")(
                (min(cdiv(P, self._kp.REDUCE_THREADS), self._kp.REDUCE_MAX_BLOCKS),),
                (self._kp.REDUCE_THREADS,),
                (part, np.int32(chunks), W, vW, dW, b, vb, db, np.int32(N), np.int32(K), *hyper))

    # -- the fast path: the loop with the update fused into the gradient kernels --------
    def fuses(self, hyper):
        """The fused update is plain SGD with momentum and weight decay: any hyper."""
        return True

    def train_epoch(self, params, state, X, Y, order, hyper):
        xp, bs, loss, acts = self.xp, hyper.batch_size, hyper.loss, hyper.activations
        n_steps = cdiv(len(order), bs)
        sizes = [params[0][0].shape[1]] + [W.shape[0] for W, _ in params]
        ws = self.workspace(sizes, bs, X.dtype)
        step_costs = xp.empty(n_steps, dtype=X.dtype)
        n_correct = xp.zeros((), dtype=xp.int64)
        with on_device(self.device):
            for s in range(n_steps):
                idx = order[s * bs:(s + 1) * bs]
                x, y, a_out, delta_out = ws.rows(len(idx))
                xp.take(X, idx, axis=0, out=x)
                xp.take(Y, idx, axis=0, out=y)
                a = self.feedforward(params, acts, x, out=a_out)
                step_costs[s] = loss.total(a[-1], y, acts[-1], xp)
                n_correct += (a[-1].argmax(axis=1) == y.argmax(axis=1)).sum()
                delta = self.backward(params, acts, a, y, loss, out=delta_out)
                scale = hyper.scale(len(idx), sizes[-1])
                for l, ((W, b), (vW, vb)) in enumerate(zip(params, state.velocities)):
                    self._sgd_layer(W, b, vW, vb, delta[l], a[l], scale, hyper)
        finite = xp.isfinite(step_costs)
        bad_step = xp.where(finite.all(), -1, xp.argmin(finite))
        return step_costs, n_correct, bad_step

    def _sgd_layer(self, W, b, vW, vb, delta, a_prev, scale, hyper):
        """One layer's SGD update from its delta, fused (GB_SGD) when the arrays allow."""
        mu, wd, lr = hyper.momentum, hyper.weight_decay, hyper.lr
        params = (W, b) + ((vW, vb) if mu else ())
        if self._supported(delta, a_prev, *params) and all(p.flags.c_contiguous for p in params):
            delta, a_prev = self._contiguous(delta, a_prev)
            vW, vb = (vW, vb) if mu else (W, b)      # never read without momentum
            self._launch_update(delta, a_prev, W, vW, W, b, vb, b, scale, lr, mu, wd,
                                self._kp.UPDATE_MODES["GB_SGD"])
            return
        dW, db = Backend.weight_gradient(self, delta, a_prev, scale)
        for p, g, v in ((W, dW, vW), (b, db, vb)):   # optim.SGD.step's formulas
            g = g + wd * p if wd else g
            if mu:
                v *= mu
                v += g
                g = v
            p -= lr * g
