"""activations.py: one table, its scalar and array forms agree, and a new row
trains on the NumPy and the compiled CPU backends."""
import math

import numpy as np
import pytest
from reference import rel_err
from numba import njit

import gpubackprop as gb
from gpubackprop import activations, losses
from gpubackprop.activations import Activation
from gpubackprop.backends.base import Hyper
from gpubackprop.backends.numba_cpu import NumbaCPUBackend
from gpubackprop.optim import SGD

Z = np.concatenate([np.random.default_rng(0).normal(0, 3, 200), [-800.0, -40.0, 40.0, 800.0]])


def test_the_table_is_the_one_source():
    assert activations.CODES == {n: r.code for n, r in activations.TABLE.items()}
    assert len(set(activations.CODES.values())) == len(activations.CODES)
    assert activations.NAMES == tuple(activations.TABLE)
    assert "softmax" not in activations.HIDDEN_NAMES
    assert activations.check_name("Leaky-ReLU") == "leaky_relu"
    with pytest.raises(ValueError, match="did you mean 'tanh'"):
        activations.check_name("tanhh")
    with pytest.raises(ValueError):
        activations.check_name("softmax", allow_softmax=False)


@pytest.mark.parametrize("name", activations.HIDDEN_NAMES)
def test_scalar_and_array_forms_agree(name):
    """sigma and sigma' on one number (what the kernels compile) against the
    NumPy array forms, and sigma' against a central difference of sigma."""
    row = activations.TABLE[name]
    a = activations.apply(name, Z[None, :], np)[0]
    assert rel_err([row.sigma(z) for z in Z], a) <= 1e-15
    assert np.isfinite(a).all()
    d = activations.derivative(name, a[None, :], np)[0]
    assert rel_err([row.dsigma(x) for x in a], d) <= 1e-15
    z = Z[np.abs(Z) > 1e-3][:50]                  # away from relu's kink
    h = 1e-6
    numeric = (activations.apply(name, (z + h)[None], np) - activations.apply(name, (z - h)[None], np)) / (2 * h)
    analytic = activations.derivative(name, activations.apply(name, z[None], np), np)
    assert rel_err(analytic, numeric) <= 1e-7


def test_dispatcher_switches_on_the_code():
    sigma = activations.dispatcher("sigma", njit)
    dsigma = activations.dispatcher("dsigma", njit)
    for name in activations.HIDDEN_NAMES:
        row = activations.TABLE[name]
        assert sigma(row.code, 0.7) == row.sigma(0.7)
        assert dsigma(row.code, 0.3) == row.dsigma(0.3)
    assert math.isnan(sigma(99, 0.7))                # unknown code: NaN, never a silent pass


def softsign(z):
    return z / (1.0 + abs(z))


def dsoftsign(a):
    return (1.0 - abs(a)) ** 2                      # 1 / (1 + |z|)^2 from a alone


@pytest.fixture
def with_softsign():
    """The table with a softsign row (no array forms: they are derived), restored after."""
    before = (activations.fingerprint(), dict(activations.CODES))
    activations.register(Activation("softsign", 7, softsign, dsoftsign))
    try:
        yield
    finally:
        activations.unregister("softsign")
    assert (activations.fingerprint(), activations.CODES) == before


def test_register_checks_and_updates_the_names(with_softsign):
    assert activations.CODES["softsign"] == 7 and "softsign" in activations.HIDDEN_NAMES
    assert activations.check_name("softsign") == "softsign"
    with pytest.raises(ValueError, match="code 7 is taken by 'softsign'"):
        activations.register(Activation("other", 7, softsign, dsoftsign))
    z = Z[None, :]
    assert rel_err(activations.apply("softsign", z, np), z / (1 + np.abs(z))) <= 1e-15
    a = activations.apply("softsign", z, np)
    assert rel_err(activations.derivative("softsign", a, np), 1 / (1 + np.abs(z)) ** 2) <= 1e-14


def test_a_new_activation_trains_on_numpy_and_numba(with_softsign):
    """Extension by doing: one register() call, then the NumPy loop and the
    compiled epoch (its own kernels, built from the new table) agree."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(30, 6))
    Y = np.eye(3)[rng.integers(0, 3, 30)]
    nets = {}
    for backend in ("numpy", "numba"):
        net = gb.MLP.from_sizes([6, 9, 3], activation="softsign", output_activation="softsign",
                                backend=backend, seed=4)
        gb.Trainer(net, loss="sse", optimizer=gb.SGD(lr=0.5, momentum=0.5), batch_size=4,
                   seed=5).fit(X, Y, epochs=2, progress=False)
        nets[backend] = net
    assert max(rel_err(p, q) for (W, b), (W0, b0) in zip(nets["numba"].params, nets["numpy"].params)
               for p, q in ((W, W0), (b, b0))) <= 1e-12
    # and train_epoch itself, on a network the table had no code for before
    params = [(W.copy(), b.copy()) for W, b in nets["numpy"].params]
    state = SGD(0.5).init_state(params)
    hyper = Hyper(("softsign", "softsign"), losses.get("sse"), 4, 0.5)
    costs, _, bad = NumbaCPUBackend(gb.device("cpu")).train_epoch(params, state, X, Y,
                                                                  np.arange(30), hyper)
    a = X
    for W, b in nets["numpy"].params:
        a = softsign(a @ W.T + b)                   # the first step's cost, by hand
    assert bad == -1 and abs(costs[0] - ((a[:4] - Y[:4]) ** 2).sum()) <= 1e-12 * costs[0]
