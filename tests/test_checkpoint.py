"""Checkpoints: atomic writes, SIGKILL mid-epoch then resume bit for bit,
refusal of truncated, corrupted or mismatched files, and CPU determinism."""
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import io as gio
from gpubackprop.backends import unavailable_reason
from gpubackprop.checkpoint import Checkpoint
from safetensors import safe_open
from safetensors.numpy import load_file, save

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "killme_train.py"

_spec = importlib.util.spec_from_file_location("killme_train", SCRIPT)
killme = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(killme)


def _cpu_backends():
    out = []
    for name in ("numpy", "numba"):
        reason = unavailable_reason(name, gb.device("cpu"))
        out.append(pytest.param(name, marks=pytest.mark.skipif(
            reason is not None, reason=str(reason))))
    return out


CPU_BACKENDS = _cpu_backends()
_reference = {}


def reference(backend):
    """The uninterrupted run (computed once per backend)."""
    if backend not in _reference:
        _reference[backend] = killme.train(None, backend)
    return _reference[backend]


def run_script(*args):
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120)


def assert_same_state(out_file, expected):
    got = load_file(str(out_file))
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name].dtype == expected[name].dtype, name
        assert np.array_equal(got[name], expected[name]), f"{name} differs"


JSON_KEYS = {"version", "config", "optimizer", "epoch", "step", "rng_state", "n_correct",
             "history"}


def read_meta(path):
    """The checkpoint's metadata, JSON entries decoded (as safetensors users read it)."""
    with safe_open(str(path), framework="numpy") as f:
        raw = f.metadata()
    return {k: json.loads(v) if k in JSON_KEYS else v for k, v in raw.items()}


# -- SIGKILL ------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_sigkill_mid_epoch_then_resume_is_bitwise_identical(tmp_path, backend):
    expected = reference(backend)          # first, so numba compiles (and caches) here
    ckpt, out = tmp_path / "run.safetensors", tmp_path / "out.safetensors"
    # 9 steps per epoch, checkpoints every 2 steps: dies after step 6 of epoch 1,
    # before the checkpoint of step 6 is written
    r = run_script(ckpt, out, "--backend", backend, "--kill-after-step", 9 + 6)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not out.exists()
    meta = read_meta(ckpt)
    assert (meta["epoch"], meta["step"]) == (1, 4)
    assert len(meta["history"]) == 1

    r = run_script(ckpt, out, "--backend", backend, "--resume")
    assert r.returncode == 0, r.stderr
    assert_same_state(out, expected)
    assert (read_meta(ckpt)["epoch"], read_meta(ckpt)["step"]) == (killme.EPOCHS, 0)


def test_sigkill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path):
    ckpt, out = tmp_path / "run.safetensors", tmp_path / "out.safetensors"
    # saves: e0 s2, e0 s4, e0 s6, e0 s8, end of e0, e1 s2 ... -> killed writing e0 s8
    r = run_script(ckpt, out, "--kill-in-save", 4)
    assert r.returncode == -signal.SIGKILL, r.stderr
    meta = read_meta(ckpt)                       # the previous one, whole and readable
    assert (meta["epoch"], meta["step"]) == (0, 6)
    # left: the half-written temp and the killed run's lock file (its flock died with it)
    stale = [p for p in os.listdir(tmp_path) if p not in ("run.safetensors",
                                                          "run.safetensors.lock")]
    assert len(stale) == 1 and stale[0].startswith(".run.safetensors.tmp-")   # half written

    r = run_script(ckpt, out, "--resume")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(tmp_path)) == ["out.safetensors", "run.safetensors"]  # temp gone
    assert_same_state(out, reference("numpy"))


# -- atomic writes --------------------------------------------------------------------
def _trainer(batch_size=7, sizes=(5, 8, 6, 3), momentum=0.9, seed=11):
    net = gb.MLP.from_sizes(list(sizes), activation="tanh", output_activation="softmax",
                            backend="numpy", seed=7)
    return gb.Trainer(net, loss="cross_entropy", optimizer=gb.SGD(lr=0.2, momentum=momentum),
                      batch_size=batch_size, seed=seed)


def _params(net):
    return [(W.copy(), b.copy()) for W, b in net.params]


def _same_params(p, q):
    return all(np.array_equal(a, c) and np.array_equal(b, d) for (a, b), (c, d) in zip(p, q))


def test_failed_save_leaves_the_old_checkpoint_and_no_temp_file(tmp_path, monkeypatch):
    X, y = killme.data()
    path = tmp_path / "run.safetensors"
    t = _trainer()
    t.fit(X, y, epochs=1, checkpoint=path)
    old = path.read_bytes()

    def disk_full(fd):                                  # the bytes are written, then
        raise OSError(28, "No space left on device")    # the disk is full at fsync

    monkeypatch.setattr(gio.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        t.fit(X, y, epochs=2, checkpoint=path, resume=True)
    monkeypatch.undo()
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["run.safetensors"]
    # and it still resumes
    t2 = _trainer()
    t2.fit(X, y, epochs=1, checkpoint=path, resume=True)
    assert len(t2.history) == 1


def test_save_into_a_missing_folder_is_refused_before_training(tmp_path):
    X, y = killme.data()
    t = _trainer()
    before = _params(t.net)
    with pytest.raises(ValueError, match="checkpoint folder"):
        t.fit(X, y, epochs=1, checkpoint=tmp_path / "nope" / "run.safetensors")
    assert _same_params(before, t.net.params)


# -- refusing bad checkpoints ------------------------------------------------------------
@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "good.safetensors"
    X, y = killme.data()
    _trainer().fit(X, y, epochs=1, checkpoint=path, checkpoint_every=4)
    return path


def _rewrite(src, dst, meta_fn=None, arrays_fn=None):
    """The checkpoint `src` with its metadata or arrays tampered with, as `dst`."""
    arrays, meta = load_file(str(src)), read_meta(src)
    if meta_fn:
        meta_fn(meta)
    if arrays_fn:
        arrays_fn(arrays)
    raw = {k: json.dumps(v) if k in JSON_KEYS else v for k, v in meta.items()}
    with open(dst, "wb") as f:                  # any float dtype, as an attacker would
        f.write(save(arrays, metadata=raw))
    return dst


def _set(path_keys, value):
    def fn(meta):
        d = meta
        for k in path_keys[:-1]:
            d = d[k]
        d[path_keys[-1]] = value
    return fn


BAD_META = [
    ("version", _set(["version"], 99), "version 99"),
    ("version_bool", _set(["version"], True), "'version' must be an integer"),
    ("format", _set(["format"], "gpubackprop.mlp"), "expected a 'gpubackprop.checkpoint'"),
    ("epoch_neg", _set(["epoch"], -1), "'epoch'"),
    ("epoch_str", _set(["epoch"], "1"), "'epoch'"),
    ("step_range", _set(["step"], 9), "'step'"),
    ("rng", _set(["rng_state"], {"bit_generator": "MT19937"}), "rng_state"),
    ("n_correct", _set(["n_correct"], -1), "'n_correct' must be an integer"),
    ("history", _set(["history"], [{"loss": "x"}]), "history"),
    ("sizes_str", _set(["config", "network", "sizes"], "5,8,6,3"), "'sizes'"),
    ("act_unknown", _set(["config", "network", "activations"], ["tanh", "tanh", "sofmax"]),
     "'activations'"),
    ("dtype", _set(["config", "network", "dtype"], "float16"), "'dtype'"),
    ("optimizer", _set(["optimizer"], None), "'optimizer'"),
]


def _nan_W(arrays):
    arrays["W1"] = arrays["W1"].copy()
    arrays["W1"][0, 0] = np.nan


BAD_ARRAYS = [
    ("missing_W", lambda a: a.pop("W2"), "'W2' is missing"),
    ("missing_v", lambda a: a.pop("vb0"), "optimizer state 'vb0' is missing"),
    ("v_shape", lambda a: a.__setitem__("vW1", np.zeros((6, 7))), "'vW1' is float64 \\(6, 7\\)"),
    ("v_inf", lambda a: a.__setitem__("vb1", np.full(6, np.inf)), "'vb1' contains NaN"),
    ("shape", lambda a: a.__setitem__("W0", np.zeros((8, 4))), "shape"),
    ("dtype", lambda a: a.__setitem__("b0", a["b0"].astype(np.float32)), "dtype"),
    ("nan", _nan_W, "NaN"),
    ("extra", lambda a: a.__setitem__("evil", np.zeros(3)), "unexpected arrays"),
    ("step_costs_missing", lambda a: a.pop("step_costs"), "'step_costs' must be"),
    ("step_costs_nan", lambda a: a.__setitem__("step_costs", np.array([np.nan])),
     "'step_costs' must be"),
    ("step_costs_length", lambda a: a.__setitem__("step_costs", np.zeros(1000)),
     "'step_costs' must be"),
]


@pytest.mark.parametrize("case", BAD_META + BAD_ARRAYS, ids=[c[0] for c in BAD_META + BAD_ARRAYS])
def test_bad_checkpoint_is_refused_and_changes_nothing(tmp_path, good_checkpoint, case):
    _, fn, fragment = case
    kw = {"meta_fn": fn} if case in BAD_META else {"arrays_fn": fn}
    path = _rewrite(good_checkpoint, tmp_path / "bad.safetensors", **kw)
    t = _trainer()
    before, rng_before = _params(t.net), t.rng.bit_generator.state
    X, y = killme.data()
    with pytest.raises(ValueError, match=fragment):
        t.fit(X, y, epochs=2, checkpoint=path, resume=True)
    assert _same_params(before, t.net.params)
    assert t.rng.bit_generator.state == rng_before
    assert len(t.history) == 0


@pytest.mark.parametrize("cut", [0.1, 0.5, 0.9, 0.999])
def test_truncated_checkpoint_is_refused(tmp_path, good_checkpoint, cut):
    data = good_checkpoint.read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[:int(len(data) * cut)])
    X, y = killme.data()
    with pytest.raises(ValueError, match="cut.safetensors: .*(not a readable|header claims)"):
        _trainer().fit(X, y, epochs=2, checkpoint=path, resume=True)


def test_corrupted_bytes_are_refused(tmp_path, good_checkpoint):
    data = bytearray(good_checkpoint.read_bytes())
    for i in range(100, len(data) - 100, 97):    # scribble over the header and payload
        data[i] ^= 0x5A
    path = tmp_path / "bad.safetensors"
    path.write_bytes(bytes(data))
    X, y = killme.data()
    with pytest.raises(ValueError, match="bad.safetensors"):
        _trainer().fit(X, y, epochs=2, checkpoint=path, resume=True)


def test_old_npz_checkpoints_are_refused_and_never_unpickled(tmp_path):
    class Boom:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.npz"                # the old format, with a pickle inside
    with open(path, "wb") as f:
        np.savez(f, W0=np.zeros(3), evil=np.array([Boom()], dtype=object))
    X, y = killme.data()
    with pytest.raises(ValueError, match="evil.npz: this is an .npz archive"):
        _trainer().fit(X, y, epochs=2, checkpoint=path, resume=True)
    with pytest.raises(ValueError, match="evil.npz: this is an .npz archive"):
        gb.load(path)
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_is_plain_safetensors(good_checkpoint):
    arrays = load_file(str(good_checkpoint))
    assert sorted(arrays) == sorted([f"{c}{i}" for c in ("W", "b", "vW", "vb") for i in range(3)]
                                    + ["step_costs"])
    meta = read_meta(good_checkpoint)
    assert meta["format"] == "gpubackprop.checkpoint" and meta["version"] == 2
    assert (meta["epoch"], meta["step"]) == (1, 0) and len(meta["history"]) == 1
    assert meta["config"]["network"]["sizes"] == [5, 8, 6, 3]
    assert arrays["vW0"].shape == arrays["W0"].shape == (8, 5)


@pytest.mark.parametrize("change, fragment", [
    ({"batch_size": 5}, "batch_size: checkpoint has 7, this run has 5"),
    ({"sizes": (5, 9, 6, 3)}, "network"),
    ({"momentum": 0.0}, "momentum"),
    ({"seed": 12}, "seed"),
])
def test_checkpoint_of_another_run_is_refused(tmp_path, good_checkpoint, change, fragment):
    t = _trainer(**change)
    X, y = killme.data()
    before = _params(t.net)
    with pytest.raises(ValueError, match=f"does not match this run.*{fragment}"):
        t.fit(X, y, epochs=2, checkpoint=good_checkpoint, resume=True)
    assert _same_params(before, t.net.params)


def test_other_number_of_examples_is_refused(good_checkpoint):
    X, y = killme.data()
    with pytest.raises(ValueError, match="n_samples"):
        _trainer().fit(X[:-1], y[:-1], epochs=2, checkpoint=good_checkpoint, resume=True)


def test_network_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "net.safetensors"
    _trainer().net.save(path)
    X, y = killme.data()
    with pytest.raises(ValueError, match="expected a 'gpubackprop.checkpoint' file"):
        _trainer().fit(X, y, epochs=1, checkpoint=path, resume=True)


# -- round trip, resume semantics --------------------------------------------------------
def test_checkpoint_round_trip_holds_everything(tmp_path):
    X, y = killme.data()
    t = _trainer()
    path = tmp_path / "c.safetensors"
    t.fit(X, y, epochs=2, checkpoint=path)
    t2 = _trainer()
    epoch, step, partial = Checkpoint(path, t2, len(X)).restore()
    assert (epoch, step) == (2, 0)
    assert partial[0].shape == (0,) and partial[1] == 0
    assert _same_params(t.net.params, t2.net.params)
    for (a, b), (c, d) in zip(t.state.velocities, t2.state.velocities):
        assert np.array_equal(a, c) and np.array_equal(b, d)
    assert t2.rng.bit_generator.state == t.rng.bit_generator.state
    assert t2.history.records == t.history.records


def test_resume_without_a_file_starts_fresh_and_a_finished_run_stays_finished(tmp_path):
    X, y = killme.data()
    path = tmp_path / "c.safetensors"
    a = _trainer()
    with pytest.raises(FileNotFoundError, match="nothing to resume at .*c.safetensors.*"
                                                "pass resume=False to start a new run"):
        a.fit(X, y, epochs=2, checkpoint=path, resume=True)  # resume=True needs the file
    assert not os.listdir(tmp_path)                          # no lock file, no probe left
    a.fit(X, y, epochs=2, checkpoint=path, resume="auto")    # no file yet: from scratch
    b = _trainer()
    b.fit(X, y, epochs=2)
    assert _same_params(a.net.params, b.net.params)
    c = _trainer()
    c.fit(X, y, epochs=2, checkpoint=path, resume="auto")    # nothing left to do
    assert _same_params(a.net.params, c.net.params) and len(c.history) == 2


# -- determinism -------------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_same_seed_same_bits_on_the_cpu(backend):
    first = killme.train(None, backend)
    second = killme.train(None, backend)
    for name in first:
        assert np.array_equal(first[name], second[name]), name
    assert np.array_equal(first["W0"], reference(backend)["W0"])
