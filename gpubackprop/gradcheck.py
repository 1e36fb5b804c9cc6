"""Backpropagation against central finite differences.

For a parameter p, dC/dp ~ (C(p + eps) - C(p - eps)) / (2 eps), with an error
of order eps^2.  The check runs the finite differences in float64 on the CPU
and compares them with the network's own backprop gradients (on its own
backend, device and dtype), so it tests the backend too.
"""
import numpy as np

from . import losses
from .checks import positive_int, real
from .device import to_host


def gradcheck(net, X, Y, loss="sse", reduction="mean", eps=1e-6, n_check=64, seed=0):
    """The largest relative error between backprop and finite differences.

    Each W and b is compared on up to `n_check` of its entries (all of them
    when it has fewer; a seeded random sample otherwise), as the norm-wise
    relative error |g_bp - g_fd| / max(|g_bp|, |g_fd|, floor): the floor is
    REL_FLOOR times the whole gradient's norm (or the finite differences'
    rounding noise, where the whole gradient is next to nothing), so a W or
    b at its optimum, whose gradient is rounding noise on both sides, does
    not read as 100% wrong.  Float64 networks agree to about 1e-8; float32
    ones to about 1e-3.
    """
    from .network import MLP

    if not isinstance(net, MLP):
        raise TypeError(f"net must be a gpubackprop.MLP; got {type(net).__name__}")
    eps = real("eps", eps, low=0.0, low_open=True)
    n_check = positive_int("n_check", n_check)
    seed = positive_int("seed", seed, minimum=0)
    backprop = net.gradients(X, Y, loss=loss, reduction=reduction)
    ref = _float64_copy(net)
    X = ref._features(X)
    Y = ref._targets(Y, X.shape[0])
    cost = losses.get(loss, reduction)
    out_act = ref.layers[-1].activation

    def C():
        return float(cost.value(ref.feedforward(X)[-1], Y, out_act, np))

    rng = np.random.default_rng(seed)
    pairs = []                                  # (backprop, finite differences) per W, b
    for layer, grads in zip(ref.layers, backprop):
        for p, g in zip(layer.params, grads):
            g = to_host(g).astype(np.float64).ravel()
            flat = p.reshape(-1)
            idx = np.arange(flat.size)
            if flat.size > n_check:
                idx = rng.choice(flat.size, n_check, replace=False)
            fd = np.empty(len(idx))
            for i, k in enumerate(idx):
                saved = flat[k]
                flat[k] = saved + eps
                c_plus = C()
                flat[k] = saved - eps
                c_minus = C()
                flat[k] = saved
                fd[i] = (c_plus - c_minus) / (2 * eps)
            pairs.append((g[idx], fd))
    # a W or b whose gradient is next to nothing (a bias at its optimum) is held
    # against a floor: REL_FLOOR of the whole gradient, or the differences'
    # own rounding noise (C's float64 rounding over 2 eps), not against itself
    whole = max(np.linalg.norm(np.concatenate([a for a, _ in pairs])),
                np.linalg.norm(np.concatenate([b for _, b in pairs])))
    noise = FD_NOISE * np.finfo(np.float64).eps * max(abs(C()), 1.0) / eps
    return max(relative_error(a, b, max(REL_FLOOR * whole, noise * np.sqrt(a.size)))
               for a, b in pairs)


#: the smallest scale a W or b's error is measured against, as a fraction of
#: the norm of the whole gradient
REL_FLOOR = 1e-3
#: finite differences of float64 costs carry about this many roundings of C
FD_NOISE = 10


def relative_error(a, b, floor=0.0):
    """|a - b| / max(|a|, |b|, floor) in the 2-norm (0 when all are 0)."""
    scale = max(np.linalg.norm(a), np.linalg.norm(b), floor)
    return 0.0 if scale == 0 else float(np.linalg.norm(a - b) / scale)


def _float64_copy(net):
    """The same network in float64 on the CPU, with the NumPy backend."""
    from .layers import Dense
    from .network import MLP

    layers = [Dense(layer.n_in, layer.n_out, layer.activation,
                    W=layer.W.numpy().astype(np.float64), b=layer.b.numpy().astype(np.float64))
              for layer in net.layers]
    return MLP(layers, device="cpu", dtype="float64", backend="numpy")
