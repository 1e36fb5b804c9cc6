"""Shared by the cuda-emulator tests: every .cu built once per session (all in
parallel, into the emulator's cache), the float64 NumPy references, and
random problems.  Not a test module."""
import functools

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import activations
from gpubackprop.backends.gpu_common import kernels_package
from gpubackprop.device import emulator_status


KP = kernels_package()
EMU = KP.emulator
COMPILER, WHY_NOT = emulator_status()
#: pytestmark for modules that need the emulator
needs_emulator = pytest.mark.skipif(COMPILER is None, reason=f"no cuda-emulator: {WHY_NOT}")
TOL = {"float32": 1e-5, "float64": 1e-12}


@functools.lru_cache(maxsize=None)
def build_all():
    """Every (file, dtype, defines) the launchers use, built in parallel (cached
    on disk: a later session only hashes); returns how many builds there are."""
    jobs = [(name, defines, dtype) for name, dtype, defines in KP.builds()]
    EMU.build_many(jobs)
    return len(jobs)


def device():
    return gb.device("cuda-emulator")


def module(file, dtype, atomic=False):
    """The emulated module of `file` as the launchers build it."""
    return KP.load(file, KP.defines(file, dtype, atomic), dtype, device())

def forward_ref(a_prev, W, b, act):
    z = a_prev.astype(np.float64) @ W.astype(np.float64).T + b.astype(np.float64)
    return activations.apply(act, z, np)


def dsigma_ref(act, a):
    return activations.derivative(act, a.astype(np.float64), np)


def problem(sizes, n, dtype, seed=0):
    """(params [(W, b)], X, Y one-hot) with N(0, 1/n_in) weights, random data."""
    rng = np.random.default_rng(seed)
    params = [(rng.normal(0.0, 1.0 / np.sqrt(i), (o, i)).astype(dtype),
               rng.normal(0.0, 0.2, o).astype(dtype)) for i, o in zip(sizes, sizes[1:])]
    X = rng.normal(size=(n, sizes[0])).astype(dtype)
    Y = np.eye(sizes[-1], dtype=dtype)[rng.integers(0, sizes[-1], n)]
    return params, X, Y


def reference_epoch(params, X, Y, order, hyper):
    """The trainer's loop on the float64 NumPy reference: (params after, step costs,
    n_correct); `params` is copied, not changed."""
    from gpubackprop.backends.base import Backend
    from gpubackprop.optim import SGD

    p = [(W.astype(np.float64), b.astype(np.float64)) for W, b in params]
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    opt = SGD(lr=hyper.lr, momentum=hyper.momentum, weight_decay=hyper.weight_decay)
    state = opt.init_state(p)
    be, bs, acts = Backend(gb.device("cpu")), hyper.batch_size, hyper.activations
    costs, correct = [], 0
    for s in range(-(-len(order) // bs)):
        idx = order[s * bs:(s + 1) * bs]
        a = be.feedforward(p, acts, X[idx])
        costs.append(float(hyper.loss.total(a[-1], Y[idx], acts[-1], np)))
        correct += int((a[-1].argmax(1) == Y[idx].argmax(1)).sum())
        delta = be.backward(p, acts, a, Y[idx], hyper.loss)
        scale = hyper.scale(len(idx), a[-1].shape[1])
        grads = [be.weight_gradient(d, ap, scale) for d, ap in zip(delta, a[:-1])]
        opt.step(p, grads, state)
    return p, np.array(costs), correct


#: the devices the backend tests run on: the emulator, and the first GPU if any
DEVICES = ["cuda-emulator"] + [d for d in gb.available_devices() if d.startswith("cuda:")][:1]


@pytest.fixture(scope="module", params=DEVICES)
def dev(request):
    """Each of DEVICES in turn (the emulator's kernels built first, once)."""
    if request.param == "cuda-emulator":
        if needs_emulator.args[0]:
            pytest.skip(needs_emulator.kwargs["reason"])
        build_all()
    return gb.device(request.param)


def host(x):
    """A device array as a NumPy array."""
    return gb.device("cpu").asarray(x)


def run_train_epoch(be, dev, params, X, Y, order, hyper):
    """`be.train_epoch` on copies of host `params` moved to `dev`: the trained
    [(W, b)] and (step_costs, n_correct, bad_step), all as NumPy arrays."""
    from gpubackprop.optim import SGD

    assert be.fuses(hyper)
    p = [(dev.asarray(W), dev.asarray(b)) for W, b in params]
    state = SGD(hyper.lr, hyper.momentum, hyper.weight_decay).init_state(p)
    out = be.train_epoch(p, state, dev.asarray(X), dev.asarray(Y), dev.asarray(order), hyper)
    return [(host(W), host(b)) for W, b in p], [host(x) for x in out]
