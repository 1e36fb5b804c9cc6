"""Issue 14: what clumsy or hostile use broke, each checked as it must behave now.

Threads on one network, hyperparameters changed after construction, float32
overflow, saving NaN, one Dense in two networks, cross-entropy targets that
are not distributions, masked arrays, Ctrl-C, unclear CLI flags (output
paths and checkpoints: tests/test_output_paths.py).
"""
import gc
import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.cli import main

from reference import N_SMALL as N, param_copies as _params, same_params as _same, \
    small_data as _data, small_trainer as _trainer



# -- 1: one network, one fit at a time ---------------------------------------------------
def test_a_second_fit_on_a_network_being_trained_raises_at_once_and_the_first_is_intact():
    X, y = _data()
    reference = _trainer()
    reference.fit(X, y, epochs=3)

    first = _trainer()
    inside, go_on, errors = threading.Event(), threading.Event(), []

    def wait_in_epoch_1(record):
        if record["epoch"] == 1:
            inside.set()
            go_on.wait(30)

    worker = threading.Thread(target=lambda: first.fit(X, y, epochs=3, callback=wait_in_epoch_1))
    worker.start()
    assert inside.wait(30)
    try:
        other = gb.Trainer(first.net, loss="cross_entropy", batch_size=6)  # another Trainer
        for trainer in (other, first):                                     # or the same one
            with pytest.raises(RuntimeError, match=r"already being trained by another fit "
                                                   r"\(in thread 'Thread-\d+"):
                trainer.fit(X, y, epochs=1)
    except BaseException as exc:      # keep the worker from waiting forever
        errors.append(exc)
    finally:
        go_on.set()
        worker.join(60)
    assert not errors, errors
    assert _same(first.net.params, reference.net.params)     # nothing interleaved
    assert first.history.loss == reference.history.loss
    first.fit(X, y, epochs=1)                                # free again after it returned


def test_a_callback_cannot_start_a_fit_on_its_own_network():
    X, y = _data()
    t = _trainer()
    with pytest.raises(RuntimeError, match="already being trained"):
        t.fit(X, y, epochs=2, callback=lambda r: t.fit(X, y, epochs=1))
    t.fit(X, y, epochs=1)                                    # released by the error


def test_two_trainers_on_two_networks_in_threads_equal_sequential_runs():
    X, y = _data()
    sequential = [_trainer(seed=s) for s in (1, 2)]
    for t in sequential:
        t.fit(X, y, epochs=3)
    parallel = [_trainer(seed=s) for s in (1, 2)]
    workers = [threading.Thread(target=t.fit, args=(X, y), kwargs={"epochs": 3})
               for t in parallel]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    for a, b in zip(sequential, parallel):
        assert _same(a.net.params, b.net.params)


# -- 8: hyperparameters are checked where they are set, and again at fit ----------------------
@pytest.mark.parametrize("owner, name, value, fragment", [
    ("optimizer", "lr", -1.0, r"lr must be a finite number .*; got -1.0"),
    ("optimizer", "momentum", 1.5, r"momentum must be a finite number .*; got 1.5"),
    ("optimizer", "weight_decay", float("nan"), "weight_decay must be a finite number"),
    ("trainer", "batch_size", 0, "batch_size must be an integer >= 1; got 0"),
])
def test_hyperparameters_set_after_construction_are_checked(owner, name, value, fragment):
    t = _trainer()
    target = t if owner == "trainer" else t.optimizer
    old = getattr(target, name)
    with pytest.raises(ValueError, match=fragment):
        setattr(target, name, value)
    assert getattr(target, name) == old
    # a value slipped past the setter (as a subclass might store it) is caught at fit
    object.__setattr__(target, "_" + name, value)
    X, y = _data()
    params = _params(t.net)
    with pytest.raises(ValueError, match=fragment):
        t.fit(X, y, epochs=1)
    assert _same(t.net.params, params) and len(t.history) == 0


def test_good_values_set_after_construction_are_used():
    X, y = _data()
    t, ref = _trainer(), gb.Trainer(_trainer().net, loss="cross_entropy", batch_size=5,
                                    optimizer=gb.SGD(lr=0.01, momentum=0.5))
    t.optimizer.lr, t.batch_size = 0.01, 5
    t.fit(X, y, epochs=1)
    ref.fit(X, y, epochs=1)
    assert _same(t.net.params, ref.net.params)


# -- 5: finiteness after the cast ---------------------------------------------------------------
def test_float32_overflow_is_named_as_such_and_stores_nothing():
    net = gb.MLP.from_sizes([4, 3, 2], dtype="float32", backend="numpy")
    W0 = net.layers[0].W.numpy().copy()
    with pytest.raises(ValueError, match=r"W of Dense\(4, 3\) holds values that overflow "
                                         r"float32 \(largest magnitude 1e\+300"):
        net.layers[0].set_params(W=np.full((3, 4), 1e300))
    assert np.array_equal(net.layers[0].W.numpy(), W0)
    with pytest.raises(ValueError, match="X holds values that overflow float32"):
        net.forward(np.full((2, 4), 1e300))
    with pytest.raises(ValueError, match="X contains NaN or infinite values"):
        net.forward(np.full((2, 4), np.inf))
    net64 = gb.MLP.from_sizes([4, 3, 2], dtype="float64", backend="numpy")
    net64.layers[0].set_params(W=np.full((3, 4), 1e300))        # fine in float64
    assert np.isfinite(net64.layers[0].W.numpy()).all()


# -- 6, 7: what save writes load reads; a layer belongs to one network ----------------------------
def test_save_refuses_nan_and_writes_nothing(tmp_path):
    net = gb.MLP.from_sizes([3, 4, 2], backend="numpy")
    net.layers[1].b[0] = np.nan
    with pytest.raises(ValueError, match=r"b of layers\[1\] contains NaN or infinite values"):
        net.save(tmp_path / "n.safetensors")
    assert os.listdir(tmp_path) == []


def test_a_dense_in_two_networks_is_refused_and_copy_is_independent():
    first = gb.MLP.from_sizes([3, 4, 2], backend="numpy")
    layer = first.layers[0]
    with pytest.raises(ValueError, match=r"already belongs to another MLP.*layer.copy\(\)"):
        gb.MLP([layer, gb.Dense(4, 2)], backend="numpy")
    twin = gb.MLP([layer.copy(), first.layers[1].copy()], backend="numpy")
    assert _same(twin.params, first.params)
    twin.layers[0].W[0, 0] += 1.0                 # training one leaves the other alone
    assert not _same(twin.params, first.params)
    del first, twin                               # a layer whose network is gone is free
    gc.collect()
    gb.MLP([layer, gb.Dense(4, 2)], backend="numpy")


# -- 11: cross-entropy targets are distributions; masked arrays are refused -----------------------
@pytest.mark.parametrize("row, fragment", [
    ([1.0, 1.0, 0.0], "sum 2, smallest entry 0"),
    ([0.0, 0.0, 0.0], "sum 0, smallest entry 0"),
    ([1.5, -0.5, 0.0], "sum 1, smallest entry -0.5"),
])
def test_cross_entropy_targets_must_be_distributions(row, fragment):
    X, y = _data()
    Y = np.eye(3)[y]
    Y[7] = row
    t = _trainer()
    for call in (lambda: t.fit(X, Y), lambda: t.net.loss(X, Y, loss="cross_entropy"),
                 lambda: t.net.gradients(X, Y, loss="cross_entropy")):
        with pytest.raises(ValueError, match=rf"Y row 7 is not a probability distribution "
                                             rf"\({fragment}\)"):
            call()
    assert len(t.history) == 0


def test_soft_cross_entropy_targets_and_squared_losses_are_accepted():
    X, _ = _data()
    rng = np.random.default_rng(3)
    soft = rng.dirichlet(np.ones(3), N).astype(np.float32)          # rows sum to 1 +- 1e-7
    net = gb.MLP.from_sizes([5, 4, 3], output_activation="softmax", dtype="float32",
                            backend="numpy")
    assert np.isfinite(net.loss(X, soft, loss="cross_entropy"))
    doubled = 2 * soft                                                # fine for sse
    sse = gb.MLP.from_sizes([5, 4, 3], backend="numpy")
    assert np.isfinite(sse.loss(X, doubled))


def test_masked_arrays_are_refused():
    X, y = _data()
    net = gb.MLP.from_sizes([5, 4, 3], backend="numpy")
    with pytest.raises(TypeError, match=r"X is a masked array.*X.filled\(value\)"):
        net.forward(np.ma.masked_greater(X, 1.0))
    with pytest.raises(TypeError, match=r"training Y is a masked array.*Y.filled\(value\)"):
        _trainer().fit(X, np.ma.masked_equal(y, 0))


# -- 10: set_params before the layer joins a network ----------------------------------------------
def test_set_params_before_the_layer_joins_a_network():
    layer = gb.Dense(2, 3)
    layer.set_params(W=np.arange(6.0).reshape(3, 2), b=[1.0, 2.0, 3.0])
    net = gb.MLP([layer], backend="numpy")
    assert np.array_equal(net.layers[0].W.numpy(), np.arange(6.0).reshape(3, 2))
    assert np.array_equal(net.layers[0].b.numpy(), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"W of Dense\(2, 3\) must have shape \(3, 2\)"):
        gb.Dense(2, 3).set_params(W=np.zeros((2, 3)))


# -- 10: Ctrl-C stops at a step boundary -------------------------------------------------------------
def _stepping(trainer, at, then):
    """Wrap trainer's SGD step: after the `at`-th one completes, call then()."""
    inner, count = trainer._update_mini_batch, [0]

    def step(*args):
        out = inner(*args)
        count[0] += 1
        if count[0] == at:
            then()
        return out

    trainer._update_mini_batch = step


class _Stop(Exception):
    pass


@pytest.fixture
def python_sigint():
    """SIGINT as Python sets it at start-up: a job a shell starts in the
    background (`cmd &`) inherits SIGINT ignored, and Python leaves it so."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def _sigint_default():
    """In a child before exec: SIGINT back to the default, for its Python."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_at_a_step_boundary_and_keeps_the_last_checkpoint(tmp_path, python_sigint):
    X, y = _data()
    path = tmp_path / "c.safetensors"
    t = _trainer()                                          # 10 steps an epoch
    _stepping(t, 13, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt, match=r"the last good checkpoint is .*c.safetensors "
                                                r"\(epoch 1, step 0\)"):
        t.fit(X, y, epochs=3, checkpoint=path)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler    # restored
    reference = _trainer()                                  # exactly 13 steps, then stop
    _stepping(reference, 13, lambda: (_ for _ in ()).throw(_Stop()))
    with pytest.raises(_Stop):
        reference.fit(X, y, epochs=3)
    assert _same(t.net.params, reference.net.params)        # the network at step 13
    assert len(t.history) == 1 and sorted(os.listdir(tmp_path)) == ["c.safetensors"]
    resumed, whole = _trainer(), _trainer()                 # the checkpoint is whole
    resumed.fit(X, y, epochs=3, checkpoint=path, resume=True)
    whole.fit(X, y, epochs=3)
    assert _same(resumed.net.params, whole.net.params)


def test_cli_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    ckpt = tmp_path / "c.safetensors"
    child = subprocess.Popen([sys.executable, "-m", "gpubackprop", "train", "--device", "cpu",
                              "--epochs", "300", "--checkpoint", str(ckpt), "--no-progress"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, preexec_fn=_sigint_default)
    try:
        for line in child.stdout:
            if line.startswith("epoch"):
                break
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"the last good checkpoint is {ckpt} (epoch " in lines[0]


@pytest.mark.parametrize("flags, fragment", [
    (["--batch", "0"], "--batch must be an integer >= 1; got 0"),
    (["--batch", "-3"], "--batch must be an integer >= 1; got -3"),
    (["--tol", "nan"], "--tol must be a finite number"),
    (["--tol", "0"], "--tol must be a finite number"),
])
def test_cli_gradcheck_flags_are_checked(flags, fragment, capsys):
    assert main(["gradcheck"] + flags) == 2
    captured = capsys.readouterr()
    assert fragment in captured.err and "gradcheck: backprop" not in captured.out


def test_an_interrupted_fit_closes_its_progress_bar(monkeypatch, capsys, python_sigint):
    from gpubackprop import progress

    monkeypatch.setattr(progress, "_isatty", lambda stream: True)   # draw the bar anyway
    X, y = _data()
    t = _trainer()
    _stepping(t, 13, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt, match="no checkpoint"):
        t.fit(X, y, epochs=3, progress=True)
    assert progress._active == []                   # closed: later notices go nowhere stale
    assert capsys.readouterr().err.endswith("\n")   # the bar's line is finished
