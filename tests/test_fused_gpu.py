"""The fused MLP kernels on a real GPU at real sizes, against the float64
NumPy reference.

Skipped (with the reason) where CuPy or a CUDA device is missing; written to
run unchanged on an H100/H200 with CuPy installed:

    pytest tests/test_fused_gpu.py -ra

tests/test_fused_backend.py runs the same backend on the cuda-emulator (and
on a GPU) on small shapes; this file adds what only a GPU can run in
seconds: 784-wide inputs, 128-wide layers, depth 8, batches of several tiles,
every activation and cost; fused_forward, fused_gradients (one step in mode
GRAD) and train_epoch (the fused SGD loop) against the reference; bitwise
reproducibility of the deterministic build; the atomic build within
tolerance; a network the kernels do not take is refused; a Trainer run.
"""
import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import losses
from gpubackprop.activations import HIDDEN_NAMES
from gpubackprop.backends.base import Backend, Hyper
from gpubackprop.device import cuda_status

from reference import rel_err

from emulated import problem, reference_epoch

_N_GPUS, _REASON = cuda_status()
pytestmark = pytest.mark.skipif(_N_GPUS == 0, reason=f"needs CuPy and a CUDA GPU ({_REASON})")

if _N_GPUS:
    from gpubackprop.backends.fused_backend import FusedBackend

    GPU = gb.device("cuda")
REF = Backend(gb.device("cpu"))
TOL = {"float32": 2e-5, "float64": 1e-11}
CASES = [
    # sizes, activations, loss, batch
    ([19, 17, 3], ("sigmoid", "identity"), "sse", 1),
    ([33, 48, 48, 10], ("tanh", "tanh", "softmax"), "cross_entropy", 7),
    ([5, 100, 4], ("relu", "sigmoid"), "sse", 129),
    ([64, 128, 128, 128, 10], ("leaky_relu",) * 3 + ("identity",), "cross_entropy", 300),
    ([784, 30, 10], ("sigmoid", "sigmoid"), "sse", 10),
    ([784, 128, 10], ("softplus", "softmax"), "sse", 257),
    ([12] + [17] * 7 + [2], ("tanh",) * 7 + ("softmax",), "cross_entropy", 65),
    ([3, 20], ("identity",), "mse", 64),
]


def _ids(c):
    return f"{'-'.join(map(str, c[0]))}_{c[1][0]}_{c[2]}_B{c[3]}"


def _host(x):
    return gb.device("cpu").asarray(x)

def _on_gpu(params):
    return [(GPU.asarray(W), GPU.asarray(b)) for W, b in params]


def _f64(params):
    return [(W.astype(np.float64), b.astype(np.float64)) for W, b in params]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_forward_and_gradients_match_reference(case, dtype):
    sizes, acts, loss, batch = case
    params, X, Y = problem(sizes, batch, dtype)
    be, cost = FusedBackend(GPU), losses.get(loss)
    be.check_network(sizes, acts, dtype)
    out = be.fused_forward(_on_gpu(params), acts, GPU.asarray(X))
    assert out.dtype == np.dtype(dtype) and out.shape == (batch, sizes[-1])
    a = REF.feedforward(_f64(params), acts, X.astype(np.float64))
    assert rel_err(out, a[-1]) < TOL[dtype]
    grads = be.fused_gradients(_on_gpu(params), acts, GPU.asarray(X), GPU.asarray(Y), cost)
    delta = REF.backward(_f64(params), acts, a, Y.astype(np.float64), cost)
    for (dW, db), d, a_prev in zip(grads, delta, a[:-1]):
        rW, rb = REF.weight_gradient(d, a_prev, cost.scale(batch, sizes[-1]))
        assert rel_err(dW, rW) < TOL[dtype] and rel_err(db, rb) < TOL[dtype]


def _train_epoch(params, X, Y, order, hyper, deterministic=True):
    be = FusedBackend(GPU, deterministic=deterministic)
    p = _on_gpu(params)
    state = gb.SGD(hyper.lr, hyper.momentum, hyper.weight_decay).init_state(p)
    out = be.train_epoch(p, state, GPU.asarray(X), GPU.asarray(Y), GPU.asarray(order), hyper)
    return [(_host(W), _host(b)) for W, b in p], [_host(x) for x in out]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES[1:6], ids=[_ids(c) for c in CASES[1:6]])
def test_train_epoch_matches_reference(case, dtype):
    sizes, acts, loss, batch = case
    params, X, Y = problem(sizes, 3 * batch + 5, dtype)        # ragged last step
    order = np.random.default_rng(1).permutation(X.shape[0])
    hyper = Hyper(acts, losses.get(loss), batch, lr=0.05, momentum=0.9, weight_decay=1e-3)
    ref, ref_costs, ref_correct = reference_epoch(params, X, Y, order, hyper)
    p, (costs, correct, bad) = _train_epoch(params, X, Y, order, hyper)
    tol = 10 * TOL[dtype]                                     # a few steps of drift
    for (W, b), (rW, rb) in zip(p, ref):
        assert rel_err(W, rW) < tol and rel_err(b, rb) < tol
    assert costs.shape == ref_costs.shape and rel_err(costs, ref_costs) < tol
    assert int(bad) == -1
    if dtype == "float64":
        assert int(correct) == ref_correct


def test_deterministic_build_is_bitwise_reproducible():
    sizes, acts = [784, 128, 64, 10], ("relu", "tanh", "softmax")
    params, X, Y = problem(sizes, 1000, "float32")
    order = np.random.default_rng(2).permutation(1000)
    hyper = Hyper(acts, losses.get("cross_entropy"), 250, lr=0.1, momentum=0.9)
    first, second = (_train_epoch(params, X, Y, order, hyper)[0] for _ in range(2))
    for (W1, b1), (W2, b2) in zip(first, second):
        assert np.array_equal(W1, W2) and np.array_equal(b1, b2)


def test_atomic_build_agrees_within_tolerance():
    sizes, acts = [33, 100, 10], ("sigmoid", "softmax")
    params, X, Y = problem(sizes, 300, "float32")
    order = np.random.default_rng(4).permutation(300)
    hyper = Hyper(acts, losses.get("cross_entropy"), 100, lr=0.1)
    ref, _, _ = reference_epoch(params, X, Y, order, hyper)
    p, _ = _train_epoch(params, X, Y, order, hyper, deterministic=False)
    for (W, b), (rW, rb) in zip(p, ref):
        assert rel_err(W, rW) < 1e-4 and rel_err(b, rb) < 1e-4


def test_a_network_the_kernels_do_not_take_is_refused():
    with pytest.raises(ValueError, match="128"):
        gb.MLP.from_sizes([8, 200, 3], device="cuda", backend="fused")


def test_trainer_runs_the_fused_path():
    from gpubackprop.data import load_digits

    d = load_digits(dtype="float32")
    net = gb.MLP.from_sizes([64, 30, 10], activation="sigmoid", device="cuda",
                            dtype="float32", backend="fused", seed=0)
    calls, fast = [], net.backend.train_epoch
    net.backend.train_epoch = lambda *args: calls.append(len(args[4])) or fast(*args)
    history = gb.Trainer(net, loss="sse", optimizer=gb.SGD(lr=3.0), batch_size=10,
                         seed=0).fit(d.X_train, d.y_train, epochs=3)
    assert calls and history[-1]["accuracy"] > 0.8


@pytest.mark.parametrize("act", HIDDEN_NAMES)
def test_every_hidden_activation(act):
    sizes, acts = [20, 48, 48, 5], (act, act, "identity")
    params, X, Y = problem(sizes, 70, "float64")
    cost = losses.get("sse")
    grads = FusedBackend(GPU).fused_gradients(_on_gpu(params), acts, GPU.asarray(X),
                                              GPU.asarray(Y), cost)
    a = REF.feedforward(params, acts, X)
    delta = REF.backward(params, acts, a, Y, cost)
    for (dW, db), d, a_prev in zip(grads, delta, a[:-1]):
        rW, rb = REF.weight_gradient(d, a_prev, cost.scale(70, 5))
        assert rel_err(dW, rW) < 1e-11 and rel_err(db, rb) < 1e-11
