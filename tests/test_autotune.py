"""autotune.py: auto's choice between the compiled epoch and the loop is
measured once per shape and machine, recorded, reused and explained.

No test here asserts which path is faster (that is a benchmark's job,
bench/RESULTS.md); they check that the measurement runs, what it records,
that it is reused, and that it changes nothing in the training.
"""
import json
import logging

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import autotune, cli
from gpubackprop.device import cpu_blas

SIZES = [24, 70, 10]          # batch 1024 x 80 activations: above MEASURE_ABOVE


@pytest.fixture
def record(tmp_path):
    """A fresh record file for the test (and the session's one back after)."""
    previous = autotune.cache_path()
    path = tmp_path / "autotune.json"
    autotune.use_cache(path)
    yield path
    autotune.use_cache(previous)


def data(n=2048, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, SIZES[0])).astype(np.float32), rng.integers(0, SIZES[-1], n)


def trainer(fast_path="auto", backend="numba", sizes=SIZES, batch=1024, momentum=0.5):
    net = gb.MLP.from_sizes(sizes, activation="relu", output_activation="identity",
                            dtype="float32", seed=1, backend=backend)
    return gb.Trainer(net, loss="cross_entropy", batch_size=batch, seed=2, fast_path=fast_path,
                      optimizer=gb.SGD(lr=0.1, momentum=momentum))


def test_measured_once_recorded_and_reused(record, monkeypatch, caplog):
    assert 1024 * sum(SIZES[1:]) >= autotune.MEASURE_ABOVE
    X, y = data()
    first = trainer()
    with caplog.at_level(logging.INFO, logger="gpubackprop"):
        first.fit(X, y, epochs=1)
    choice = first.path_choice
    assert choice.source == "measured"
    assert set(choice.seconds) == {"fast path", "loop"} and min(choice.seconds.values()) > 0
    assert choice.fast_path == (choice.seconds["fast path"]
                                <= autotune.LOOP_MARGIN * choice.seconds["loop"])
    assert "ms/step" in choice.reason and "autotune" in caplog.text

    saved = json.loads(record.read_text())
    (mine,) = saved["machines"].values()
    assert mine["machine"] == autotune.machine()
    ((key, entry),) = mine["choices"].items()
    assert json.loads(key)["sizes"] == SIZES and entry["fast_path"] == choice.fast_path

    def no_measuring(run):
        raise AssertionError("measured again")

    monkeypatch.setattr(autotune, "_measure", no_measuring)
    again = trainer()                    # this process: reused
    again.fit(X, y, epochs=1)
    assert again.path_choice.source == "recorded"
    assert again.path_choice.fast_path == choice.fast_path
    autotune.use_cache(record)           # as a new process would: read from the file
    third = trainer()
    third.fit(X, y, epochs=1)
    assert third.path_choice.source == "recorded" and record.name in third.path_choice.reason


def test_the_record_is_read_again_only_when_it_changed(record, monkeypatch):
    """Every fit of auto asks for its choice: an unchanged file is not parsed
    again, and one another process rewrote is."""
    X, y = data()
    trainer().fit(X, y, epochs=1)                       # measured and recorded
    reads = []
    real_read = autotune._read
    monkeypatch.setattr(autotune, "_read", lambda: reads.append(1) or real_read())
    fits = trainer()
    for _ in range(3):
        fits.fit(X, y, epochs=1)
        assert fits.path_choice.source == "recorded"
    assert len(reads) <= 1
    saved = json.loads(record.read_text())            # another process flips the choice
    (mine,) = saved["machines"].values()
    ((key, entry),) = mine["choices"].items()
    entry["fast_path"] = not entry["fast_path"]
    record.write_text(json.dumps(saved))
    fits.fit(X, y, epochs=1)
    assert fits.path_choice.fast_path == entry["fast_path"] and len(reads) == 2


def test_measuring_changes_nothing_in_the_training(record):
    """The timed steps run on scratch copies: a measured fit has the bits of
    a fit told the same path."""
    X, y = data()
    measured = trainer()
    h = measured.fit(X, y, epochs=2)
    assert measured.path_choice.source == "measured"
    told = trainer(fast_path=measured.path_choice.fast_path)
    h_told = told.fit(X, y, epochs=2)
    assert told.path_choice.source == "argument"
    for (W, b), (W0, b0) in zip(measured.net.params, told.net.params):
        assert np.array_equal(W, W0) and np.array_equal(b, b0)
    for v, v0 in zip(measured.state.arrays().values(), told.state.arrays().values()):
        assert np.array_equal(v, v0)
    assert h.loss == h_told.loss and h.accuracy == h_told.accuracy


def test_another_machine_or_library_version_measures_again(record, monkeypatch):
    X, y = data()
    trainer().fit(X, y, epochs=1)
    other = dict(autotune.machine(), numpy="0.0-other")
    monkeypatch.setattr(autotune, "machine", lambda: other)
    autotune.use_cache(record)
    t = trainer()
    t.fit(X, y, epochs=1)
    assert t.path_choice.source == "measured"
    assert len(json.loads(record.read_text())["machines"]) == 2


def test_arguments_and_rules_skip_the_measurement(record, monkeypatch):
    monkeypatch.setattr(autotune, "_measure", lambda run: pytest.fail("measured"))
    X, y = data()
    for fast_path in (True, False):
        t = trainer(fast_path=fast_path)
        t.fit(X, y, epochs=1)
        assert t.path_choice == (fast_path, f"fast_path={fast_path} was asked for", {},
                                 "argument")
    small = trainer(sizes=[24, 8, 10], batch=32)          # far under MEASURE_ABOVE
    small.fit(X, y, epochs=1)
    assert small.path_choice.fast_path and small.path_choice.source == "rule"
    numpy = trainer(backend="numpy")                      # no fast path to choose
    numpy.fit(X, y, epochs=1)
    assert not numpy.path_choice.fast_path and "no fast path" in numpy.path_choice.reason
    assert autotune.choices() == []       # (the small step's kernels may be: "kernels")


def test_bad_fast_path_arguments():
    with pytest.raises(ValueError, match="fast_path must be 'auto', True or False; got 'yes'"):
        trainer(fast_path="yes")
    with pytest.raises(ValueError, match="fast_path must be"):
        trainer(fast_path=1)
    X, y = data(64)
    t = trainer(fast_path=True, backend="numpy", batch=16)
    with pytest.raises(ValueError, match="fast_path=True, but backend 'numpy' has no fast path"):
        t.fit(X, y, epochs=1)


def test_a_broken_or_unwritable_record_is_measured_over(record, tmp_path):
    X, y = data()
    record.write_text("{not json")
    t = trainer()
    t.fit(X, y, epochs=1)
    assert t.path_choice.source == "measured"
    assert json.loads(record.read_text())["version"] == autotune.FILE_VERSION
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    autotune.use_cache(blocker / "autotune.json")       # its folder cannot be made
    t = trainer()
    t.fit(X, y, epochs=1)                               # no error: kept in this process
    assert t.path_choice.source == "measured"
    t = trainer()
    t.fit(X, y, epochs=1)
    assert t.path_choice.source == "recorded" and "this process" in t.path_choice.reason


def test_info_prints_the_recorded_choices_and_forget_clears_them(record, capsys):
    X, y = data()
    t = trainer()
    t.fit(X, y, epochs=1)
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"1 recorded in {record}" in out
    path = "fast path" if t.path_choice.fast_path else "loop"
    assert f"numba {SIZES} relu/identity cross_entropy, batch 1024, float32: {path} (" in out
    autotune.forget()
    assert autotune.choices() == []
    cli.main(["info"])
    assert "0 recorded" in capsys.readouterr().out


def test_no_home_folder_keeps_the_choices_in_this_process(monkeypatch):
    previous = autotune.cache_path()
    autotune.use_cache(None)                      # the default file: under the home folder

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(autotune.Path, "home", staticmethod(no_home))
    try:
        assert autotune.cache_path() is None
        X, y = data()
        t = trainer()
        t.fit(X, y, epochs=1)
        assert t.path_choice.source == "measured" and "this process" in t.path_choice.reason
        assert len(autotune.choices()) == 1
    finally:
        monkeypatch.undo()
        autotune.use_cache(previous)


def test_the_small_forward_gemm_kernel_is_measured_once_and_recorded(record, monkeypatch,
                                                                      capsys):
    """The compiled epoch's small forward GEMMs (under SMALL_GEMM
    multiply-adds): its own kernel or BLAS, timed once per machine and dtype
    at Nielsen's shape, recorded, reused by a new process (the file), printed
    by `gpubackprop info`; shapes at or above SMALL_GEMM never measure."""
    from gpubackprop.backends import numba_cpu, numba_cpu_blocks as blocks

    X, y = data(64)
    t = trainer(sizes=[24, 8, 10], batch=16)
    t.fit(X, y, epochs=1)
    recorded = autotune.choices("kernels")
    ((spec, entry),) = recorded                          # one, for both layers
    assert spec["kernel"] == "small forward GEMM" and spec["dtype"] == "float32"
    assert spec["shape"] == list(numba_cpu.SMALL_GEMM_PROBE)
    assert set(entry["seconds"]) == {"hand", "BLAS"} and min(entry["seconds"].values()) > 0
    s = entry["seconds"]
    assert entry["choice"] == ("hand" if s["BLAS"] >= numba_cpu.HAND_MARGIN * s["hand"]
                               else "BLAS")
    assert t.net.backend._hand_small_gemms(np.dtype(np.float32)) == (entry["choice"] == "hand")

    monkeypatch.setattr(autotune, "_race", lambda *a: pytest.fail("measured again"))
    autotune.use_cache(record)                            # a new process reads the file
    again = trainer(sizes=[24, 8, 10], batch=16)
    again.fit(X, y, epochs=1)
    assert autotune.choices("kernels") == recorded
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "kernels, measured on this machine: 1 recorded" in out
    assert "numba small forward GEMM 10 x 784 x 30 float32: " in out
    assert f"BLAS ({spec['blas']}'s) " in out               # which BLAS was timed
    autotune.forget()
    wide = trainer(fast_path=True, sizes=[24, 1024, 1024], batch=64)   # no layer under
    assert 64 * 24 * 1024 >= blocks.SMALL_GEMM                          # SMALL_GEMM
    wide.fit(X, np.arange(64) % 1024, epochs=1)
    assert autotune.choices("kernels") == []


@pytest.mark.parametrize("loop_s, fast_path, says", [
    (0.98, True, "fast path (1 ms/step) kept: the loop (0.98 ms/step) was not 1.1x faster"),
    (1.2, True, "the fast path (1 ms/step) beat the loop (1.2 ms/step)"),
    (0.85, False, "the loop (0.85 ms/step) beat the fast path (1 ms/step) by more than 1.1x")])
def test_the_loop_must_win_by_loop_margin(record, monkeypatch, loop_s, fast_path, says):
    """The fast path is the default: a loop within LOOP_MARGIN of it (a race
    two processes could see either way round) keeps it; the reason says so."""
    assert autotune.LOOP_MARGIN == 1.1
    real_race = autotune._race
    monkeypatch.setattr(autotune, "_race", lambda run, candidates, *a: (
        {True: 1e-3, False: loop_s * 1e-3}, 10, 5) if candidates == (True, False)
        else real_race(run, candidates, *a))
    X, y = data()
    t = trainer()
    t.fit(X, y, epochs=1)
    assert t.path_choice.fast_path is fast_path and t.path_choice.source == "measured"
    assert says in t.path_choice.reason


@pytest.mark.parametrize("value, says", [
    (2110.4, "2110"), (0.98, "0.98"), (1.0, "1"), (4.66e-5, "0.0000466"), (2.114, "2.11")])
def test_figures_read_without_exponents(value, says):
    """A wide network's 2.1 s step reads "2110 ms/step", not "2.11e+03 ms/step"."""
    assert autotune.figure(value) == says


def test_the_record_names_the_blas_kernels(record):
    """The BLAS libraries and the kernels OpenBLAS picked are part of the
    machine a choice is recorded for: another OPENBLAS_CORETYPE is another
    machine."""
    blas = cpu_blas()
    assert blas and all(b["version"] and b["threads"] >= 1 for b in blas)
    assert autotune.machine()["blas"] == sorted(f"{b['library']} {b['version']} {b['kernels']}"
                                                for b in blas)


def test_a_close_race_keeps_blas(record, monkeypatch):
    """The hand kernel is chosen only where it beats BLAS by HAND_MARGIN:
    timings within the margin (two processes could see them either way
    round) keep BLAS, the default."""
    from gpubackprop.backends import numba_cpu

    for hand_s, expected in ((0.9, "BLAS"), (1 / (numba_cpu.HAND_MARGIN + 0.05), "hand")):
        autotune.forget()
        monkeypatch.setattr(autotune, "_race", lambda run, candidates, s, h=hand_s: (
            {"BLAS": 1.0, "hand": h}, 1, 1))
        be = trainer(sizes=[24, 8, 10], batch=16).net.backend
        assert be._hand_small_gemms(np.dtype(np.float32)) == (expected == "hand")
        assert autotune.choices("kernels")[0][1]["choice"] == expected


def test_the_small_gemm_option(record, monkeypatch):
    """backend_options={"small_gemm": "blas" | "hand"} decides without a
    measurement; other values are refused naming the option."""
    monkeypatch.setattr(autotune, "_race", lambda *a: pytest.fail("measured"))
    X, y = data(64)
    params = {}
    for kernel in ("blas", "hand"):
        net = gb.MLP.from_sizes([24, 8, 10], activation="relu", output_activation="identity",
                                dtype="float64", seed=1, backend="numba",
                                backend_options={"small_gemm": kernel})
        assert net.backend._hand_small_gemms(np.dtype(np.float64)) == (kernel == "hand")
        gb.Trainer(net, loss="cross_entropy", batch_size=16, seed=2).fit(X, y, epochs=1)
        params[kernel] = net.params
    for (W, b), (W0, b0) in zip(params["blas"], params["hand"]):   # the same math
        assert np.abs(W - W0).max() <= 1e-12 * np.abs(W0).max()
    assert autotune.choices("kernels") == []
    with pytest.raises(ValueError, match="small_gemm"):
        gb.MLP.from_sizes([3, 2], backend="numba", backend_options={"small_gemm": "fast"})


@pytest.mark.parametrize("choice", ["hand", "BLAS"])
def test_either_forward_gemm_kernel_trains_to_the_loop_numbers(record, monkeypatch, choice):
    """Whichever kernel the machine measured faster, the epoch's numbers are
    the loop's (float64 1e-12)."""
    monkeypatch.setattr(autotune, "_race", lambda run, candidates, s: (
        {c: 1.0 if c == choice else 2.0 for c in candidates}, 1, 1))     # a clear winner
    rng = np.random.default_rng(3)
    X, y = rng.normal(size=(50, 12)), rng.integers(0, 4, 50)
    params = {}
    for fast_path in (True, False):
        net = gb.MLP.from_sizes([12, 9, 4], activation="sigmoid", seed=1, backend="numba")
        tr = gb.Trainer(net, loss="sse", optimizer=gb.SGD(lr=0.5), batch_size=5, seed=2,
                        fast_path=fast_path)
        tr.fit(X, y, epochs=2)
        params[fast_path] = net.params
    assert all(v["choice"] == choice for _, v in autotune.choices("kernels"))
    for (W, b), (W0, b0) in zip(params[True], params[False]):
        assert np.abs(W - W0).max() <= 1e-12 * np.abs(W0).max()
        assert np.abs(b - b0).max() <= 1e-12 * np.abs(b0).max()
