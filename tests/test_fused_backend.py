"""The `fused` backend (kernels/fused_mlp.cu, the real kernels) on the
cuda-emulator, and on a GPU when there is one, against the float64 NumPy
reference: train_epoch with momentum, weight decay, a ragged last batch,
sse / mse / cross entropy, depths 1 to 4 (and 8), the widest layer (128,
shared memory above 48 KiB: the opt-in path); fused_forward and
fused_gradients; the deterministic build bitwise repeatable and equal, up to
float order, to the atomic build; networks it refuses.
"""
import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import losses
from gpubackprop.backends.base import Hyper
from gpubackprop.backends.fused_backend import FusedBackend, shared_bytes

from emulated import TOL, host as _host, problem, reference_epoch, run_train_epoch
from emulated import dev  # noqa: F401  (the device fixture)
from reference import rel_err



# sizes, activations, loss, batch size, rows (ragged last batches)
CASES = [
    ([7, 5], ("sigmoid",), "sse", 16, 40),
    ([40, 33, 4], ("tanh", "softmax"), "cross_entropy", 70, 150),
    ([20, 9, 48, 3], ("relu", "softplus", "softmax"), "sse", 65, 100),
    ([13, 8, 7, 6, 5], ("leaky_relu", "tanh", "sigmoid", "identity"), "cross_entropy", 64, 129),
    ([33, 128, 10], ("tanh", "identity"), "mse", 64, 70),
    ([6] + [9] * 7 + [3], ("sigmoid",) * 7 + ("softmax",), "cross_entropy", 30, 31),
    ([129, 65, 1], ("tanh", "sigmoid"), "sse", 1, 7),
]


def _train(dev, params, X, Y, order, hyper, deterministic=True):
    be = FusedBackend(dev, deterministic=deterministic)
    be.check_network([params[0][0].shape[1]] + [W.shape[0] for W, _ in params],
                     hyper.activations, params[0][0].dtype)
    return run_train_epoch(be, dev, params, X, Y, order, hyper)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=[f"{len(c[0]) - 1}x{max(c[0][1:])}-{c[2]}" for c in CASES])
def test_train_epoch_matches_the_numpy_loop(dev, case, dtype):
    sizes, acts, loss, bs, n = case
    params, X, Y = problem(sizes, n, dtype, seed=len(sizes))
    hyper = Hyper(acts, losses.get(loss), bs, lr=0.1, momentum=0.9, weight_decay=1e-3)
    order = np.random.default_rng(2).permutation(n)
    ref, ref_costs, ref_correct = reference_epoch(params, X, Y, order, hyper)
    p, (costs, correct, bad) = _train(dev, params, X, Y, order, hyper)
    for (W, b), (W0, b0) in zip(p, ref):
        assert rel_err(W, W0) <= TOL[dtype] and rel_err(b, b0) <= TOL[dtype]
    assert rel_err(costs, ref_costs) <= TOL[dtype] and int(bad) == -1
    if dtype == "float64":
        assert int(correct) == ref_correct


def test_widest_layer_opts_in_to_more_shared_memory():
    assert shared_bytes([33, 128, 10], "float64") > 48 * 1024


def test_deterministic_build_is_bitwise_repeatable_and_matches_the_atomic_build(dev):
    params, X, Y = problem([40, 33, 17, 5], 300, "float32", seed=9)
    hyper = Hyper(("tanh", "sigmoid", "softmax"), losses.get("cross_entropy"), 150, lr=0.2,
                  momentum=0.5)
    order = np.random.default_rng(3).permutation(300)
    runs = [_train(dev, params, X, Y, order, hyper) for _ in range(2)]
    for (W1, b1), (W2, b2) in zip(runs[0][0], runs[1][0]):
        assert np.array_equal(W1, W2) and np.array_equal(b1, b2)
    atomic = _train(dev, params, X, Y, order, hyper, deterministic=False)
    for (W1, b1), (W2, b2) in zip(runs[0][0], atomic[0]):
        assert rel_err(W2, W1.astype(np.float64)) <= 1e-5
        assert rel_err(b2, b1.astype(np.float64)) <= 1e-5


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_fused_forward_and_gradients(dev, dtype):
    from gpubackprop.backends.base import Backend

    sizes, acts = [50, 20, 33, 4], ("softplus", "relu", "softmax")
    params, X, Y = problem(sizes, 129, dtype, seed=5)
    be = FusedBackend(dev)
    p = [(dev.asarray(W), dev.asarray(b)) for W, b in params]
    ref = Backend(gb.device("cpu"))
    p64 = [(W.astype(np.float64), b.astype(np.float64)) for W, b in params]
    a = ref.feedforward(p64, acts, X.astype(np.float64))
    assert rel_err(_host(be.fused_forward(p, acts, dev.asarray(X))), a[-1]) <= TOL[dtype]
    cost = losses.get("sse", "sum")
    delta = ref.backward(p64, acts, a, Y.astype(np.float64), cost)
    grads = be.fused_gradients(p, acts, dev.asarray(X), dev.asarray(Y), cost)
    for (dW, db), d, a_prev in zip(grads, delta, a[:-1]):
        assert rel_err(_host(dW), d.T @ a_prev) <= TOL[dtype]
        assert rel_err(_host(db), d.sum(0)) <= TOL[dtype]


@pytest.mark.parametrize("sizes,acts,says", [
    ([5, 129, 3], ("tanh", "identity"), "up to 128 wide"),
    ([5] * 10, ("tanh",) * 9, "1 to 8 layers"),
    ([5, 6, 3], ("softmax", "identity"), "activation 'softmax'"),
])
def test_check_network_refuses_what_the_kernels_do_not_take(sizes, acts, says):
    be = FusedBackend.__new__(FusedBackend)       # no device needed to ask
    be.device = gb.device("cpu")
    with pytest.raises(ValueError, match=says):
        be.check_network(sizes, acts, "float32")


def test_options_are_constructor_arguments(dev):
    with pytest.raises(TypeError, match="deterministic must be True or False"):
        FusedBackend(dev, deterministic="no")
    with pytest.raises(ValueError, match="cuda or cuda-emulator"):
        FusedBackend(gb.device("cpu"))
