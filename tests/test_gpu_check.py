"""bench/gpu_check.sh, the one-call GPU check, in its dry mode on the CPU: the
steps in their order, each under its own timeout, the GPU parts on the
cuda-emulator or skipped with a line, at most 8 files under $OUT and none in
a subfolder, so the script cannot rot before a GPU reaches it."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET

import pytest

from gpubackprop.device import emulator_status

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"
STEPS = ["install", "preflight", "kernels", "training", "bench", "sanitizer", "ops"]
ALLOWED = {"summary.txt", "tests.xml", "bench.json", "bench.md", "bench.png", "logs.tar.gz"}


def _run(out, *args):
    env = dict(os.environ, OUT=str(out),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], capture_output=True,
                          text=True, env=env, timeout=300, cwd=ROOT)


def _steps(summary):
    """[(number, name, outcome)] of the summary's '== step N name: outcome' lines."""
    out = []
    for line in summary.splitlines():
        if line.startswith("== step "):
            head, _, outcome = line[len("== step "):].partition(": ")
            n, name = head.split(" ", 1)
            out.append((int(n), name, outcome.split(" ")[0]))
    return out


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check") / "out"
    r = _run(out)
    return r, out


def test_dry_run_succeeds_with_the_steps_in_order(dry_run):
    r, out = dry_run
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    summary = (out / "summary.txt").read_text()
    steps = _steps(summary)
    assert [name for _, name, _ in steps] == STEPS
    assert [n for n, _, _ in steps] == list(range(1, len(STEPS) + 1))
    outcomes = {name: outcome for _, name, outcome in steps}
    assert all(outcomes[s] == "ok" for s in STEPS[:5]), summary
    assert outcomes["sanitizer"] == outcomes["ops"] == "skipped"
    assert "dry run:" in summary and "measures no GPU" in summary


def test_at_most_eight_files_none_deeper(dry_run):
    _, out = dry_run
    entries = list(out.iterdir())
    assert len(entries) <= 8 and all(p.is_file() for p in entries)
    expected = set(ALLOWED)
    if importlib.util.find_spec("matplotlib") is None:    # the bench extra draws the plot
        expected.discard("bench.png")
    assert {p.name for p in entries} == expected


def test_the_files_hold_results(dry_run):
    _, out = dry_run
    suites = ET.parse(out / "tests.xml").getroot()
    assert suites.tag == "testsuites" and len(suites) == 2      # steps 2 and 3
    ran = sum(int(s.get("tests")) - int(s.get("skipped")) for s in suites)
    assert ran >= 2 or emulator_status()[0] is None     # no C++17 compiler: they skip
    assert all(int(s.get("failures")) == int(s.get("errors")) == 0 for s in suites)
    bench = json.loads((out / "bench.json").read_text())
    assert bench["complete"] and bench["results"]
    with tarfile.open(out / "logs.tar.gz") as tar:
        logs = {pathlib.Path(n).name for n in tar.getnames()}
    assert {f"{s}.log" for s in STEPS[:5]} <= logs


def test_a_short_deadline_skips_what_does_not_fit(tmp_path):
    r = _run(tmp_path / "out", "--deadline", "4")
    assert r.returncode == 0, r.stderr[-2000:]
    steps = _steps((tmp_path / "out" / "summary.txt").read_text())
    assert [name for _, name, _ in steps] == STEPS
    assert {outcome for _, _, outcome in steps} == {"SKIPPED", "skipped"}
    assert len(list((tmp_path / "out").iterdir())) <= 8


def test_bad_arguments_are_refused(tmp_path):
    r = _run(tmp_path / "out", "--deadline", "soon")
    assert r.returncode == 2 and "usage" in r.stderr
