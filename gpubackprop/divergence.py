"""Going back after a divergence: a NaN or infinite cost or parameter stops
training with TrainingDiverged(epoch, step), and the parameters and
optimizer state are put back to the last good copy (the epoch's start, or
the last checkpoint), so nothing of the bad steps is kept."""
import numpy as np

from .device import all_finite, to_host
from .history import TrainingDiverged
from .optim import SGDState


class Snapshot:
    """Copies of a network's parameters and an optimizer state (optim.SGDState).

    take() copies them again into the same arrays: a trainer keeps one
    Snapshot for all its epochs and fits, because a fresh copy each epoch
    is fresh memory, which the system faults in and zeroes page by page
    before the copy (for a wide network, a large part of a short epoch)."""

    def __init__(self, net, state):
        self.net, self.params, self.velocities = net, [], SGDState([])
        self.take(state)

    def take(self, state):
        """Copy the network's parameters and `state` now (the state to restore into)."""
        self.state = state
        self.params = _copies(self.params, self.net.params)
        self.velocities = SGDState(_copies(self.velocities.velocities, state.velocities))
        return self

    def restore(self):
        """Put the copies back, in place (the arrays the caller holds)."""
        for (W, b), (W0, b0) in zip(self.net.params, self.params):
            W[...] = W0
            b[...] = b0
        self.state.load(self.velocities.arrays())


def _copies(old, pairs):
    """[(copy of x, copy of y)] for pairs [(x, y)] (None stays None), into
    old's arrays where they have the same type, shape and dtype."""
    if len(old) != len(pairs):
        old = [(None, None)] * len(pairs)
    return [tuple(_copy_into(o, x) for o, x in zip(olds, pair)) for olds, pair in zip(old, pairs)]


def _copy_into(out, x):
    if x is None:
        return None
    if out is None or type(out) is not type(x) or out.shape != x.shape or out.dtype != x.dtype:
        return x.copy()
    out[...] = x
    return out


def params_finite(net):
    """A device bool: every parameter of `net` is finite (on the CPU by
    device.all_finite, without a temporary array per parameter)."""
    xp = net.device.xp
    if xp is np:
        return np.bool_(all(all_finite(W) and all_finite(b) for W, b in net.params))
    return xp.stack([xp.isfinite(W).all() & xp.isfinite(b).all() for W, b in net.params]).all()


def check_params(net, epoch, step, snapshot):
    """Raise TrainingDiverged(epoch, step - 1), after restoring `snapshot`, if
    a parameter is not finite."""
    if not bool(to_host(params_finite(net))):
        snapshot.restore()
        raise TrainingDiverged(epoch, step - 1)


def check_marks(marks, epoch, snapshot):
    """Raise TrainingDiverged (after restoring `snapshot`) if a step's cost
    was not finite; marks are (first step of a run, its bad step: a device
    value, -1 if none), cleared once read."""
    for first, bad in marks:
        bad = int(to_host(bad))
        if bad >= 0:
            snapshot.restore()
            raise TrainingDiverged(epoch, first + bad)
    marks.clear()
