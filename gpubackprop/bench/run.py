"""The benchmark matrix: regimes x devices x implementations, then the batch
sweep; the result is one JSON-able dict (schema SCHEMA), handed to
`on_update` after every regime so a run killed half-way keeps what finished."""
import datetime

import numpy as np

from . import machine as _machine
from .cases import PEERS, PROFILES, REGIME_NAMES, make_data, initial_params
from .frameworks import JaxCase, TorchCase
from .peers import GemmCase, OursCase, Skip, SklearnCase
from .timing import crossover, rows, time_cases

SCHEMA = "gpubackprop.bench/2"

#: (regime, peer, device kind, minimum, what).  The value is peer time / ours
#: (ratio), or for "floor" the GEMM-only time / ours (gemm_fraction).  A target
#: is checked only where the regime ran at the shape of the full profile.
TARGETS = (
    ("small", "torch-eager", "cpu", 15.0, "Nielsen's recipe vs PyTorch eager"),
    ("small", "jax", "cpu", 1.5, "Nielsen's recipe vs JAX's jitted epoch"),
    ("small", "sklearn", "cpu", 5.0, "Nielsen's recipe vs MLPClassifier"),
    ("medium", "torch-eager", "cpu", 1.0, "vs PyTorch eager"),
    ("medium", "jax", "cpu", 1.0, "vs JAX's jitted epoch"),
    ("narrow", "torch-eager", "cpu", 1.0, "vs PyTorch eager"),
    ("narrow", "jax", "cpu", 1.0, "vs JAX's jitted epoch"),
    ("wide", "torch-eager", "cpu", 1.0, "vs PyTorch eager"),
    ("wide", "jax", "cpu", 1.0, "vs JAX's jitted epoch"),
    ("wide", "floor", "cpu", 0.90, "share of the time NumPy's SGEMMs alone take"),
    *((r, "paths", "cpu", 0.95, "auto vs the faster of its fast path and loop, round by round")
      for r in ("small", "medium", "narrow", "wide")),
    ("small", "torch-eager", "cuda", 10.0, "Nielsen's recipe vs PyTorch eager"),
    ("narrow", "torch-eager", "cuda", 3.0, "vs PyTorch eager"),
    ("wide", "torch-eager", "cuda", 1.0, "vs PyTorch eager"),
    ("wide", "floor", "cuda", 0.85, "share of the time cuBLAS's SGEMMs alone take"),
)

#: peers left out of the batch sweep, and why
SWEEP_LEAVES_OUT = {"torch-compile": "recompiles for every batch size"}


def devices_for(spec):
    """The devices to measure: "auto" = the CPU and the first usable GPU;
    "cpu"; "cuda" = the first GPU; "cuda:N"."""
    from ..device import available_devices, cuda_status

    if not isinstance(spec, str):
        raise TypeError(f"device must be a string; got {type(spec).__name__}")
    # real GPUs only: the cuda-emulator runs the CUDA C on the CPU, its speed means nothing
    gpus = [d for d in available_devices() if d.startswith("cuda:")]
    if spec == "cpu":
        return ["cpu"]
    if spec == "cuda" or spec.startswith("cuda:"):
        if not gpus:
            raise RuntimeError(f"--device {spec} needs a GPU, but "
                               f"{cuda_status()[1] or 'none is usable'}")
        if spec == "cuda":
            return gpus[:1]
        if spec not in gpus:
            raise ValueError(f"--device {spec}: the usable GPUs are {', '.join(gpus)}")
        return [spec]
    if spec != "auto":
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N; got {spec!r}")
    return ["cpu"] + gpus[:1]


def check_choice(what, chosen, allowed):
    """`chosen` (a list or None = all) checked against `allowed`; returns a list."""
    if chosen is None:
        return list(allowed)
    unknown = [c for c in chosen if c not in allowed]
    if unknown or not chosen:
        raise ValueError(f"{what} must be a comma-separated subset of {','.join(allowed)}; "
                         f"got {','.join(chosen) or 'nothing'}")
    return list(dict.fromkeys(chosen))


def make_cases(device, regime, data, params, peers, all_backends=False, trainer_options=None,
               seed=0):
    """The cases of one regime on one device, ours first; `params` are
    initial_params(regime, seed), the weights ours starts from with `seed`.

    Returns (cases, skipped) where skipped is [(impl, reason)] for the
    implementations that cannot run here."""
    specs = [("gpubackprop",
              lambda: OursCase(device, regime, data, seed=seed, trainer_options=trainer_options))]
    if all_backends:
        from .. import backends
        from ..device import device as get_device

        dev = get_device(device)
        auto = backends.create("auto", dev).name
        for name, why in backends.available(dev).items():
            if name == auto:
                continue
            if why is None:
                specs.append((f"gpubackprop[{name}]", lambda n=name: OursCase(
                    device, regime, data, backend=n, seed=seed,
                    trainer_options=trainer_options)))
    if "paths" in peers and device == "cpu":
        for fast_path in (True, False):
            specs.append((f"gpubackprop[{'fast-path' if fast_path else 'loop'}]",
                          lambda f=fast_path: OursCase(device, regime, data, seed=seed,
                                                       trainer_options=trainer_options,
                                                       fast_path=f)))
    for mode in ("eager", "graphs", "compile"):
        if f"torch-{mode}" in peers:
            specs.append((f"torch-{mode}",
                          lambda m=mode: TorchCase(device, regime, data, params, m, seed)))
    if "jax" in peers:
        specs.append(("jax", lambda: JaxCase(device, regime, data, params, seed)))
    if "sklearn" in peers:
        specs.append(("sklearn", lambda: SklearnCase(device, regime, data, seed)))
    if "floor" in peers:
        specs.append(("floor", lambda: GemmCase(device, regime, data, params)))
    cases, skipped = [], []
    for impl, make in specs:
        try:
            cases.append(make())
        except Skip as exc:
            skipped.append((impl, str(exc)))
        except Exception as exc:
            if impl == "gpubackprop":
                raise               # ours failing is a bug to see, not a skip
            skipped.append((impl, f"failed to set up: {type(exc).__name__}: {exc}"))
    return cases, skipped


def run_bench(profile="quick", device="auto", regimes=None, peers=None, repeats=None,
              sweep=True, say=None, on_update=None, commit=None, command="gpubackprop bench",
              trainer_options=None):
    """Run the matrix and return the result dict (see SCHEMA and report.py).

    regimes/peers: lists of names (None: the profile's); say(text): progress
    lines; on_update(result): called after each regime and at the end;
    commit: the commit to record when neither git nor the package knows it."""
    from .. import backends
    from ..device import device as get_device

    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {', '.join(PROFILES)}; got {profile!r}")
    cfg = PROFILES[profile]
    regimes = check_choice("regimes", regimes, REGIME_NAMES)
    peers = check_choice("peers", list(cfg.peers) if peers is None else peers, PEERS)
    reps = cfg.repeats if repeats is None else repeats
    if not isinstance(reps, int) or isinstance(reps, bool) or reps < 1:
        raise ValueError(f"repeats must be an integer >= 1; got {reps!r}")
    devices = devices_for(device)
    say = say or (lambda text: None)
    chosen = [cfg.regime(name) for name in regimes]        # in the order asked for
    load = _machine.loadavg()
    result = {
        "schema": SCHEMA, "complete": False,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": _machine.commit(commit), "version": _machine.package_version(),
        "command": command, "profile": profile, "profile_about": cfg.about,
        "repeats": reps, "warmup": cfg.warmup, "dtype": "float32", "devices": devices,
        "peers": peers,
        "backends": {d: {"auto": backends.create("auto", get_device(d)).name,
                         **backends.available(get_device(d))} for d in devices},
        "flop_convention": "6 x batch x sum(n_in x n_out) per SGD step",
        "regimes": [r.as_dict() for r in chosen], "results": [], "sweep": [],
        "sweep_config": None, "crossover_batch": None, "skipped": [], "targets": [],
        "loadavg_at_start": load, "loadavg_at_end": None, "warnings": [],
        "machine": _machine.machine(devices)}
    busy = _machine.busy_warning(load)
    if busy:
        result["warnings"].append(busy)
        say(f"warning: {busy}")
    say(f"profile {profile}: {cfg.about}")
    say(f"devices {', '.join(devices)}; {reps} timed runs "
        f"after {cfg.warmup} warm-up")
    update = on_update or (lambda r: None)
    update(result)                                         # the header, before any timing
    for regime in chosen:
        params = initial_params(regime)
        for dev in devices:
            here = regime.on(dev)
            say(f"{dev:<7} {regime.name:<7} {here.describe()}")
            cases, skipped = make_cases(dev, here, make_data(here), params, peers,
                                        cfg.all_backends, trainer_options)
            times, failed = time_cases(cases, reps, cfg.warmup, say)
            result["results"] += rows(here, times)
            _note_skips(result, regime.name, dev, skipped + failed)
            del cases, times
        _finish(result, profile, chosen)
        update(result)
    if sweep:
        _sweep(result, cfg, devices, peers, min(reps, 3), trainer_options, say)
    result["complete"] = True
    _finish(result, profile, chosen)
    update(result)
    return result


def _sweep(result, cfg, devices, peers, reps, trainer_options, say):
    """Ours and the peers over the sweep's batch sizes on the medium network."""
    sweep_peers = [p for p in peers if p not in SWEEP_LEAVES_OUT]
    result["sweep_config"] = {
        "sizes": list(cfg.sweep.sizes), "activation": "relu", "output": "identity",
        "loss": "cross_entropy", "batches": list(cfg.sweep.batches),
        "samples_per_run": cfg.sweep.samples,
        "samples_per_run_gpu": cfg.sweep.gpu_samples or cfg.sweep.samples, "repeats": reps,
        "left_out": {p: why for p, why in SWEEP_LEAVES_OUT.items() if p in peers}}
    for regime in cfg.sweep.regimes():
        params = initial_params(regime)
        for dev in devices:
            here = regime.on(dev)
            cases, skipped = make_cases(dev, here, make_data(here), params, sweep_peers,
                                        False, trainer_options)
            times, failed = time_cases(cases, reps, cfg.warmup)
            new = rows(here, times)
            for r in new:
                say(f"{dev:<7} sweep   batch {regime.batch:<6} {r['label']:<34} "
                    f"{r['samples_per_s']['median']:>12,.0f} samples/s")
            result["sweep"] += new
            _note_skips(result, "sweep", dev, skipped + failed)
    result["crossover_batch"] = crossover(result["sweep"])


def _note_skips(result, regime, device, skipped):
    """One record per (device, implementation, reason), listing its regimes."""
    for impl, reason in skipped:
        rec = next((s for s in result["skipped"] if (s["device"], s["impl"], s["reason"])
                    == (device, impl, reason)), None)
        if rec is None:
            result["skipped"].append({"device": device, "impl": impl, "reason": reason,
                                      "regimes": [regime]})
        elif regime not in rec["regimes"]:
            rec["regimes"].append(regime)


def _finish(result, profile, chosen):
    result["loadavg_at_end"] = _machine.loadavg()
    result["machine"] = _machine.machine(result["devices"])     # now with the peers' threads
    result["targets"] = targets(result, profile, chosen)


def _paired_ratio(row, ours):
    """row's time / ours: the median of the rounds' ratios where both rows have
    a time from every round (each round's pair shares the machine's load of the
    moment), else the ratio of the medians."""
    a, b = row.get("times_s"), ours.get("times_s")
    if not a or not b or len(a) != len(b):
        return row["ratio"]
    return float(np.median(np.asarray(a) / np.asarray(b)))


def targets(result, profile, chosen):
    """The TARGETS that apply: measured regimes at the full profile's shapes
    (so never in the tiny profile), on a device of the target's kind."""
    if profile == "tiny":
        return []
    full = {r.name: r.shape for r in PROFILES["full"].regimes}
    shapes = {r.name: r.shape for r in chosen}
    ran = {r["regime"] for r in result["results"]}
    out = []
    for regime, peer, kind, minimum, what in TARGETS:
        if regime not in ran or shapes.get(regime) != full[regime] or peer not in result["peers"]:
            continue
        for dev in result["devices"]:
            if (dev == "cpu") != (kind == "cpu"):
                continue
            mine = [r for r in result["results"] if r["regime"] == regime and r["device"] == dev]
            ours = next((r for r in mine if r["role"] == "ours"), None)
            other = next((r for r in mine if r["impl"] == peer), None)
            told = [r for r in mine if ":" in r["impl"]]     # auto's paths, told
            value, note = None, None
            if ours is not None and peer == "paths":    # the faster told path's time / auto's
                faster = min(told, key=lambda r: r["ratio"], default=None)
                value = None if faster is None else _paired_ratio(faster, ours)
                if faster is not None and faster.get("path") is not None \
                        and ours.get("path") == faster["path"]:
                    note = (f"auto ran the {faster['path'].replace('-', ' ')}, the faster "
                            "row's code: the two rows differ by run-to-run spread")
            elif ours is not None and other is not None:
                value = ours["gemm_fraction"] if peer == "floor" else other["ratio"]
            out.append({"regime": regime, "peer": peer, "device": dev, "minimum": minimum,
                        "what": what, "value": value, "note": note,
                        "met": None if value is None else bool(value >= minimum or note)})
    return out
