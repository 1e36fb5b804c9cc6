"""auto's choice between a backend's fast path and the trainer's loop, by measurement.

A backend's fast path (`train_epoch`: the compiled CPU epoch) and the
trainer's loop (NumPy's GEMMs with compiled passes between them) give the same
numbers; which is faster depends on the shapes, the machine and its libraries
(bench/RESULTS.md: the compiled epoch is 3x faster at Nielsen's recipe, the two
are within a few percent at a batch of 65,536).  So on a CPU, the first time
a shape trains, the trainer runs a few steps of each on scratch copies of the
parameters (`choose`), keeps the faster one and records it in a JSON file
per user, keyed by this machine and its library versions; every later fit of
that shape, in this process or another, reuses it.  A shape is the backend and
its options, the layer sizes and activations, the loss, the batch, the dtype
and whether momentum and weight decay are on.

Not measured: steps with fewer than MEASURE_ABOVE activations (batch x sum of
the layer widths) take the fast path, which wins there by 1.2x and more
(RESULTS.md's crossover table); GPU devices take it whenever it applies.
`Trainer(fast_path=True | False)` skips the choice.  `gpubackprop info`
prints the recorded choices; `forget()` clears them; `use_cache(path)` moves
the file (None: the default, ~/.cache/gpubackprop/autotune.json; False: keep
the choices in this process only).  Each choice is logged on the
"gpubackprop" logger (level INFO).

Kernels are chosen the same way (`kernel_choice`): where a backend has two
kernels for one operation and which is faster depends on the machine (the
compiled CPU epoch's small forward GEMMs: its own loop or BLAS), the first
run times each and the record keeps the choice, so a machine's later runs
use the same one and get the same bits.
"""
import datetime
import functools
import hashlib
import json
import logging
import math
import os
import platform
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import __version__
from .threads import usable_cores

log = logging.getLogger("gpubackprop")

#: steps with fewer activations than this (batch x sum of layer widths) take
#: the fast path without a measurement
MEASURE_ABOVE = 2 ** 16
#: a timed run lasts at least this long (several steps when steps are short)
RUN_SECONDS = 0.03
#: ... and a timed run of a kernel (kernel_choice) this long
KERNEL_RUN_SECONDS = 0.005
#: seconds of rest before each block of one path's timed runs: BLAS threads
#: the other path used spin on a core for a while after it returns and slow
#: the first runs after a switch (bench/RESULTS.md)
SWITCH_REST = 0.25
#: the loop is chosen only where it is this many times faster than the fast
#: path (which fuses the update and touches each array once per step): a
#: VM's two-thread BLAS runs swing by more than the paths differ in a close
#: race (bench/RESULTS.md), and a choice that flips between processes flips
#: the last bits of the training
LOOP_MARGIN = 1.1
#: timed runs per path (in blocks: _race): at most ROUNDS, fewer where they
#: would take more than BUDGET seconds per path (one at the least); each
#: path's fastest run counts (noise only adds time)
ROUNDS, BUDGET = 5, 1.0
FILE_VERSION = 1
#: the record's sections: fast path or loop per problem; kernels per machine
SECTIONS = ("choices", "kernels")

_path = None           # use_cache's choice: None = the default file, False = none
_memory = {section: {} for section in SECTIONS}   # key -> entry, when no file can be written


class Choice(NamedTuple):
    """fast_path: run the backend's train_epoch (else the trainer's loop);
    reason: one sentence; seconds: {"fast path": s/step, "loop": s/step} when
    measured; source: "measured", "recorded" (from the file), "rule" or
    "argument"."""
    fast_path: bool
    reason: str
    seconds: dict
    source: str


def use_cache(path=None):
    """Where choices are recorded: a file path, None (the default file) or
    False (nowhere: measured once per process)."""
    global _path
    if path is not None and path is not False:
        path = Path(os.fspath(path))
    _path = path
    for entries in _memory.values():
        entries.clear()


def cache_path():
    """The file the choices are recorded in (None when use_cache(False), or
    when there is no home folder to put the default one in)."""
    if _path is False:
        return None
    if _path is not None:
        return _path
    try:
        return Path.home() / ".cache" / "gpubackprop" / "autotune.json"
    except (RuntimeError, KeyError):       # no HOME and no passwd entry
        return None


def machine():
    """What a measurement depends on besides the shape: CPU, cores, libraries
    and the BLAS kernels they run (device.cpu_blas)."""
    return dict(_machine())


@functools.cache
def _machine():
    import numba
    import numpy

    from .device import cpu_blas

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    cores = usable_cores()
    try:
        import scipy
        scipy_version = scipy.__version__
    except ImportError:
        scipy_version = None
    return {"cpu": cpu, "cores": cores, "system": platform.system(),
            "python": platform.python_version(), "gpubackprop": __version__,
            "numpy": numpy.__version__, "numba": numba.__version__, "scipy": scipy_version,
            "blas": sorted(f"{b['library']} {b['version']} {b['kernels']}" for b in cpu_blas())}


def _machine_key(info):
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]


def problem(backend, hyper, dtype, options=None):
    """The shape a choice is recorded for (a JSON-able dict)."""
    return {"backend": backend.name, "device": backend.device.kind,
            "options": repr(sorted((options or {}).items())),
            "sizes": list(hyper.sizes), "activations": list(hyper.activations),
            "loss": hyper.loss.name, "batch": hyper.batch_size, "dtype": str(dtype),
            "momentum": hyper.momentum != 0, "weight_decay": hyper.weight_decay != 0}


def choose(backend, hyper, dtype, run, options=None):
    """The Choice for training `hyper`'s steps on `backend` (which has a fast
    path for them).  run(fast_path, steps) runs that many steps of the fast
    path (True) or the loop (False) on scratch state and returns the seconds
    the steps took, for the measurement."""
    elements = hyper.batch_size * sum(hyper.sizes[1:])
    if backend.device.kind != "cpu":
        return Choice(True, f"the fast path runs whenever it applies on {backend.device.kind} "
                      "devices", {}, "rule")
    if elements < MEASURE_ABOVE:
        return Choice(True, f"a step of {elements} activations (under {MEASURE_ABOVE}) runs the "
                      "fast path, far from the measured crossover", {}, "rule")
    spec = problem(backend, hyper, dtype, options)
    key = json.dumps(spec, sort_keys=True)
    in_file = _in_file()
    entry = in_file.get(key, _memory["choices"].get(key))
    if entry is None:
        entry = _measure(run)
        where = _record(key, entry)
        source = "measured"
    else:
        where = cache_path() if key in in_file else "this process"
        source = "recorded"
    choice = Choice(entry["fast_path"], _reason(entry, source, where), entry["seconds"], source)
    log.info("autotune: %s batch %d %s: %s", spec["sizes"], spec["batch"], spec["dtype"],
             choice.reason)
    return choice


def _reason(entry, source, where):
    s = entry["seconds"]
    where = {"measured": f"measured now, recorded in {where}",
             "recorded": f"measured {entry['date']}, recorded in {where}"}[source]
    fast, loop = (f"{figure(s[k] * 1e3)} ms/step" for k in ("fast path", "loop"))
    if not entry["fast_path"]:
        return (f"the loop ({loop}) beat the fast path ({fast}) by more than "
                f"{entry.get('margin', 1.0)}x, {where}")
    if s["fast path"] <= s["loop"]:
        return f"the fast path ({fast}) beat the loop ({loop}), {where}"
    return (f"the fast path ({fast}) kept: the loop ({loop}) was not "
            f"{entry.get('margin', 1.0)}x faster, {where}")


def figure(value):
    """`value` to three significant digits without an exponent: a wide
    network's step reads "2110 ms", not "2.11e+03 ms"."""
    return np.format_float_positional(value, precision=3, unique=False, fractional=False,
                                      trim="-")


def _measure(run):
    """Time both paths (_race); the entry the record keeps: the loop where it
    wins by LOOP_MARGIN, else the fast path."""
    times, steps, rounds = _race(run, (True, False), RUN_SECONDS, SWITCH_REST)
    seconds = {"fast path": times[True], "loop": times[False]}
    return {"fast_path": seconds["fast path"] <= LOOP_MARGIN * seconds["loop"],
            "seconds": seconds, "margin": LOOP_MARGIN, "steps": steps, "rounds": rounds,
            "date": datetime.date.today().isoformat()}


def _race(run, candidates, run_seconds, rest=0.0):
    """Time each candidate: a warm-up run of one step (compiles, fills
    caches) and a timed probe step (how long a step takes), then runs of at
    least run_seconds, ROUNDS per candidate (fewer past BUDGET), in blocks
    A A B B B A A ... (half the rounds, then the other half in reverse
    order), each block after `rest` seconds: a switch slows the runs after
    it while the other candidate's BLAS threads still spin on a core.  The
    fastest run counts.  Returns ({candidate: seconds per step}, steps per
    run, rounds)."""
    for c in candidates:
        run(c, 1)
    times = {}
    for c in candidates:                               # the probes count too
        time.sleep(rest)
        times[c] = [run(c, 1)]
    step = min(t[0] for t in times.values())
    steps = max(1, math.ceil(run_seconds / max(step, 1e-9)))
    rounds = int(min(ROUNDS, max(1, BUDGET // (steps * step))))
    for half, block in ((rounds - rounds // 2, candidates), (rounds // 2, candidates[::-1])):
        for c in block:
            time.sleep(rest if half else 0)
            times[c] += [run(c, steps) / steps for _ in range(half)]
    return {c: min(t) for c, t in times.items()}, steps, rounds


def kernel_choice(kernel, spec, run, candidates, margin=1.0):
    """Which of `candidates` (names) runs `kernel` best for `spec` (a JSON-able
    dict: the backend, the shape timed, the dtype) on this machine: measured
    the first time (run(candidate, reps) returns the seconds of reps calls),
    recorded, and the record's answer every time after.  candidates[0] is the
    default: another is chosen only where it is `margin` times faster, so a
    close race does not flip from one measurement to the next."""
    key = json.dumps({"kernel": kernel, **spec}, sort_keys=True)
    entry = _in_file("kernels").get(key, _memory["kernels"].get(key))
    if entry is None or entry["choice"] not in candidates:
        seconds, reps, rounds = _race(run, candidates, KERNEL_RUN_SECONDS)
        best = min(candidates, key=seconds.get)
        choice = best if seconds[candidates[0]] >= margin * seconds[best] else candidates[0]
        entry = {"choice": choice, "seconds": seconds, "reps": reps, "margin": margin,
                 "rounds": rounds, "date": datetime.date.today().isoformat()}
        where = _record(key, entry, "kernels")
        log.info("autotune: %s %s: %s (%s), recorded in %s", kernel, spec, entry["choice"],
                 ", ".join(f"{c} {figure(s * 1e6)} us" for c, s in seconds.items()), where)
    return entry["choice"]


# -- the record ------------------------------------------------------------------------
def _read():
    """The whole file as a dict (empty if absent or unreadable)."""
    path = cache_path()
    if path is None:
        return {}
    try:
        with open(path) as f:
            data = json.load(f)
        return data if isinstance(data, dict) and data.get("version") == FILE_VERSION else {}
    except (OSError, ValueError):
        return {}


def _in_file(section="choices"):
    """{key: entry} recorded in the file's `section` for this machine."""
    return _valid_entries(_stamp(), section)


@functools.lru_cache(maxsize=4)
def _valid_entries(stamp, section):
    entries = _this_machine(stamp).get(section, {})
    valid = _valid if section == "choices" else _valid_kernel
    return {k: v for k, v in entries.items() if valid(v)} if isinstance(entries, dict) else {}


def _stamp():
    """The record file as it is now (path, modification time, size, inode), so
    a fit that finds it unchanged reuses what the last one read: every fit of
    `auto` asks for its choice, and parsing the file was most of the asking."""
    path = cache_path()
    try:
        st = os.stat(path)
    except (OSError, TypeError):              # absent, or no file (None)
        return (path,)
    return (path, st.st_mtime_ns, st.st_size, st.st_ino)


@functools.lru_cache(maxsize=2)
def _this_machine(stamp):
    """This machine's part of the record file as it was at `stamp`."""
    mine = {} if len(stamp) == 1 else \
        _read().get("machines", {}).get(_machine_key(machine()), {})
    return mine if isinstance(mine, dict) else {}


def _valid(entry):
    return isinstance(entry, dict) and isinstance(entry.get("fast_path"), bool) and \
        isinstance(entry.get("seconds"), dict) and \
        all(isinstance(entry["seconds"].get(k), (int, float)) for k in ("fast path", "loop"))


def _valid_kernel(entry):
    return isinstance(entry, dict) and isinstance(entry.get("choice"), str) and \
        isinstance(entry.get("seconds"), dict)


def _record(key, entry, section="choices"):
    """Add `entry` to this machine's `section` in the file, or to this
    process's if it cannot be written; returns where it went."""
    from .io import write_atomically

    path = cache_path()
    if path is None:
        _memory[section][key] = entry
        return "this process"
    info = machine()
    data = _read() or {"version": FILE_VERSION, "machines": {}}
    mine = data["machines"].setdefault(_machine_key(info), {"machine": info})
    mine.setdefault(section, {})[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(os.fspath(path), json.dumps(data, indent=1).encode(), "autotune record")
    except OSError as exc:
        log.debug("autotune: cannot record the choice in %s (%s); kept for this process",
                  path, exc)
        _memory[section][key] = entry
        return "this process"
    return path


def choices(section="choices"):
    """[(problem dict, entry)] recorded for this machine, for `gpubackprop
    info`: fast path or loop ("choices"), or the kernels ("kernels")."""
    return [(json.loads(k), v)
            for k, v in sorted({**_in_file(section), **_memory[section]}.items())]


def forget():
    """Clear this machine's recorded choices (the file's and this process's)."""
    from .io import write_atomically

    for entries in _memory.values():
        entries.clear()
    data, path = _read(), cache_path()
    if path is not None and data.get("machines", {}).pop(_machine_key(machine()), None):
        write_atomically(os.fspath(path), json.dumps(data, indent=1).encode(), "autotune record")
