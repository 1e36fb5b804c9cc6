"""Issue 14, output paths: one run per checkpoint path (an advisory lock naming
the holder's pid), every output path proven writable before the first step
(missing folder, read-only file system, full disk), a full disk mid-run
naming the path, resume of a missing file, symlinks resolved once and loops
refused, bench outputs checked before any timing."""
import contextlib
import errno
import os
import subprocess
import sys
import textwrap
import time

import pytest

from gpubackprop import paths
from gpubackprop.cli import main

from reference import param_copies as _params, same_params as _same, \
    small_data as _data, small_trainer as _trainer



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
             ".c.safetensors.tmp-1-cc": True,                   # a live process (init)
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
    err = capsys.readouterr().err                                        # says so, by name
    assert str(ckpt) in err and "resume" in err and "Traceback" not in err
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
        r = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot remount the tmpfs read-only here ({r.stderr.strip()!r})")
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
