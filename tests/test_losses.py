"""losses.py: each cost, its reduction and the output error it starts
backpropagation with, against PyTorch's own losses and finite differences."""
import numpy as np
import pytest

from gpubackprop import losses
from gpubackprop.backends.numpy_backend import NumpyBackend
from gpubackprop.device import Device

from reference import rel_err


def _batch(seed=0, B=7, n=4):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(B, n))
    y = np.eye(n)[rng.integers(0, n, size=B)]
    return z, y


@pytest.mark.parametrize("name, reduction", [("sse", "mean"), ("sse", "sum"), ("mse", "mean"),
                                             ("mse", "sum"), ("cross_entropy", "mean"),
                                             ("cross_entropy", "sum")])
def test_value_matches_torch(name, reduction):
    torch = pytest.importorskip("torch")
    z, y = _batch()
    loss = losses.get(name, reduction)
    act = "identity"
    ours = float(loss.value(z, y, act, np))
    zt, yt = torch.tensor(z), torch.tensor(y)
    if name == "cross_entropy":
        ref = torch.nn.functional.cross_entropy(zt, yt.argmax(1), reduction=reduction)
    elif name == "mse" and reduction == "mean":
        ref = torch.nn.functional.mse_loss(zt, yt)
    else:   # sse: per example sum of squares; mean over examples or plain sum
        per = ((zt - yt) ** 2).sum(1)
        ref = per.mean() if reduction == "mean" else per.sum()
    assert abs(ours - float(ref)) <= 1e-12 * abs(float(ref))


@pytest.mark.parametrize("name, act", [(n, a) for n in ("sse", "mse", "cross_entropy")
                                       for a in ("identity", "sigmoid", "softmax")
                                       if (n, a) != ("cross_entropy", "sigmoid")])
def test_output_delta_is_the_gradient_of_the_cost(name, act):
    """delta_L = dC0/dz_L: finite differences of the summed cost in z."""
    from gpubackprop import activations

    z, y = _batch(seed=1)
    loss = losses.Loss(name, "sum")
    be = NumpyBackend(Device("cpu"))

    def cost(z):
        return float(loss.total(activations.apply(act, z, np), y, act, np))

    delta = be.output_delta(activations.apply(act, z, np), y, loss, act)
    h, numeric = 1e-6, np.empty_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        numeric[idx] = (cost(zp) - cost(zm)) / (2 * h)
    assert rel_err(delta, numeric) < 1e-7


def test_aliases_and_bad_names():
    assert losses.get("quadratic").name == "sse"
    with pytest.raises(ValueError, match="loss"):
        losses.get("hinge")
    with pytest.raises(ValueError, match="reduction"):
        losses.get("sse", "max")
    with pytest.raises(ValueError, match="softmax"):
        losses.get("cross_entropy").check_output("sigmoid")


def test_scale_turns_sums_into_the_batch_gradient():
    assert losses.get("sse").scale(8, 3) == 1 / 8
    assert losses.get("mse").scale(8, 3) == 1 / 24
    assert losses.get("sse", "sum").scale(8, 3) == 1.0
