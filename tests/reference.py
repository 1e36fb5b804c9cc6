"""Helpers every test file shares (imported as `from reference import rel_err`;
a conftest.py cannot be imported by name once tests/sim has its own)."""
import numpy as np

import gpubackprop as gb


def rel_err(x, ref):
    """max |x - ref| / max |ref| (relative to the reference's scale), computed
    in float64 on the host; x and ref may be NumPy, CuPy or Tensors."""
    def host(a):
        if hasattr(a, "numpy"):        # a gpubackprop.Tensor
            a = a.numpy()
        if hasattr(a, "get"):          # a CuPy array
            a = a.get()
        return np.asarray(a, dtype=np.float64)

    x, ref = host(x), host(ref)
    scale = max(np.abs(ref).max(initial=0.0), np.finfo(np.float64).tiny)
    return float(np.abs(x - ref).max(initial=0.0) / scale)


#: rows of the small classification problem below
N_SMALL = 60


def small_data(seed=0):
    """(X (60, 5) normal, y (60,) labels in 0..2)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N_SMALL, 5)), rng.integers(0, 3, N_SMALL)


def small_trainer(seed=0, momentum=0.5, sizes=(5, 8, 3)):
    """A numpy-backend tanh/softmax network with its cross-entropy Trainer."""
    net = gb.MLP.from_sizes(list(sizes), activation="tanh", output_activation="softmax",
                            backend="numpy", seed=seed)
    return gb.Trainer(net, loss="cross_entropy", optimizer=gb.SGD(lr=0.3, momentum=momentum),
                      batch_size=6, seed=seed)


def param_copies(net):
    """Copies of the network's (W, b) arrays."""
    return [(W.copy(), b.copy()) for W, b in net.params]


def same_params(a, b):
    """True if two lists of (W, b) are bitwise equal."""
    return all(np.array_equal(W, W2) and np.array_equal(b1, b2)
               for (W, b1), (W2, b2) in zip(a, b))
