"""The `fused` backend: a whole SGD step of a narrow MLP in three kernels.

kernels/fused_mlp.cu (design: kernels/FUSED.md) runs, per step and whatever
the depth,

    fused_forward     every layer of a tile of 64 batch rows in one thread
                      block, activations kept in shared memory; the input
                      rows are gathered through the shuffle and streamed
                      through shared memory 32 columns at a time (any n_in)
    fused_backward    output delta from the cost, the deltas of every layer
                      and each tile's weight-gradient partials, on chip
    fused_reduce_sgd  the tiles' partials summed in a fixed order
                      (deterministic, no atomics), fused with SGD
                      (momentum, weight decay, PyTorch's convention)

That is `train_epoch`, the backend's fast path.  What it takes
(`check_network`): 1 to 8 layers, every layer output at most 128 wide (the
input may be any width, 784 included), float32 or float64, any activation
(softmax on the output only), losses sse/quadratic, mse, cross_entropy, any
batch size.  The four ops of the contract (MLP.forward, MLP.gradients, the
trainer's loop for an optimizer the kernels do not fuse) are the base
class's xp formulas.  `FusedBackend(device, deterministic=False)` builds
with FUSED_ATOMIC: the tiles' partials are atomicAdd-ed into one buffer.

It runs unchanged on a GPU (CuPy, NVRTC) and on the "cuda-emulator" device
(NumPy, the same .cu compiled for the CPU), through the seam kernels.load.
"""
import numpy as np

from .. import activations
from ..checks import boolean
from .base import Backend
from .gpu_common import cdiv, device_unavailable_reason, in_kernels, kernels_package, \
    on_device, pointer, require_kernel_device

SOURCE = "fused_mlp.cu"
KERNEL_NAMES = ("fused_forward", "fused_backward", "fused_reduce_sgd")
_KP = kernels_package()
TILE_B = _KP.FUSED["FUSED_TILE_B"]
MAX_W = _KP.FUSED["FUSED_MAX_W"]
PAD = _KP.FUSED["FUSED_PAD"]
KC = _KP.FUSED["FUSED_KC"]
MAX_LAYERS = _KP.FUSED["FUSED_MAX_LAYERS"]
THREADS = _KP.FUSED_THREADS
DTYPES = _KP.DTYPES[SOURCE]
MODE_GRAD, MODE_SGD = _KP.FUSED_MODES["FUSED_MODE_GRAD"], _KP.FUSED_MODES["FUSED_MODE_SGD"]
LOSSES = ("sse", "mse", "cross_entropy")
_INT32_MAX = 2**31 - 1
_STATIC_SMEM = 2048        # the kernels' static __shared__ tables (ptxas: <= 1168 bytes)


def padded(n):
    return cdiv(n, PAD) * PAD


def shared_bytes(sizes, dtype):
    """Dynamic shared memory of fused_forward / fused_backward for layer `sizes`
    (fused_smem_elems of fused_mlp.cuh)."""
    ld = max(padded(n) for n in sizes[1:]) + 1
    elems = 2 * TILE_B * ld + KC * ld + TILE_B * (KC + 1)
    return elems * np.dtype(dtype).itemsize


def network_reason(sizes, acts, dtype, smem_limit=_KP.MAX_SHARED_OPTIN_BYTES):
    """None if the fused kernels take this network, else why not."""
    L = len(sizes) - 1
    if not 1 <= L <= MAX_LAYERS:
        return f"the fused kernels take 1 to {MAX_LAYERS} layers; this network has {L}"
    wide = [(i, n) for i, n in enumerate(sizes[1:]) if n > MAX_W]
    if wide:
        i, n = wide[0]
        return (f"the fused kernels take layer outputs up to {MAX_W} wide (the input may be "
                f"any width); layers[{i}] has {n} outputs")
    if str(np.dtype(dtype)) not in DTYPES:
        return f"the fused kernels run {' or '.join(DTYPES)}, not {np.dtype(dtype)}"
    for i, a in enumerate(acts):
        if not in_kernels(a) or (a == "softmax" and i != L - 1):
            return f"layers[{i}]: activation {a!r} is not supported by the fused kernels"
    if max(sizes) > _INT32_MAX:
        return "a layer is wider than 2**31 - 1"
    need = shared_bytes(sizes, dtype) + _STATIC_SMEM
    if need > smem_limit:
        return (f"the fused kernels need {need} bytes of shared memory per block for "
                f"this network in {np.dtype(dtype)}; the device allows {smem_limit}")
    return None


class FusedBackend(Backend):
    """A fully fused SGD step for MLPs with layer outputs up to 128 wide."""

    name = "fused"
    device_kinds = ("cuda", "cuda-emulator")

    def __init__(self, device, deterministic=True):
        require_kernel_device(device, self.name)
        #: False: the partials are atomicAdd-ed (FUSED_ATOMIC), not bitwise reproducible
        self.deterministic = boolean("deterministic", deterministic)
        super().__init__(device)
        self._scratch = {}

    @classmethod
    def unavailable_reason(cls, device):
        return device_unavailable_reason(device, cls.name)

    def _smem_limit(self):
        if self.device.kind != "cuda":
            return _KP.MAX_SHARED_OPTIN_BYTES
        attrs = self.xp.cuda.Device(self.device.index or 0).attributes
        return int(attrs.get("MaxSharedMemoryPerBlockOptin", _KP.DEFAULT_SHARED_BYTES))

    def check_network(self, sizes, activations, dtype):
        reason = network_reason(list(sizes), list(activations), dtype, self._smem_limit())
        if reason is not None:
            raise ValueError(f"backend 'fused' cannot train this network: {reason}")

    def fuses(self, hyper):
        """Every SGD the kernels compute: sse/mse/cross entropy, mean or sum."""
        return hyper.loss.name in LOSSES

    # -- helpers ----------------------------------------------------------------
    def _kernels(self, dtype):
        dtype = str(np.dtype(dtype))
        module = _KP.load(SOURCE, _KP.defines(SOURCE, dtype, atomic=not self.deterministic),
                          dtype, self.device)
        return {k: module.get(k) for k in KERNEL_NAMES}

    def _tables(self, params, velocities=None):
        """(ptrs, vptrs, dims, acts-less sizes): the pointer tables and widths on the device."""
        xp = self.xp
        flat = [p for pair in params for p in pair]
        for p in flat:
            if not p.flags.c_contiguous:
                raise ValueError("the fused backend needs C-contiguous parameters")
        ptrs = xp.asarray(np.array([pointer(p) for p in flat], dtype=np.int64))
        if velocities is not None:
            vptrs = xp.asarray(np.array([pointer(v) for pair in velocities for v in pair],
                                        dtype=np.int64))
        else:
            vptrs = ptrs
        sizes = [params[0][0].shape[1]] + [W.shape[0] for W, _ in params]
        return ptrs, vptrs, xp.asarray(np.array(sizes, dtype=np.int32)), sizes

    def scratch_bytes(self, sizes, batch, dtype):
        """What _buffers allocates: the activations (batch x sum n_l) and one
        gradient partial per TILE_B-row tile (one in all with atomics)."""
        n_params = sum(o * i + o for i, o in zip(sizes, sizes[1:]))
        tiles = cdiv(batch, TILE_B) if self.deterministic else 1
        return (batch * sum(sizes[1:]) + tiles * n_params) * np.dtype(dtype).itemsize

    def _buffers(self, sizes, dtype, batch):
        """Activation scratch (batch x sum n_l) and the partials (tiles x P)."""
        key = (tuple(sizes), str(dtype), batch, self.deterministic)
        buf = self._scratch.get(key)
        if buf is None:
            xp = self.xp
            n_params = sum(o * i + o for i, o in zip(sizes, sizes[1:]))
            tiles = cdiv(batch, TILE_B) if self.deterministic else 1
            self._scratch.clear()           # one shape at a time
            buf = (xp.empty(max(1, batch * sum(sizes[1:])), dtype=dtype),
                   xp.empty(max(1, tiles * n_params), dtype=dtype), n_params)
            self._scratch[key] = buf
        return buf

    def _forward(self, k, X, idx, B, ptrs, dims, acts, sizes, act_out):
        """fused_forward over the B rows idx of X into the activation scratch."""
        smem = shared_bytes(sizes, X.dtype)
        if smem + _STATIC_SMEM > _KP.DEFAULT_SHARED_BYTES:
            for name in ("fused_forward", "fused_backward"):
                k[name].max_dynamic_shared_size_bytes = smem
        wp = np.int32(max(padded(n) for n in sizes[1:]))
        k["fused_forward"]((cdiv(B, TILE_B),), (THREADS,),
                           (X, idx, np.int32(B), np.int32(len(sizes) - 1), ptrs, dims, acts, wp,
                            act_out), shared_mem=smem)
        return smem, wp

    def _step(self, k, X, Y, idx, B, loss, tables, acts, act_out, part, n_params, cost_out,
              correct_out, mode, scale, lr, mu, wd, grad_out):
        """fused_forward, fused_backward, fused_reduce_sgd for one batch of B rows."""
        ptrs, vptrs, dims, sizes = tables
        s = X.dtype.type
        L = np.int32(len(sizes) - 1)
        smem, wp = self._forward(k, X, idx, B, ptrs, dims, acts, sizes, act_out)
        if not self.deterministic:
            part[:n_params] = 0
        T = cdiv(B, TILE_B)
        k["fused_backward"]((T,), (THREADS,),
                            (X, Y, idx, np.int32(B), L, ptrs, dims, acts, wp, act_out,
                             np.int32(loss.code), part, cost_out, correct_out), shared_mem=smem)
        grid = min(cdiv(n_params, THREADS), _KP.REDUCE_MAX_BLOCKS)
        k["fused_reduce_sgd"]((grid,), (THREADS,),
                              (part, np.int32(T if self.deterministic else 1), L, ptrs, vptrs,
                               dims, s(scale), s(lr), s(mu), s(wd), np.int32(mode), grad_out))

    def _acts(self, names):
        return self.xp.asarray(np.array([activations.CODES[a] for a in names], dtype=np.int32))

    # -- the fast path: a run of SGD steps, fused ----------------------------------------
    def train_epoch(self, params, state, X, Y, order, hyper):
        xp = self.xp
        with on_device(self.device):
            dt = params[0][0].dtype
            X = xp.ascontiguousarray(X, dtype=dt)
            Y = xp.ascontiguousarray(Y, dtype=dt)
            order = xp.ascontiguousarray(order, dtype=xp.int64)
            mu, wd, lr, bs = hyper.momentum, hyper.weight_decay, hyper.lr, hyper.batch_size
            tables = self._tables(params, state.velocities if mu else None)
            sizes = tables[3]
            acts = self._acts(hyper.activations)
            k = self._kernels(dt)
            n_steps = cdiv(len(order), bs)
            act_out, part, n_params = self._buffers(sizes, dt, bs)
            t_max = cdiv(bs, TILE_B)
            cost = xp.zeros((n_steps, t_max), dtype=dt)
            correct = xp.zeros((n_steps, t_max), dtype=xp.int32)
            for st in range(n_steps):
                idx = order[st * bs:(st + 1) * bs]
                B = int(idx.shape[0])
                self._step(k, X, Y, idx, B, hyper.loss, tables, acts, act_out, part, n_params,
                           cost[st], correct[st], MODE_SGD, hyper.scale(B, sizes[-1]), lr, mu,
                           wd, part)
            step_cost = cost.sum(axis=1)
            n_correct = correct.sum(dtype=xp.int64)
            finite = xp.isfinite(step_cost)
            bad_step = xp.where(finite.all(), -1, xp.argmin(finite))
            return step_cost, n_correct, bad_step

    # -- the kernels outside training (tests, debugging) ---------------------------------
    def fused_gradients(self, params, acts, X, Y, loss):
        """[(dW, db), ...] of the batch (X, Y) from the fused kernels (one step in
        mode GRAD: the parameters are not changed); `loss` a losses.Loss."""
        xp = self.xp
        with on_device(self.device):
            dt = params[0][0].dtype
            X, Y = xp.ascontiguousarray(X, dtype=dt), xp.ascontiguousarray(Y, dtype=dt)
            B = X.shape[0]
            tables = self._tables(params)
            sizes = tables[3]
            act_out, part, n_params = self._buffers(sizes, dt, B)
            grad = xp.empty(n_params, dtype=dt)
            T = cdiv(B, TILE_B)
            self._step(self._kernels(dt), X, Y, xp.arange(B, dtype=xp.int64), B, loss, tables,
                       self._acts(acts), act_out, part, n_params, xp.zeros(T, dtype=dt),
                       xp.zeros(T, dtype=xp.int32), MODE_GRAD, loss.scale(B, sizes[-1]),
                       0.0, 0.0, 0.0, grad)
            out, off = [], 0
            for n_in, n_out in zip(sizes, sizes[1:]):
                dW = grad[off:off + n_out * n_in].reshape(n_out, n_in)
                off += n_out * n_in
                out.append((dW, grad[off:off + n_out]))
                off += n_out
            return out

    def fused_forward(self, params, acts, X):
        """The output a_L (B, n_L) of the network for X, computed by fused_forward."""
        xp = self.xp
        with on_device(self.device):
            dt = params[0][0].dtype
            X = xp.ascontiguousarray(X, dtype=dt)
            B = X.shape[0]
            ptrs, _, dims, sizes = self._tables(params)
            act_out, _, _ = self._buffers(sizes, dt, B)
            self._forward(self._kernels(dt), X, xp.arange(B, dtype=xp.int64), B, ptrs, dims,
                          self._acts(acts), sizes, act_out)
            start = B * sum(sizes[1:-1])
            return act_out[start:start + B * sizes[-1]].reshape(B, sizes[-1]).copy()
