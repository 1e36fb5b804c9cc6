"""Going back after a divergence: a NaN or infinite cost or parameter stops
training with TrainingDiverged(epoch, step), and the parameters and
optimizer state are put back to the last good copy (the epoch's start, or
the last checkpoint), so nothing of the bad steps is kept."""
from .device import to_host
from .history import TrainingDiverged


class Snapshot:
    """Copies of a network's parameters and an optimizer state (optim.SGDState)."""

    def __init__(self, net, state):
        xp = net.device.xp
        self.net, self.state = net, state
        self.params = [(xp.copy(W), xp.copy(b)) for W, b in net.params]
        self.velocities = state.copy()

    def restore(self):
        """Put the copies back, in place (the arrays the caller holds)."""
        for (W, b), (W0, b0) in zip(self.net.params, self.params):
            W[...] = W0
            b[...] = b0
        self.state.load(self.velocities.arrays())


def params_finite(net):
    """A device bool: every parameter of `net` is finite."""
    xp = net.device.xp
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
