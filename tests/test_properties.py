"""Property tests over random architectures (2-4 layers, widths 1-9),
activations, costs, reductions and batch sizes:

* backprop agrees with central finite differences (float64, < 1e-6);
* a saved network loads back exactly (parameters, activations, dtype);
* a checkpoint restores exactly what was saved, and a run interrupted at a
  random step and resumed ends bit for bit where an uninterrupted run ends.
"""
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import gpubackprop as gb
from gpubackprop.activations import HIDDEN_NAMES
from gpubackprop.checkpoint import Checkpoint

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# (output activation, cost) pairs the library accepts
OUTPUTS = [("sigmoid", "sse"), ("identity", "sse"), ("tanh", "mse"), ("softplus", "mse"),
           ("identity", "mse"), ("softmax", "cross_entropy"), ("identity", "cross_entropy"),
           ("softmax", "sse")]
KINKED = ("relu", "leaky_relu")
EPS = 1e-5      # truncation error ~ eps**2, round-off ~ 1e-16 / eps: both far below 1e-6


@st.composite
def problems(draw, max_batch=8):
    sizes = draw(st.lists(st.integers(1, 9), min_size=3, max_size=5))
    output, loss = draw(st.sampled_from(OUTPUTS))
    if loss == "cross_entropy" or output == "softmax":
        sizes[-1] = max(sizes[-1], 2)
    hidden = draw(st.lists(st.sampled_from(HIDDEN_NAMES), min_size=len(sizes) - 2,
                           max_size=len(sizes) - 2))
    reduction = draw(st.sampled_from(["mean", "sum"]))
    batch = draw(st.integers(1, max_batch))
    seed = draw(st.integers(0, 2 ** 16))
    return sizes, hidden, output, loss, reduction, batch, seed


def build(sizes, hidden, output, seed, dtype="float64", backend="numpy"):
    layers = [gb.Dense(n_in, n_out, act) for n_in, n_out, act
              in zip(sizes, sizes[1:], hidden + [output])]
    net = gb.MLP(layers, dtype=dtype, backend=backend, seed=seed)
    rng = np.random.default_rng(seed + 1)
    for layer in net.layers:                      # random biases too, never all zeros
        layer.set_params(b=rng.normal(0, 0.5, layer.n_out))
    return net


def data(sizes, loss, batch, seed):
    rng = np.random.default_rng(seed + 2)
    X = rng.normal(size=(batch, sizes[0]))
    if loss == "cross_entropy":
        Y = rng.integers(0, sizes[-1], batch)
    else:
        Y = rng.uniform(-1, 1, (batch, sizes[-1]))
    return X, Y


def pre_activations(net, X):
    """z of every layer (float64), to keep finite differences off the relu kinks."""
    a, zs = X, []
    for layer, (W, b) in zip(net.layers, net.params):
        z = a @ W.T + b
        zs.append((layer.activation, z))
        a = net.backend.dense_forward(a, W, b, layer.activation)
    return zs


@SETTINGS
@given(problems())
def test_backprop_agrees_with_finite_differences(problem):
    sizes, hidden, output, loss, reduction, batch, seed = problem
    net = build(sizes, hidden, output, seed)
    X, Y = data(sizes, loss, batch, seed)
    # a kink of relu/leaky_relu within reach of the finite-difference step
    # makes the two disagree legitimately: stay away from it
    assume(all(np.abs(z).min() > 1e-3 for act, z in pre_activations(net, X) if act in KINKED))
    grads = net.gradients(X, Y, loss=loss, reduction=reduction)
    # central differences carry a round-off of about |C| * 1e-16 / eps: a
    # parameter whose gradient is that small (a dead relu, a saturated unit)
    # has a relative error that is all round-off, which is not what is tested
    cost = abs(net.loss(X, Y, loss=loss, reduction=reduction))
    assume(all(np.linalg.norm(g) > 1e-4 * max(cost, 1.0) for pair in grads for g in pair))
    assert gb.gradcheck(net, X, Y, loss=loss, reduction=reduction, eps=EPS) < 1e-6


@SETTINGS
@given(problems(), st.sampled_from(["float32", "float64"]))
def test_save_then_load_round_trips_exactly(problem, dtype):
    sizes, hidden, output, _, _, batch, seed = problem
    net = build(sizes, hidden, output, seed, dtype=dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.safetensors"
        net.save(path)
        back = gb.load(path, backend=net.backend.name)   # bits: the same backend's
        auto = gb.load(path)                # numba: its own sigma formulas, to rounding
    assert back.sizes == net.sizes and back.dtype == dtype
    assert [layer.activation for layer in back.layers] == hidden + [output]
    for (W, b), (W2, b2) in zip(net.params, back.params):
        assert W2.dtype == np.dtype(dtype) and b2.dtype == np.dtype(dtype)
        assert np.array_equal(W, W2) and np.array_equal(b, b2)
    X, _ = data(sizes, "sse", batch, seed)
    assert np.array_equal(net.forward(X), back.forward(X))
    np.testing.assert_allclose(auto.forward(X), net.forward(X), rtol=1e-5, atol=1e-6)


def _trainer(sizes, hidden, output, loss, reduction, batch, seed, momentum, backend="numpy"):
    net = build(sizes, hidden, output, seed, backend=backend)
    return gb.Trainer(net, loss=loss, reduction=reduction, batch_size=batch, seed=seed,
                      optimizer=gb.SGD(lr=0.01, momentum=momentum, weight_decay=1e-4))


class Interrupt(Exception):
    pass


@SETTINGS
@given(problems(max_batch=5), st.sampled_from([0.0, 0.9]), st.integers(6, 30),
       st.integers(1, 4), st.data())
def test_checkpoints_round_trip_and_resume_exactly(problem, momentum, n, every, draw):
    sizes, hidden, output, loss, reduction, batch, seed = problem
    X, Y = data(sizes, loss, n, seed)
    args = (sizes, hidden, output, loss, reduction, batch, seed, momentum)
    epochs, n_steps = 2, -(-n // batch)
    stop_after = draw.draw(st.integers(1, epochs * n_steps - 1), label="interrupt after step")

    plain = _trainer(*args)                     # no checkpoints at all
    try:
        plain.fit(X, Y, epochs=epochs)
    except gb.TrainingDiverged:                 # (test_divergence.py covers that)
        assume(False)
    with tempfile.TemporaryDirectory() as tmp:
        whole = _trainer(*args)                 # checkpoints, never interrupted
        whole.fit(X, Y, epochs=epochs, checkpoint=Path(tmp) / "whole.safetensors",
                  checkpoint_every=every)
    for (W, b), (W2, b2) in zip(whole.net.params, plain.net.params):
        assert np.array_equal(W, W2) and np.array_equal(b, b2)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ckpt.safetensors"
        # a run that stops (as if killed) after `stop_after` steps ...
        first = _trainer(*args)
        inner, done = first._steps, [0]

        def steps(X_, Y_, order):
            if done[0] >= stop_after:
                raise Interrupt
            done[0] += -(-len(order) // first.batch_size)
            return inner(X_, Y_, order)

        first._steps = steps
        try:
            first.fit(X, Y, epochs=epochs, checkpoint=path, checkpoint_every=every)
        except Interrupt:
            pass
        # ... the checkpoint holds exactly the trainer's state at that point
        if path.exists():
            probe = _trainer(*args)
            epoch, step, _ = Checkpoint(path, probe, n).restore()
            assert 0 <= step < n_steps and epoch <= epochs
            assert probe.history.records == first.history.records[:len(probe.history)]
        # ... and resuming ends where the uninterrupted run ends, bit for bit
        second = _trainer(*args)
        second.fit(X, Y, epochs=epochs, checkpoint=path, checkpoint_every=every,
                   resume="auto")      # interrupted before the first checkpoint: none there
    for (W, b), (W2, b2) in zip(whole.net.params, second.net.params):
        assert np.array_equal(W, W2) and np.array_equal(b, b2)
    if momentum:
        for (v, u), (v2, u2) in zip(whole.state.velocities, second.state.velocities):
            assert np.array_equal(v, v2) and np.array_equal(u, u2)
    # the epoch costs are summed per run of steps between checkpoints, so
    # they are bitwise equal for the same checkpoint_every
    assert whole.history.loss == second.history.loss
    assert whole.history.accuracy == second.history.accuracy
