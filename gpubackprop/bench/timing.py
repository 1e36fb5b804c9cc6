"""Timing: warm-up, round-robin timed runs, medians, and the rows of a regime.

Every case runs `warmup` times first (JIT compilation, autotuning, caches,
allocator pools), then the timed runs go round-robin over the cases, so a
change in machine load hits them alike; each round takes the cases in its
own shuffled order (seeded by the round), so what runs just before a case (a
peer's spinning threads, its data in the caches) changes from round to round:
a fixed cyclic order, rotated or not, puts every case after the same
neighbour in every round.  A case whose run is short runs once more, untimed,
right before each timed run: its figure is the steady rate of training, not
the first milliseconds after another case took the caches, and its timed
sample is as many runs back to back as last SHORT_RUN_S (their mean): a run
of a few milliseconds alone reads every interruption of the machine in full.
Whether a case is short is decided by a run after its warm-ups (the first
run compiles and loads, so it cannot tell).  Each timed run ends with a
device synchronisation inside the timed region.  A row's figure is the median
time; its spread is the interquartile range and min-max of samples/s.
"""
import math
import time

import numpy as np

#: seconds of rest before each timed run: the previous implementation's worker
#: threads (OpenMP in PyTorch and OpenBLAS, XLA's pool) spin-wait for ~200 ms
#: after their last parallel region, and on a 2-core machine that spin takes
#: the cores from whatever runs next (seen: 2-3x slower runs right after PyTorch)
SETTLE_S = 0.3
#: a case whose run takes less than this runs once untimed before each timed
#: sample, and the sample is that many runs back to back: the rest and the
#: previous case leave the caches and the clock cold, which a short run feels
#: in full and a long one amortises itself
SHORT_RUN_S = 0.2
#: a case whose last warm-up run took less than this is run once more to
#: decide whether it is short: a warm-up run may include compiling (seconds
#: on a cold cache) or loading compiled code; past it a case is long anyway
PROBE_BELOW_S = 20.0


def stats(values):
    """Median, quartiles, IQR, min, max and count of `values`."""
    v = np.asarray(values, dtype=float)
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
            "min": float(v.min()), "max": float(v.max()), "n": int(v.size)}


def time_cases(cases, repeats, warmup, say=None):
    """Warm up every case, then time `repeats` samples of each, round-robin
    (in a shuffled order each round), each after a rest of SETTLE_S; a short
    case (a run under SHORT_RUN_S) runs once untimed first and its sample is
    the mean of the runs back to back that fill SHORT_RUN_S.

    Returns ({case: [seconds per run, ...]}, [(impl, reason)] for the cases
    that failed).  A failing peer is dropped and reported; ours failing raises."""
    failed = []
    live, runs = [], {}
    for case in cases:
        try:
            runs[case] = _runs_per_sample(case, warmup)
            live.append(case)
        except Exception as exc:
            if case.role == "ours":
                raise
            failed.append((case.impl, f"failed: {type(exc).__name__}: {exc}"))
    times = {case: [] for case in live}
    for r in range(repeats):
        for case in [live[i] for i in np.random.default_rng(r).permutation(len(live))]:
            try:
                time.sleep(SETTLE_S)
                if runs[case] > 1:
                    case.run()
                t0 = time.perf_counter()
                for _ in range(runs[case]):
                    case.run()
                dt = (time.perf_counter() - t0) / runs[case]
            except Exception as exc:
                if case.role == "ours":
                    raise
                failed.append((case.impl, f"failed: {type(exc).__name__}: {exc}"))
                live.remove(case)
                del times[case]
                continue
            times[case].append(dt)
            if say is not None:
                say(f"{case.device:<7} {case.regime.name:<7} {case.label:<34} "
                    f"{case.regime.samples / dt:>12,.0f} samples/s  (run {r + 1}/{repeats})")
    return times, failed


def _runs_per_sample(case, warmup):
    """Run `case` `warmup` times, then (if the last took under PROBE_BELOW_S)
    once more to time it: the runs a timed sample holds, 1 for a case not
    short, else as many as fill SHORT_RUN_S."""
    took = None
    for _ in range(warmup):
        took = _timed_run(case)
    if took is not None and took < PROBE_BELOW_S:
        took = _timed_run(case)              # the probe: a warm-up may include compiling
    if took is None or took >= SHORT_RUN_S:
        return 1
    return math.ceil(SHORT_RUN_S / max(took, 1e-6))


def _timed_run(case):
    t0 = time.perf_counter()
    case.run()
    return time.perf_counter() - t0


def rows(regime, times):
    """One JSON row per case from its run times, with the ratios:

    ratio          peer time / ours (auto) time: > 1 means ours is faster
    gemm_fraction  GEMM-only time / this row's time: the share of the row's
                   time that its GEMMs alone would take with the GEMM library
                   of the "floor" row (<= 1 for anything built on that library;
                   > 1 means the row beats those GEMMs alone)
    """
    out = []
    for case, ts in times.items():
        if not ts:
            continue
        t_med = float(np.median(ts))
        sps = stats([regime.samples / t for t in ts])
        sps["median"] = regime.samples / t_med        # the median time's rate
        out.append({"regime": regime.name, "device": case.device, "impl": case.impl,
                    "role": case.role, "label": case.label, "backend": case.backend,
                    "path": case.path,
                    "batch": regime.batch, "samples_per_run": regime.samples,
                    "steps_per_run": regime.steps, "times_s": [round(t, 6) for t in ts],
                    "time_s": t_med, "samples_per_s": sps,
                    "gflops": sps["median"] * regime.flops_per_sample / 1e9,
                    "gemm_fraction": None, "ratio": None, "notes": case.notes})
    ours = next((r for r in out if r["role"] == "ours"), None)
    gemm = next((r for r in out if r["role"] == "gemm"), None)
    for r in out:
        if ours is not None:
            r["ratio"] = r["time_s"] / ours["time_s"]
        if gemm is not None:
            r["gemm_fraction"] = gemm["time_s"] / r["time_s"]
    return out


def crossover(sweep_rows):
    """The smallest batch from which gpubackprop on the GPU beats it on the CPU
    at every larger batch of the sweep (None without both, or if it never does)."""
    ours = {}
    for r in sweep_rows:
        if r["role"] == "ours":
            ours.setdefault(r["device"], {})[r["batch"]] = r["samples_per_s"]["median"]
    cpu = ours.get("cpu", {})
    gpus = sorted(d for d in ours if d != "cpu")
    if not cpu or not gpus:
        return None
    gpu = ours[gpus[0]]
    best = None
    for b in sorted(set(cpu) & set(gpu), reverse=True):
        if gpu[b] <= cpu[b]:
            break
        best = b
    return best
