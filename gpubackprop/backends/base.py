"""The backend contract: `xp` plus the four ops backpropagation is made of.

A backend owns the array module (`xp`: numpy, or cupy on a GPU) and the four
ops of SPEC section 1 on batch-major arrays.  It never sees a network, a
trainer or an optimizer: the mini-batch loop lives once, in trainer.py, and
the update in optim.py.  Shapes, with B = batch size:

    a_prev (B, n_in)   W (n_out, n_in)   b (n_out,)   a, delta (B, n_out)

    dense_forward      a = sigma(a_prev @ W.T + b)
    output_delta       delta_L = dC0/da * sigma'(z_L)  (softmax + cross entropy: a - y)
    delta_propagate    delta_prev = (delta @ W) * sigma'(z_prev)
    weight_gradient    dW = scale * delta.T @ a_prev,  db = scale * delta.sum(0)

`delta` is the per-example error; the batch reduction lives in `scale`
(1/B for reduction="mean", 1 for "sum").  sigma'(z) is computed from the
activation output `a` (activations.py), so forward keeps only `a`.

This base class implements the four ops with `xp` (the reference formulas:
the `numpy` backend is exactly this class); a backend overrides the ops it
runs faster.  Declared, optional parts of the contract:

    unavailable_reason(device)   None if the backend can run there, else why not
    check_network(sizes, activations, dtype)   refuse a network it cannot train
    scratch_bytes(sizes, batch, dtype)   memory it needs beside the workspace
    train_epoch(params, state, X, Y, order, hyper)   one fused fast path for a
        run of SGD steps, giving the loop's numbers; `fuses(hyper)` says when
        it applies (the trainer runs its own loop otherwise)
"""
import dataclasses
import math

from .. import activations


@dataclasses.dataclass(frozen=True)
class Hyper:
    """The frozen record a fast path gets: what one SGD step does.

    activations: one name per layer; loss: a losses.Loss (name, reduction);
    batch_size: rows per step (the last step of an epoch may have fewer);
    lr, momentum, weight_decay: plain SGD as optim.SGD (PyTorch's convention);
    sizes: the layer sizes [n_0, ..., n_L] (empty when unknown).
    """
    activations: tuple
    loss: object
    batch_size: int
    lr: float
    momentum: float = 0.0
    weight_decay: float = 0.0
    sizes: tuple = ()          # [n_0, n_1, ..., n_L], for a fast path's choice of shapes

    def scale(self, batch, n_out):
        """The factor turning a sum over `batch` examples into the batch gradient."""
        return self.loss.scale(batch, n_out)


class Backend:
    """Base class and reference implementation; subclasses set `name` and
    `device_kinds` and override the ops they run faster."""

    name = "base"
    #: device kinds this backend runs on ("cpu", "cuda", "cuda-emulator")
    device_kinds = ("cpu",)

    def __init__(self, device):
        self.device = device
        self.xp = device.xp

    @classmethod
    def unavailable_reason(cls, device):
        """None if this backend can run on `device`, else a sentence saying why not."""
        return None

    def check_network(self, sizes, activations, dtype):
        """Raise ValueError if this backend cannot train a network with layer
        `sizes`, per-layer `activations` and `dtype`; the default takes any."""

    def scratch_bytes(self, sizes, batch, dtype):
        """Bytes this backend allocates for a step of `batch` rows beside the
        trainer's workspace (memory.estimate adds them); the default keeps none."""
        return 0

    # -- the four ops ----------------------------------------------------------
    def matmul(self, a, b, out=None):
        """a @ b (into `out` if given): the ops' one GEMM call."""
        return self.xp.matmul(a, b, out=out)

    def dense_forward(self, a_prev, W, b, activation, out=None):
        """a = sigma(a_prev @ W.T + b); writes into `out` (B, n_out) if given."""
        xp = self.xp
        z = self.matmul(a_prev, W.T, out)            # z = a_prev @ W.T
        z += b                                       #     + b
        return activations.apply(activation, z, xp, out=z)   # a = sigma(z), in place

    def output_delta(self, a, y, loss, activation, out=None):
        """Per-example output error delta_L (B, n_out) for `loss` (a losses.Loss)."""
        xp = self.xp
        if loss.name == "cross_entropy":
            delta = loss.probabilities(a, activation, xp) - y    # softmax(z) - y
        else:
            delta = activations.backprop(activation, loss.dC0_da(a, y), a, xp)
        if out is None:
            return delta
        out[...] = delta
        return out

    def delta_propagate(self, delta, W, a_prev, activation, out=None):
        """delta_prev = (delta @ W) * sigma'(z_prev), sigma' taken from a_prev."""
        xp = self.xp
        g = self.matmul(delta, W, out)              # delta @ W
        if activation != "identity":
            g *= activations.derivative(activation, a_prev, xp)   # * sigma'(z_prev)
        return g

    def weight_gradient(self, delta, a_prev, scale, dW=None, db=None):
        """(dW, db) = (scale * delta.T @ a_prev, scale * delta.sum(0)), into
        dW (n_out, n_in) and db (n_out,) when given."""
        xp = self.xp
        dW = self.matmul(delta.T, a_prev, dW)       # sum over the batch of outer products
        dW *= scale
        db = xp.sum(delta, axis=0, out=db)
        db *= scale
        return dW, db

    # -- composed from the ops: one forward and one backward pass ------------------
    def feedforward(self, params, acts, x, out=None):
        """[a_0 = x, a_1, ..., a_L]: every layer's activation; `out` (optional)
        holds preallocated (B, n_l) buffers for a_1..a_L."""
        a = [x]
        for l, ((W, b), act) in enumerate(zip(params, acts)):
            a.append(self.dense_forward(a[l], W, b, act, out=None if out is None else out[l]))
        return a

    def backward(self, params, acts, a, y, loss, out=None):
        """[delta_1, ..., delta_L] from feedforward's `a` and targets `y`: the
        output error, then delta_{l-1} = (delta_l @ W_l) * sigma'(z_{l-1})."""
        L = len(params)
        delta = [None] * L
        delta[-1] = self.output_delta(a[-1], y, loss, acts[-1],
                                      out=None if out is None else out[-1])
        for l in range(L - 1, 0, -1):
            delta[l - 1] = self.delta_propagate(delta[l], params[l][0], a[l], acts[l - 1],
                                                out=None if out is None else out[l - 1])
        return delta

    # -- the one optional fast path ------------------------------------------------
    def fuses(self, hyper):
        """True if train_epoch can run the steps `hyper` describes (the default
        backend has no fast path: the trainer's loop runs)."""
        return False

    def train_epoch(self, params, state, X, Y, order, hyper):
        """SGD steps over the batches order[0:bs], order[bs:2bs], ... (the last
        may be smaller), fusing the gradient with the update in place on
        `params` [(W, b)] and `state` (optim.SGDState: velocities).

        Returns device values (step_costs, n_correct, bad_step) exactly as the
        trainer's loop: each step's sum of per-example costs C0 before its
        update, the rows with argmax(a) == argmax(y), and the first step whose
        cost was not finite (-1 if none).  Only called when fuses(hyper)."""
        raise NotImplementedError(f"backend {self.name!r} has no fused fast path")

    def workspace(self, sizes, batch_size, dtype):
        """The Workspace for `sizes` and `batch_size`, made on first use."""
        key = (tuple(sizes), batch_size, str(dtype))
        cache = self.__dict__.setdefault("_workspaces", {})
        if key not in cache:
            cache.clear()          # one network shape at a time: free the old buffers
            cache[key] = Workspace(self.xp, sizes, batch_size, dtype)
        return cache[key]

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} on {self.device}>"


class Workspace:
    """The arrays of one SGD step, allocated once: the mini-batch x and
    targets y, each layer's activations a[l] (B, n_{l+1}), deltas delta[l]
    (B, n_{l+1}) and gradients grads[l] = (dW, db).  A smaller last batch
    uses the first rows.  The gradients are views of one flat `grad_buffer`
    in layer order (dW0, db0, dW1, ...), so data-parallel training sums
    them over ranks with one all-reduce."""

    def __init__(self, xp, sizes, batch_size, dtype):
        self.x = xp.empty((batch_size, sizes[0]), dtype=dtype)
        self.y = xp.empty((batch_size, sizes[-1]), dtype=dtype)
        self.a = [xp.empty((batch_size, n), dtype=dtype) for n in sizes[1:]]
        self.delta = [xp.empty((batch_size, n), dtype=dtype) for n in sizes[1:]]
        self.grad_buffer, self.grads = _flat_grads(xp, sizes, dtype)

    def rows(self, B):
        """Views of the first B rows: (x, y, a list, delta list)."""
        return (self.x[:B], self.y[:B], [a[:B] for a in self.a],
                [d[:B] for d in self.delta])


def _flat_grads(xp, sizes, dtype, align=64):
    """One zeroed flat buffer and [(dW, db)] views of it in layer order; each
    view starts at a multiple of `align` elements (256+ bytes, as cudaMalloc)
    so kernels may use vector loads on it."""
    shapes = [s for n_in, n_out in zip(sizes, sizes[1:]) for s in ((n_out, n_in), (n_out,))]
    starts, total = [], 0
    for shape in shapes:
        starts.append(total)
        total += -(-math.prod(shape) // align) * align
    buffer = xp.zeros(total, dtype=dtype)
    views = [buffer[o:o + math.prod(shape)].reshape(shape) for o, shape in zip(starts, shapes)]
    return buffer, list(zip(views[0::2], views[1::2]))
