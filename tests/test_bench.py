"""`gpubackprop bench`: one tiny smoke run through the command (JSON schema,
every regime, the table, the plot), the peers computing the same SGD step as
the float64 NumPy reference, the GPU mode's code path on the CPU, the
arguments, and the pytest-benchmark suites of bench/ run once."""
import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import types

import numpy as np
import pytest

from reference import rel_err
from gpubackprop import bench
from gpubackprop.bench import cli, machine, report, run

ROOT = pathlib.Path(__file__).resolve().parents[1]

TOP_KEYS = {"schema", "complete", "date", "commit", "version", "command", "profile",
            "profile_about", "repeats", "warmup", "dtype", "devices", "peers", "backends",
            "flop_convention", "regimes", "results", "sweep", "sweep_config",
            "crossover_batch", "skipped", "targets", "loadavg_at_start", "loadavg_at_end",
            "warnings", "machine"}
ROW_KEYS = {"regime", "device", "impl", "role", "label", "backend", "batch", "samples_per_run",
            "steps_per_run", "times_s", "time_s", "samples_per_s", "gflops", "gemm_fraction",
            "ratio", "notes", "path"}
STAT_KEYS = {"median", "q1", "q3", "iqr", "min", "max", "n"}


def _has(module):
    try:
        __import__(module)
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The one smoke run: `--tiny` on the CPU through the command's entry point,
    default peers, files into --out."""
    out = tmp_path_factory.mktemp("bench")
    assert bench.main(["--tiny", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    return json.loads((out / "bench.json").read_text()), out


def test_tiny_run_has_every_regime_and_the_schema(tiny_run):
    result, _ = tiny_run
    assert set(result) == TOP_KEYS
    assert result["schema"] == bench.SCHEMA and result["complete"] is True
    assert result["profile"] == "tiny" and result["devices"] == ["cpu"]
    assert isinstance(result["commit"], str) and result["commit"] not in ("", "None")
    assert result["machine"]["gpus"] == []
    assert result["targets"] == []                       # tiny checks code paths only
    assert [r["name"] for r in result["regimes"]] == list(bench.REGIME_NAMES)
    for name in bench.REGIME_NAMES:
        rows = {r["impl"]: r for r in result["results"] if r["regime"] == name}
        ours, gemm = rows["gpubackprop"], rows["floor"]
        assert ours["role"] == "ours" and ours["ratio"] == pytest.approx(1.0)
        assert gemm["role"] == "gemm" and gemm["gemm_fraction"] == pytest.approx(1.0)
        for row in rows.values():
            assert set(row) == ROW_KEYS
            assert set(row["samples_per_s"]) == STAT_KEYS
            s = row["samples_per_s"]
            assert 0 < s["min"] <= s["q1"] <= s["q3"] <= s["max"]
            assert s["n"] == result["repeats"] == len(row["times_s"])
            assert row["ratio"] == pytest.approx(row["time_s"] / ours["time_s"])
            assert row["gemm_fraction"] == pytest.approx(gemm["time_s"] / row["time_s"])
            assert s["median"] == pytest.approx(row["samples_per_run"] / row["time_s"])
    batches = {r["batch"] for r in result["sweep"]}
    assert batches == set(bench.PROFILES["tiny"].sweep.batches)
    assert result["crossover_batch"] is None             # no GPU here


def test_tiny_tables_read_right(tiny_run):
    result, out = tiny_run
    text = bench.format_table(result)
    for word in ("samples/s", "GEMM share", "time/ours", "GEMM-only (np.matmul)",
                 "batch sweep", "no CPU/GPU crossover", f"commit {result['commit']}"):
        assert word in text, word
    for absent in ("MISSED", "targets", "peak mem", "% floor", "commit None"):
        assert absent not in text, absent
    assert not re.search(r"issue \d", text, re.IGNORECASE)
    # one line per skipped peer, one line per note
    skips = [line for line in text.splitlines() if line.strip().startswith("torch-graphs on")]
    assert len(skips) <= 1
    if _has("sklearn"):
        assert text.count("MLPClassifier's only choice") == 1
    md = (out / "bench.md").read_text()
    assert md.count("|---|") >= len(bench.REGIME_NAMES)


@pytest.mark.skipif(not _has("matplotlib"), reason="matplotlib is not installed")
def test_plot_has_every_line_and_the_crossover(tiny_run, tmp_path):
    result, out = tiny_run
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fake = dict(result, devices=["cpu", "cuda:0"], sweep=[])
    for batch, cpu, gpu in ((4, 100.0, 10.0), (16, 100.0, 150.0), (64, 100.0, 900.0)):
        for dev, v in (("cpu", cpu), ("cuda:0", gpu)):
            for impl, f in (("gpubackprop", 1.0), ("torch-eager", 0.5)):
                fake["sweep"].append({"device": dev, "impl": impl, "label": impl,
                                      "role": "ours" if f == 1.0 else "peer", "batch": batch,
                                      "samples_per_s": {"median": v * f, "min": v * f,
                                                        "max": v * f}})
    fake["crossover_batch"] = bench.crossover(fake["sweep"])
    assert fake["crossover_batch"] == 16
    path, message = bench.plot(fake, str(tmp_path / "gpu.png"))
    assert path and os.path.getsize(path) > 1000, message


def test_crossover_needs_the_gpu_to_stay_ahead():
    rows = [{"device": d, "role": "ours", "batch": b, "samples_per_s": {"median": v}}
            for d, b, v in (("cpu", 1, 5), ("cuda:0", 1, 9), ("cpu", 2, 5), ("cuda:0", 2, 1),
                            ("cpu", 4, 5), ("cuda:0", 4, 6), ("cpu", 8, 5), ("cuda:0", 8, 60))]
    assert bench.crossover(rows) == 4
    assert bench.crossover([r for r in rows if r["device"] == "cpu"]) is None


def _reference_step(params, X, Y, regime):
    """One full-batch SGD step in float64 NumPy: the math every peer must do."""
    f = {"sigmoid": lambda z: 1 / (1 + np.exp(-z)), "relu": lambda z: np.maximum(z, 0),
         "identity": lambda z: z}
    df = {"sigmoid": lambda a: a * (1 - a), "relu": lambda a: (a > 0) * 1.0}
    acts = [regime.activation] * (len(params) - 1) + [regime.output]
    Ws = [(W.astype(np.float64), b.astype(np.float64)) for W, b in params]
    a = [X.astype(np.float64)]
    for (W, b), act in zip(Ws, acts):
        a.append(f[act](a[-1] @ W.T + b))
    B = len(X)
    if regime.loss == "cross_entropy":
        p = np.exp(a[-1] - a[-1].max(1, keepdims=True))
        delta = p / p.sum(1, keepdims=True) - Y
    else:
        delta = 2 * (a[-1] - Y) * df[regime.output](a[-1])
    new = []
    for l in range(len(Ws) - 1, -1, -1):
        W, b = Ws[l]
        new.insert(0, (W - regime.lr * delta.T @ a[l] / B, b - regime.lr * delta.sum(0) / B))
        if l:
            delta = (delta @ W) * df[acts[l - 1]](a[l])
    return new


def _trained_params(case):
    if case.impl == "gpubackprop":
        return [(np.asarray(W), np.asarray(b)) for W, b in case.net.params]
    if case.impl.startswith("torch"):
        lins = [m for m in case.model if hasattr(m, "weight")]
        return [(m.weight.detach().numpy(), m.bias.detach().numpy()) for m in lins]
    return [(np.asarray(W), np.asarray(b)) for W, b in case.params]


@pytest.mark.parametrize("name", ["small", "medium"])
def test_peers_train_the_same_step(name):
    """One step over the whole data set (so the shuffle cannot matter): ours,
    PyTorch and JAX land on the float64 reference's weights."""
    import dataclasses

    tiny = bench.PROFILES["tiny"].regime(name)
    regime = dataclasses.replace(tiny, batch=tiny.samples, steps=1)
    data, params = bench.make_data(regime, seed=3), bench.initial_params(regime, seed=3)
    ref = _reference_step(params, data.X, data.Y, regime)
    cases, skipped = bench.make_cases("cpu", regime, data, params,
                                      ["torch-eager", "jax"], seed=3)
    assert [c.impl for c in cases][0] == "gpubackprop"
    assert len(cases) + len(skipped) == 3
    for case in cases:
        case.run()
        got = _trained_params(case)
        for (W, b), (W_ref, b_ref) in zip(got, ref):
            assert rel_err(W, W_ref) < 1e-5, case.impl
            assert rel_err(b, b_ref) < 1e-5, case.impl


def test_gpu_mode_code_path_on_the_cpu():
    """The GPU check's command with --device cpu: the same code path; the JSON
    is handed over after every regime, complete only at the end."""
    seen = []
    result = bench.run_bench(profile="tiny", device="cpu", regimes=["narrow", "small"],
                             peers=["torch-eager", "torch-graphs", "floor"], repeats=1,
                             sweep=False, on_update=lambda r: seen.append(json.dumps(r)))
    seen = [json.loads(s) for s in seen]
    assert [s["complete"] for s in seen] == [False, False, False, True]
    assert seen[0]["results"] == [] and seen[0]["machine"]["cpu"]
    assert {r["regime"] for r in seen[1]["results"]} == {"narrow"}      # the order asked for
    assert {r["regime"] for r in seen[2]["results"]} == {"small", "narrow"}
    assert {r["device"] for r in result["results"]} == {"cpu"}
    impls = {r["impl"] for r in result["results"]}
    assert {"gpubackprop", "floor"} <= impls and not impls & {"jax", "sklearn"}
    graphs = [s for s in result["skipped"] if s["impl"] == "torch-graphs"]
    assert len(graphs) == 1 and graphs[0]["regimes"] == ["narrow", "small"]
    wide = bench.PROFILES["quick"].regime("wide")     # a GPU runs more steps per run
    assert wide.on("cpu") is wide and wide.on("cuda:0").steps == wide.gpu_steps > wide.steps
    assert wide.on("cuda:0").shape == wide.shape


def test_absent_peers_skip_with_their_reason(monkeypatch, tiny_run):
    for module in ("torch", "jax", "sklearn", "sklearn.neural_network", "matplotlib",
                   "matplotlib.backends.backend_agg", "matplotlib.figure"):
        monkeypatch.setitem(sys.modules, module, None)      # import raises ImportError
    regime = bench.PROFILES["tiny"].regime("small")
    data, params = bench.make_data(regime), bench.initial_params(regime)
    cases, skipped = bench.make_cases("cpu", regime, data, params, list(bench.PEERS))
    assert [c.impl for c in cases] == ["gpubackprop", "gpubackprop[numba:fast-path]",
                                       "gpubackprop[numba:loop]", "floor"]
    reasons = dict(skipped)
    for impl, module in (("torch-eager", "torch"), ("jax", "jax"), ("sklearn", "sklearn")):
        assert f"{module} is not installed" in reasons[impl]
    path, message = bench.plot(tiny_run[0], "never.png")
    assert path is None and "matplotlib is not installed" in message


def test_targets_only_at_their_shapes():
    full = bench.PROFILES["full"].regime("wide")
    rows = [{"regime": "wide", "device": "cpu", "role": "ours", "impl": "gpubackprop",
             "ratio": 1.0, "gemm_fraction": 0.8},
            {"regime": "wide", "device": "cpu", "role": "peer", "impl": "torch-eager",
             "ratio": 1.3, "gemm_fraction": 0.7},
            {"regime": "wide", "device": "cpu", "role": "gemm", "impl": "floor",
             "ratio": 0.8, "gemm_fraction": 1.0}]
    result = {"results": rows, "devices": ["cpu"], "peers": ["torch-eager", "floor"]}
    got = {t["peer"]: t for t in run.targets(result, "quick", [full])}
    assert got["torch-eager"]["met"] is True and got["floor"]["met"] is False
    assert got["floor"]["value"] == 0.8
    small = bench.PROFILES["tiny"].regime("wide")
    assert run.targets(result, "quick", [small]) == []


@pytest.mark.parametrize("told, auto_ran, met", [
    ((1.02, 1.6), None, True), ((0.93, 1.0), None, False),
    ((0.93, 1.0), "fast-path", True), ((0.93, 1.0), "loop", False), ((1.6, 0.93), "loop", True)])
def test_the_paths_target_holds_auto_to_its_faster_path(told, auto_ran, met):
    """auto within 5% of the faster of its own fast path and loop (the told
    rows' time / auto's time >= 0.95), or running that row's very code (the
    rows then differ by run-to-run spread alone, and the line says so)."""
    full = bench.PROFILES["full"].regime("narrow")
    rows = [{"regime": "narrow", "device": "cpu", "role": "ours", "impl": "gpubackprop",
             "ratio": 1.0, "gemm_fraction": 0.6, "path": auto_ran}] + [
        {"regime": "narrow", "device": "cpu", "role": "ours-backend", "path": path,
         "impl": f"gpubackprop[numba:{path}]", "ratio": r, "gemm_fraction": 0.6}
        for path, r in zip(("fast-path", "loop"), told)]
    result = {"results": rows, "devices": ["cpu"], "peers": ["paths"]}
    (t,) = run.targets(result, "quick", [full])
    assert t["peer"] == "paths" and t["value"] == min(told) and t["met"] is met
    line = report._target_line(t)
    same_code = auto_ran == ("fast-path", "loop")[told.index(min(told))]
    assert ("the faster row's code" in line) is same_code, line
    assert line.endswith(")" if same_code else ("met" if met else "MISSED")), line


def test_timed_rounds_shuffle_and_a_failing_peer_drops_out(monkeypatch):
    """Each round takes the cases in another order (seeded: the same every
    run), so no case always follows the same one; a peer that fails is
    reported and the others go on."""
    from gpubackprop.bench import timing

    monkeypatch.setattr(timing, "SETTLE_S", 0)
    monkeypatch.setattr(timing, "SHORT_RUN_S", 0)       # no untimed runs between
    ran = []

    class Fake:
        def __init__(self, name, fail_on=None):
            self.impl = self.name = name
            self.role, self.fail_on, self.calls = "peer", fail_on, 0

        def run(self):
            self.calls += 1
            if self.calls == self.fail_on:
                raise RuntimeError("broken")
            ran.append(self.name)

    def timed(fail_on=None):
        ran.clear()
        cases = [Fake("a"), Fake("b"), Fake("c"), Fake("d", fail_on=fail_on)]
        return timing.time_cases(cases, repeats=6, warmup=1), list(ran)

    (times, failed), order = timed()
    assert order[:8] == ["a", "a", "b", "b", "c", "c", "d", "d"]   # warm-up and probe, in order
    rounds = [order[8 + 4 * r:12 + 4 * r] for r in range(6)]
    assert all(sorted(r) == ["a", "b", "c", "d"] for r in rounds)
    before = {}
    for r in rounds:
        for prev, case in zip(r, r[1:]):
            before.setdefault(case, set()).add(prev)
    assert all(len(p) > 1 for p in before.values()), before   # no fixed neighbour
    assert len({tuple(r) for r in rounds}) > 2
    assert timed()[1] == order                                # seeded: the same each run
    (times, failed), order = timed(fail_on=4)                 # d: warm-up, probe, a run, fails
    assert {c.name: len(t) for c, t in times.items()} == {"a": 6, "b": 6, "c": 6}
    assert failed == [("d", "failed: RuntimeError: broken")] and order.count("d") == 3


def test_a_short_case_runs_untimed_then_back_to_back_in_each_sample(monkeypatch):
    """Whether a case is short is decided by a run after its warm-up (which
    may compile): a short one runs once untimed before each timed sample,
    and the sample is the mean of the runs back to back that fill
    SHORT_RUN_S; a long one runs once per sample; only timed runs count.
    (A fake clock: each run moves it by the run's seconds.)"""
    from gpubackprop.bench import timing

    clock = [0.0]
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(
        perf_counter=lambda: clock[0], sleep=lambda s: None))
    monkeypatch.setattr(timing, "SHORT_RUN_S", 0.05)
    ran = []

    class Fake:
        role = "peer"

        def __init__(self, name, seconds):
            self.impl, self.seconds = name, list(seconds)

        def run(self):
            ran.append(self.impl[0])
            clock[0] += self.seconds.pop(0) if len(self.seconds) > 1 else self.seconds[0]

    # short: a 0.08 s warm-up (it compiled), then runs of 0.011-0.012 s: 5 fill 0.05 s
    short = Fake("short", [0.08, 0.012, 0.011, 0.011, 0.011, 0.011, 0.011, 0.011, 0.01])
    long_ = Fake("long", [0.06])
    times, failed = timing.time_cases([short, long_], repeats=2, warmup=1)
    assert "".join(ran[:4]) == "ssll"                           # warm-up (compiles), probe
    samples = "".join(ran[4:]).replace("ssssss", "S")           # 1 untimed + 5 timed
    assert sorted(samples) == ["S", "S", "l", "l"], ran
    assert [len(times[c]) for c in (short, long_)] == [2, 2] and failed == []
    assert sorted(times[short]) == pytest.approx([0.01, 0.011]) and times[long_] == [0.06] * 2


def test_the_paths_target_pairs_the_rounds():
    """With a time from every round in both rows, the paths target is the
    median of the rounds' ratios (each pair ran under the same load), not the
    ratio of the medians; rows from unequal rounds fall back to the latter."""
    full = bench.PROFILES["full"].regime("medium")
    ours = {"regime": "medium", "device": "cpu", "role": "ours", "impl": "gpubackprop",
            "ratio": 1.0, "gemm_fraction": 0.6, "path": "loop", "times_s": [1.0, 1.2, 1.1]}
    told = {"regime": "medium", "device": "cpu", "role": "ours-backend", "path": "fast-path",
            "impl": "gpubackprop[numba:fast-path]", "ratio": 1.0, "gemm_fraction": 0.6,
            "times_s": [1.05, 1.1, 1.2]}
    result = {"results": [ours, told], "devices": ["cpu"], "peers": ["paths"]}
    (t,) = run.targets(result, "quick", [full])
    assert t["value"] == pytest.approx(1.05) and t["met"] is True
    told["times_s"] = [1.05, 1.1]
    (t,) = run.targets(result, "quick", [full])
    assert t["value"] == 1.0


def test_output_paths():
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    paths = cli._paths(p.parse_args([]))
    assert paths == {k: os.path.join("bench-results", f) for k, f in
                     (("json", "bench.json"), ("markdown", "bench.md"), ("plot", "bench.png"))}
    paths = cli._paths(p.parse_args(["--out", "none", "--json", "x.json", "--plot", "none"]))
    assert paths == {"json": "x.json", "markdown": None, "plot": None}


def test_help_and_code_never_cite_issues(capsys):
    from gpubackprop.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--help"])
    text = capsys.readouterr().out
    assert "--device" in text and not re.search(r"issue", text, re.IGNORECASE)
    for path in (ROOT / "gpubackprop" / "bench").glob("*.py"):
        assert not re.search(r"issue \d", path.read_text(), re.IGNORECASE), path


def test_bad_arguments_are_refused_before_any_work(capsys):
    for argv, words in ((["--regimes", "huge"], "small,medium,narrow,wide"),
                        (["--peers", "tensorflow"], "torch-eager"),
                        (["--repeats", "0"], "repeats"),
                        (["--device", "tpu"], "--device")):
        assert bench.main(["--tiny", "--quiet", "--out", "none"] + argv) == 2
        assert words in capsys.readouterr().err
    if os.path.isdir("/proc") and not os.path.exists("/proc/gpubackprop-out"):
        assert bench.main(["--tiny", "--quiet", "--out", "/proc/gpubackprop-out"]) == 2
        assert "--out (its json file) '/proc/gpubackprop-out/bench.json'" in \
            capsys.readouterr().err
    from gpubackprop.device import cuda_status

    if not cuda_status()[0]:
        assert bench.main(["--tiny", "--quiet", "--out", "none", "--device", "cuda"]) == 2
        assert "needs a GPU" in capsys.readouterr().err


def test_commit_is_never_none():
    assert machine.commit("abc1234") == "abc1234"
    found = machine.commit()
    assert isinstance(found, str) and found and found != "None"


@pytest.mark.skipif(not _has("pytest_benchmark"), reason="pytest-benchmark is not installed")
def test_benchmark_suites_run_once():
    """bench/ (pytest-benchmark) at tiny sizes, timing disabled, so the suites
    cannot rot; the peers' code paths are covered above, so they are left out."""
    if not (ROOT / "bench" / "conftest.py").exists():
        pytest.skip("bench/ is not here (installed package)")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "bench"), "-q", "-p", "no:cacheprovider",
         "--benchmark-disable", "-k", "not torch and not sklearn and not jax"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def test_ranks_runs_strong_and_weak_scaling(tmp_path):
    """--ranks: the same training at 1 and 2 MPI ranks, a row per mode and world size."""
    from gpubackprop.distributed import launch

    try:
        launch.find_mpiexec()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    md = tmp_path / "scaling.md"
    args = cli.main(["--ranks", "1,2", "--tiny", "--out", "none", "--markdown", str(md),
                     "--json", str(tmp_path / "scaling.json")])
    assert args == 0
    rows = json.loads((tmp_path / "scaling.json").read_text())["scaling"]
    assert [(r["mode"], r["ranks"]) for r in rows] == [("strong", 1), ("strong", 2),
                                                       ("weak", 1), ("weak", 2)]
    assert all(r["samples_per_s"] > 0 and r["cores"] >= 1 for r in rows)
    assert rows[1]["comm_backend"] == "mpi" and rows[3]["global_batch"] == 2 * rows[2]["global_batch"]
    assert "| weak | 2 |" in md.read_text()


@pytest.mark.parametrize("ranks", ["0", "1,x", ""])
def test_ranks_must_be_world_sizes(ranks, capsys):
    assert cli.main(["--ranks", ranks, "--out", "none"]) == 2
    assert "--ranks" in capsys.readouterr().err
