"""Issue 14: what clumsy or hostile use broke, each checked as it must behave now.

Threads on one network, two processes on one checkpoint, output paths that
cannot be written (missing folder, read-only file system, full disk),
hyperparameters changed after construction, resume of a missing file or a
symlink loop, float32 overflow, saving NaN, one Dense in two networks.
"""
import contextlib
import errno
import gc
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import paths
from gpubackprop.cli import main

N = 60


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(N, 5)), rng.integers(0, 3, N)


def _trainer(seed=0, momentum=0.5, sizes=(5, 8, 3)):
    net = gb.MLP.from_sizes(list(sizes), activation="tanh", output_activation="softmax",
                            backend="numpy", seed=seed)
    return gb.Trainer(net, loss="cross_entropy", optimizer=gb.SGD(lr=0.3, momentum=momentum),
                      batch_size=6, seed=seed)


def _params(net):
    return [(W.copy(), b.copy()) for W, b in net.params]


def _same(a, b):
    return all(np.array_equal(W, W2) and np.array_equal(b1, b2)
               for (W, b1), (W2, b2) in zip(a, b))


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


# -- 2: one checkpoint path, one run ---------------------------------------------------------
_HOLDER = textwrap.dedent("""
    import sys
    import numpy as np
    import gpubackprop as gb
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 5)), rng.integers(0, 3, 60)
    net = gb.MLP.from_sizes([5, 8, 3], activation="tanh", output_activation="softmax",
                            backend="numpy", seed=0)
    t = gb.Trainer(net, loss="cross_entropy", optimizer=gb.SGD(lr=0.3, momentum=0.5),
                   batch_size=6, seed=0)
    def hold(record):                  # after each epoch: say so, wait for a line
        print("epoch", record["epoch"], flush=True)
        sys.stdin.readline()
    t.fit(X, y, epochs=2, checkpoint=sys.argv[1], callback=hold)
    print("done", flush=True)
""")


def test_a_second_process_on_a_checkpoint_path_fails_at_start_naming_the_first(tmp_path):
    path = tmp_path / "run.safetensors"
    child = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], cwd=tmp_path,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "epoch 1", child.stderr
        before = path.read_bytes()
        X, y = _data()
        t = _trainer()
        params = _params(t.net)
        with pytest.raises(RuntimeError, match=rf"checkpoint .*run.safetensors' is in use by "
                                               rf"another run \(pid {child.pid}\)"):
            t.fit(X, y, epochs=2, checkpoint=path, resume="auto")
        assert _same(t.net.params, params) and len(t.history) == 0   # nothing ran
        assert path.read_bytes() == before                       # nothing written
        out, _ = child.communicate("\n\n", timeout=120)          # the first run finishes
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0 and out.split()[-1] == "done"
    assert sorted(os.listdir(tmp_path)) == ["run.safetensors"]    # lock file gone
    t.fit(X, y, epochs=2, checkpoint=path, resume=True)             # now it is free
    assert len(t.history) == 2


def test_the_lock_also_holds_between_trainers_of_one_process(tmp_path):
    path = tmp_path / "c.safetensors"
    with paths.PathLock(path):
        X, y = _data()
        with pytest.raises(RuntimeError, match=rf"in use by another run \(pid {os.getpid()}\)"):
            _trainer().fit(X, y, checkpoint=path)
    _trainer().fit(X, y, checkpoint=path)


def test_stale_temps_only_of_dead_writers_are_removed(tmp_path):
    path = tmp_path / "c.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    names = {f".c.safetensors.tmp-{dead}-aa": False,            # a killed writer's
             f".c.safetensors.tmp-{os.getpid()}-bb": True,      # this process's own
             f".c.safetensors.tmp-1-cc": True,                  # a live process (init)
             ".c.safetensors.tmp-0123abcd": False}              # old naming: no pid
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    removed = {os.path.basename(p) for p in paths.remove_stale_temps(path)}
    assert removed == {n for n, keep in names.items() if not keep}
    assert all((tmp_path / n).exists() == keep for n, keep in names.items())


# -- 3: output paths proven writable before the first step ------------------------------------
def test_cli_save_to_a_missing_folder_fails_before_training(tmp_path, capsys):
    bad = tmp_path / "nonexistent" / "net.safetensors"
    assert main(["train", "--device", "cpu", "--epochs", "50", "--save", str(bad)]) == 2
    captured = capsys.readouterr()
    assert "--save" in captured.err and "does not exist" in captured.err
    assert "epoch" not in captured.out and "gpubackprop train:" not in captured.out


def test_cli_resume_auto_starts_then_continues(tmp_path, capsys):
    ckpt = tmp_path / "c.safetensors"
    common = ["train", "--device", "cpu", "--checkpoint", str(ckpt), "--no-progress"]
    assert main(common + ["--epochs", "1", "--resume"]) == 2           # nothing to resume
    assert "nothing to resume at" in capsys.readouterr().err
    assert main(common + ["--epochs", "1", "--resume", "auto"]) == 0   # starts
    assert main(common + ["--epochs", "2", "--resume", "auto"]) == 0   # continues
    assert "epoch 2/2" in capsys.readouterr().out.replace("   ", " ").replace("  ", " ")


def test_bench_output_paths_are_checked_before_any_timing(tmp_path, capsys):
    started = time.perf_counter()
    assert main(["bench", "--tiny", "--out", "none", "--json", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gpubackprop bench: error: --json must be a file path; got the folder")
    assert "\nbench: " not in err                      # no progress line: nothing was timed
    assert time.perf_counter() - started < 10


@contextlib.contextmanager
def _tmpfs(folder, size):
    """A small tmpfs mounted at `folder` (skips where mounting is not allowed)."""
    folder.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_disk_too_small_for_the_checkpoint_fails_before_the_first_step(tmp_path):
    X, y = _data()
    t = _trainer(sizes=(5, 300, 3))              # W0 + W1 + momentum > 16 KiB
    params = _params(t.net)
    with _tmpfs(tmp_path / "small", "16k") as folder:
        path = folder / "c.safetensors"
        with pytest.raises(OSError, match=r"checkpoint .*c.safetensors' cannot be written: "
                                          r"No space left on device") as info:
            t.fit(X, y, epochs=2, checkpoint=path)
        assert info.value.errno == errno.ENOSPC
        assert os.listdir(folder) == []          # no probe, no lock left
    assert _same(t.net.params, params) and len(t.history) == 0


def test_a_read_only_file_system_fails_before_the_first_step(tmp_path):
    X, y = _data()
    with _tmpfs(tmp_path / "ro", "1m") as folder:
        path = folder / "c.safetensors"
        _trainer().fit(X, y, checkpoint=path)                      # a good checkpoint
        before = path.read_bytes()
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        t = _trainer()
        with pytest.raises(OSError, match=r"c.safetensors.*Read-only file system") as info:
            t.fit(X, y, epochs=2, checkpoint=path, resume=True)
        assert info.value.errno == errno.EROFS and len(t.history) == 0
        assert path.read_bytes() == before


def test_a_full_disk_mid_run_names_the_path_and_keeps_the_previous_checkpoint(tmp_path,
                                                                               monkeypatch):
    X, y = _data()
    path = tmp_path / "c.safetensors"
    t = _trainer()
    saves, real_fdopen = [], os.fdopen

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd, *args, **kwargs):       # the second checkpoint write meets a full disk
        saves.append(fd)
        f = real_fdopen(fd, *args, **kwargs)
        return Full(f) if len(saves) == 2 else f

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(OSError, match=r"cannot write checkpoint .*c.safetensors': No space "
                                      r"left on device; the previous checkpoint there \(if "
                                      r"any\) is intact") as info:
        t.fit(X, y, epochs=3, checkpoint=path)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["c.safetensors"]      # no temp, no lock left
    probe = _trainer()
    probe.fit(X, y, epochs=1, checkpoint=path, resume=True)        # epoch 1 is there, whole
    assert len(probe.history) == 1


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


# -- 9: resume needs the file; symlinks resolved once, loops refused --------------------------
def test_resume_true_without_the_file_says_so_and_writes_nothing(tmp_path):
    X, y = _data()
    t = _trainer()
    params = _params(t.net)
    with pytest.raises(FileNotFoundError, match=r"nothing to resume at .*typo.safetensors'.*"
                                                r"pass resume=False to start a new run"):
        t.fit(X, y, epochs=2, checkpoint=tmp_path / "typo.safetensors", resume=True)
    assert _same(t.net.params, params) and os.listdir(tmp_path) == []


def test_a_symlink_loop_is_refused_and_left_alone(tmp_path):
    loop = tmp_path / "c.safetensors"
    os.symlink(loop, loop)
    X, y = _data()
    for resume in (False, "auto", True):
        with pytest.raises(ValueError, match=r"checkpoint .*c.safetensors' is a symbolic link "
                                             r"loop"):
            _trainer().fit(X, y, checkpoint=loop, resume=resume)
    assert os.path.islink(loop) and os.readlink(loop) == str(loop)


def test_a_symlinked_checkpoint_is_written_through_the_link(tmp_path):
    target = tmp_path / "real" / "c.safetensors"
    target.parent.mkdir()
    link = tmp_path / "link.safetensors"
    os.symlink(target, link)                      # dangling until the first save
    X, y = _data()
    _trainer().fit(X, y, epochs=1, checkpoint=link)
    assert os.path.islink(link) and target.is_file()
    t = _trainer()
    t.fit(X, y, epochs=2, checkpoint=link, resume=True)
    assert len(t.history) == 2 and os.path.islink(link)


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
