"""Stochastic gradient descent with momentum and weight decay.

For every parameter p with gradient g = dC/dp (PyTorch's convention, so the
numbers match torch.optim.SGD):

    g = g + weight_decay * p          (L2 penalty, on weights and biases)
    v = momentum * v + g              (only with momentum > 0; v starts at 0)
    p = p - lr * v                    (p = p - lr * g without momentum)

`step(params, grads, state)` is written with the arrays' own module (xp), so
it runs on NumPy and CuPy alike.  A subclass that overrides `step` (say,
Nesterov momentum) trains on every backend: fused fast paths, which compute
exactly SGD's update, step aside for it (see `fused_record`).
"""
from .checks import real
from .device import array_module


class SGDState:
    """The optimizer's state: one (vW, vb) velocity pair per layer, or None
    per layer without momentum.  `arrays()` / `load(arrays)` are what a
    checkpoint saves and restores."""

    def __init__(self, velocities):
        self.velocities = velocities

    def arrays(self):
        """{"vW0": ..., "vb0": ..., ...}: the arrays there are (none without momentum)."""
        out = {}
        for i, (vW, vb) in enumerate(self.velocities):
            if vW is not None:
                out[f"vW{i}"], out[f"vb{i}"] = vW, vb
        return out

    def load(self, arrays):
        """Copy `arrays` (as from arrays(), NumPy or device) into the state in place."""
        for name, v in self.arrays().items():
            v[...] = _like(v, arrays[name])

    def fits(self, params):
        """True if this state has the shapes and dtypes of `params`."""
        if len(self.velocities) != len(params):
            return False
        for (W, b), (vW, vb) in zip(params, self.velocities):
            if vW is not None and (vW.shape != W.shape or vb.shape != b.shape
                                   or vW.dtype != W.dtype or type(vW) is not type(W)):
                return False
        return True


def _like(v, array):
    """`array` as an array of v's module (NumPy or CuPy) and dtype."""
    return array_module(v).asarray(array, dtype=v.dtype)


class SGD:
    def __init__(self, lr=0.1, momentum=0.0, weight_decay=0.0):
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.check()

    # the hyperparameters are checked where they are set (sgd.lr = -1.0 raises)
    lr = property(lambda self: self._lr, lambda self, value: setattr(
        self, "_lr", real("lr", value, low=0.0, low_open=True)), doc="learning rate > 0")
    momentum = property(lambda self: self._momentum, lambda self, value: setattr(
        self, "_momentum", real("momentum", value, low=0.0, high=1.0, high_open=True)),
        doc="momentum in [0, 1)")
    weight_decay = property(lambda self: self._weight_decay, lambda self, value: setattr(
        self, "_weight_decay", real("weight_decay", value, low=0.0)), doc="L2 penalty >= 0")

    def check(self):
        """Re-check the hyperparameters (a subclass may store them its own
        way); raises ValueError/TypeError naming the one."""
        self.lr = self.lr
        self.momentum = self.momentum
        self.weight_decay = self.weight_decay

    def init_state(self, params):
        """A fresh SGDState for `params` [(W, b), ...]: zero velocities with momentum."""
        return SGDState([(array_module(W).zeros_like(W), array_module(b).zeros_like(b))
                         if self.momentum
                         else (None, None) for W, b in params])

    def state_fits(self, state, params):
        """True if `state` was made by init_state for params of these shapes."""
        if state is None or not state.fits(params):
            return False
        return all((vW is not None) == bool(self.momentum) for vW, _ in state.velocities)

    def step(self, params, grads, state):
        """One update of every parameter in place, from grads [(dW, db), ...].
        The gradients may be overwritten (they are the step's scratch)."""
        lr, mu, wd = self.lr, self.momentum, self.weight_decay
        for (W, b), (dW, db), (vW, vb) in zip(params, grads, state.velocities):
            for p, g, v in ((W, dW, vW), (b, db, vb)):
                if wd:
                    g += wd * p                   # g = dC/dp + wd p
                if mu:
                    v *= mu                       # v = mu v + g
                    v += g
                p -= _times(lr, v if mu else g, out=g)   # p = p - lr v  (lr v into g's buffer)

    def fused_record(self):
        """(lr, momentum, weight_decay) when this optimizer's step is exactly
        SGD.step, so a backend's fused fast path may run it; None for a
        subclass with its own step."""
        if type(self).step is not SGD.step:
            return None
        return self.lr, self.momentum, self.weight_decay

    def config(self):
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay}

    def __repr__(self):
        return f"SGD(lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay})"


def _times(lr, x, out):
    """lr * x into `out` (the step's gradient buffer, scratch by then: no
    temporary the size of the parameter)."""
    return array_module(x).multiply(x, lr, out=out)
