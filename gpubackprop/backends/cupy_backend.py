"""The CuPy backend: cuBLAS GEMMs plus fused element-wise epilogues.

Every op is one cuBLAS call (through cupy) followed by at most one
element-wise CuPy kernel, so each element-wise stage reads and writes the
data once:

    dense_forward    z = a_prev @ W.T (cuBLAS), then one kernel a = sigma(z + b)
                     in place (bias broadcast + activation fused)
    output_delta     one kernel delta = 2 (a - y) * sigma'(a)   (sse / mse)
                     or delta = a - y (cross entropy with a softmax output)
    delta_propagate  g = delta @ W (cuBLAS), then one kernel g *= sigma'(a_prev)
    weight_gradient  dW = scale * delta.T @ a_prev (cuBLAS gemm, scale as alpha),
                     db = scale * delta.sum(0) (one reduction kernel over B x n_out)

The activation formulas are the device functions of kernels/activations.cuh
(the same file the CUDA C kernels include), used as the preamble of the
element-wise kernels (gpu_common.elementwise), so this backend and the `cuda`
one cannot drift apart.  The SGD update is optim.SGD.step, written with xp.

CuPy is imported lazily (Device.xp / import_cupy): importing this module needs
no GPU and no CuPy.
"""
from .. import activations
from .base import Backend
from .gpu_common import activation_code, copy_back, elementwise, kernels_package, \
    on_device, writable_out

__all__ = ["CupyBackend", "activation_code", "copy_back", "kernels_package"]


class CupyBackend(Backend):
    """cuBLAS (via cupy) plus fused element-wise kernels; arrays are CuPy arrays."""

    name = "cupy"
    device_kinds = ("cuda",)

    def __init__(self, device):
        super().__init__(device)   # self.xp = cupy (raises RuntimeError without CuPy)
        self._cp = self.xp

    @classmethod
    def unavailable_reason(cls, device):
        """None when CuPy sees a GPU, else why not (backends.unavailable_reason)."""
        from ..device import cuda_status

        n, why = cuda_status()
        return None if n else why

    # -- helpers -----------------------------------------------------------
    def _on_device(self):
        return on_device(self.device)

    def _gemm(self, transa, transb, a, b, out, alpha=1.0):
        """out = alpha * op(a) @ op(b) on cuBLAS; out must be C-contiguous."""
        cp = self._cp
        try:
            from cupy import cublas
        except ImportError:  # very old CuPy: matmul, then scale
            x = a.T if transa == "T" else a
            y = b.T if transb == "T" else b
            cp.matmul(x, y, out=out)
            if alpha != 1.0:
                out *= alpha
            return out
        return cublas.gemm(transa, transb, a, b, out=out, alpha=alpha, beta=0.0)

    _writable_out = staticmethod(writable_out)

    # -- the contract --------------------------------------------------------
    def dense_forward(self, a_prev, W, b, activation, out=None):
        cp = self._cp
        with self._on_device():
            z = cp.matmul(a_prev, W.T, out=out)                       # cuBLAS
            if activation == "softmax":
                z += b
                return activations.apply("softmax", z, cp, out=z)
            elementwise().bias_act(b, activation_code(activation), z)  # z = sigma(z + b)
            return z

    def output_delta(self, a, y, loss, activation, out=None):
        cp = self._cp
        with self._on_device():
            y = cp.asarray(y, dtype=a.dtype)
            if loss.name == "cross_entropy":
                p = loss.probabilities(a, activation, cp)            # a itself for softmax
                return cp.subtract(p, y, out=out)
            if activation == "softmax":                              # a Jacobian: reference path
                delta = activations.backprop(activation, loss.dC0_da(a, y), a, cp)
                if out is None:
                    return delta
                out[...] = delta
                return out
            if out is None:
                out = cp.empty_like(a)
            elementwise().sq_delta(a, y, activation_code(activation), out)
            return out

    def delta_propagate(self, delta, W, a_prev, activation, out=None):
        cp = self._cp
        with self._on_device():
            if out is not None and (out is a_prev or cp.may_share_memory(out, a_prev)):
                g = cp.matmul(delta, W)              # a_prev is still needed below
            else:
                g = cp.matmul(delta, W, out=out)
            if activation != "identity":
                elementwise().mul_dsigma(a_prev, activation_code(activation), g)
            if out is not None and g is not out:
                out[...] = g
                return out
            return g

    def weight_gradient(self, delta, a_prev, scale, dW=None, db=None):
        cp = self._cp
        n_out, n_in = delta.shape[1], a_prev.shape[1]
        with self._on_device():
            buf, copy = self._writable_out(dW, (n_out, n_in), delta.dtype, cp)
            if delta.shape[0] == 0:
                buf.fill(0)
            else:
                self._gemm("T", "N", delta, a_prev, buf, alpha=float(scale))
            if copy:
                dW[...] = buf
            else:
                dW = buf
            db = cp.sum(delta, axis=0, out=db)      # one reduction kernel
            db *= delta.dtype.type(scale)           # n_out elements
            return dW, db
