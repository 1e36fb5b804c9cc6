"""Divergence: a NaN/inf cost or parameter stops training with TrainingDiverged
naming epoch and step; the network and the momentum buffers go back to the
state at the start of the epoch or at the last checkpoint, and the checkpoint
file written before is left untouched."""
import json
import warnings

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.backends import unavailable_reason

BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(
    unavailable_reason(name, gb.device("cpu")) is not None,
    reason=str(unavailable_reason(name, gb.device("cpu"))))) for name in ("numpy", "numba")]


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)), rng.normal(size=(n, 2))


def _trainer(backend, lr=0.01, momentum=0.5, batch_size=3, seed=5, activation="tanh"):
    net = gb.MLP.from_sizes([4, 6, 2], activation=activation, output_activation="identity",
                            backend=backend, seed=1)
    return gb.Trainer(net, loss="sse", optimizer=gb.SGD(lr=lr, momentum=momentum),
                      batch_size=batch_size, seed=seed)


def _copy_state(t):
    return ([(W.copy(), b.copy()) for W, b in t.net.params],
            [(vW.copy(), vb.copy()) for vW, vb in t.state.velocities])


def _assert_state(t, state):
    params, vel = state
    for (W, b), (W0, b0) in zip(t.net.params, params):
        assert np.isfinite(W).all() and np.isfinite(b).all()
        assert np.array_equal(W, W0) and np.array_equal(b, b0)
    for (vW, vb), (vW0, vb0) in zip(t.state.velocities, vel):
        assert np.array_equal(vW, vW0) and np.array_equal(vb, vb0)


def _file_state(path):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    f = load_file(str(path))
    with safe_open(str(path), framework="numpy") as st:
        meta = {k: json.loads(v) for k, v in st.metadata().items()
                if k in ("config", "epoch", "step")}
    n = len(meta["config"]["network"]["sizes"]) - 1
    return ([(f[f"W{i}"], f[f"b{i}"]) for i in range(n)],
            [(f[f"vW{i}"], f[f"vb{i}"]) for i in range(n)]), meta


@pytest.mark.parametrize("backend", BACKENDS)
def test_huge_learning_rate_diverges_and_keeps_the_epoch_start(tmp_path, backend):
    X, Y = _data()
    path = tmp_path / "run.safetensors"
    good = _trainer(backend)
    good.fit(X, Y, epochs=1, checkpoint=path)
    state, old_bytes = _copy_state(good), path.read_bytes()

    t = _trainer(backend, lr=1e8)                     # same run, absurd learning rate
    with warnings.catch_warnings():
        warnings.simplefilter("error")                # no overflow warnings leak out
        with pytest.raises(gb.TrainingDiverged, match=r"epoch 1, step \d+") as info:
            t.fit(X, Y, epochs=3, checkpoint=path, resume=True)
    assert info.value.epoch == 1 and 0 <= info.value.step < 20
    _assert_state(t, state)                           # the snapshot of the epoch start
    assert path.read_bytes() == old_bytes             # the previous checkpoint, untouched
    assert len(t.history) == 1                        # no record of the failed epoch


@pytest.mark.parametrize("backend", BACKENDS)
def test_divergence_mid_epoch_goes_back_to_the_last_checkpoint(tmp_path, backend):
    X, Y = _data()
    bs, bad_step = 3, 17
    order = np.random.default_rng(5).permutation(len(X))   # epoch 0's shuffle (seed 5)
    X[order[bad_step * bs]] = 1e200                   # finite, but its cost overflows
    path = tmp_path / "run.safetensors"
    t = _trainer(backend, batch_size=bs, activation="identity")
    with pytest.raises(gb.TrainingDiverged) as info:
        t.fit(X, Y, epochs=2, checkpoint=path, checkpoint_every=5)
    assert (info.value.epoch, info.value.step) == (0, bad_step)
    assert "epoch 0, step 17" in str(info.value)
    state, meta = _file_state(path)
    assert (meta["epoch"], meta["step"]) == (0, 15)   # the last good point
    _assert_state(t, state)


def test_non_finite_parameters_are_refused_before_training():
    X, Y = _data()
    t = _trainer("numpy")
    t.net.layers[0].W[0, 0] = np.nan
    with pytest.raises(ValueError, match="parameters contain NaN"):
        t.fit(X, Y, epochs=1)
    assert len(t.history) == 0


def test_training_goes_on_after_a_divergence_with_a_smaller_lr():
    X, Y = _data()
    t = _trainer("numpy", lr=1e8)
    with pytest.raises(gb.TrainingDiverged):
        t.fit(X, Y, epochs=1)
    t.optimizer.lr = 0.01
    t.fit(X, Y, epochs=2)
    assert len(t.history) == 2 and all(np.isfinite(t.history.loss))


@pytest.mark.parametrize("backend", BACKENDS)
def test_later_fits_copy_the_epoch_start_into_the_same_arrays(backend):
    """The last good copy is taken again, into the arrays of the one before
    (fresh memory each epoch costs page faults), and stays right when the
    optimizer's state changes shape between fits (momentum switched on)."""
    X, Y = _data()
    t = _trainer(backend, momentum=0.0)
    t.fit(X, Y, epochs=2)
    kept = [W for W, _ in t._last_good.params]
    t.optimizer.momentum = 0.5                        # velocities appear
    t.fit(X, Y, epochs=1)
    assert all(W is W0 for (W, _), W0 in zip(t._last_good.params, kept))
    start = _copy_state(t)
    t.optimizer.lr = 1e8
    with pytest.raises(gb.TrainingDiverged, match="epoch 0"):
        t.fit(X, Y, epochs=2)
    _assert_state(t, start)                           # parameters and velocities put back
    t.optimizer.lr, t.optimizer.momentum = 0.01, 0.0
    t.fit(X, Y, epochs=1)
    assert np.isfinite(t.history.loss).all()


def test_a_trainer_given_another_network_goes_back_to_that_one():
    X, Y = _data()
    t = _trainer("numpy", momentum=0.0)
    t.fit(X, Y, epochs=1)
    t.net = gb.MLP.from_sizes([4, 6, 2], activation="tanh", output_activation="identity",
                              backend="numpy", seed=7)
    start = [(W.copy(), b.copy()) for W, b in t.net.params]
    t.optimizer.lr = 1e8
    with pytest.raises(gb.TrainingDiverged):
        t.fit(X, Y, epochs=1)
    assert all(np.array_equal(W, W0) and np.array_equal(b, b0)
               for (W, b), (W0, b0) in zip(t.net.params, start))
