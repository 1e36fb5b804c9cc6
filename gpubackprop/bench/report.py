"""The result as text or Markdown tables, and as JSON written atomically."""
import json
import math
import os
import tempfile

import numpy as np

from .cases import plural

COLUMNS = ("device", "implementation", "samples/s", "IQR", "min-max", "GFLOP/s",
           "GEMM share", "time/ours")

LEGEND = ("samples/s: median over the timed runs (IQR, min-max: their spread); GFLOP/s: "
          "6 x batch x sum(n_in x n_out) per step at the median; GEMM share: the time the "
          "step's GEMMs alone take (the GEMM-only row) over this row's time, at most 100% "
          "for an implementation built on that GEMM library; time/ours: this row's time over "
          "gpubackprop's (auto), above 1.00x when ours is faster")


def si(x):
    """3 significant digits with a k/M/G suffix."""
    if x is None or not math.isfinite(x):
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _pct(x):
    return "-" if x is None else f"{100 * x:.0f}%"


def _times(x):
    return "-" if x is None else f"{x:.2f}x"


def _row_cells(r):
    s = r["samples_per_s"]
    return (r["device"], r["label"], si(s["median"]), f"{si(s['q1'])}-{si(s['q3'])}",
            f"{si(s['min'])}-{si(s['max'])}", f"{r['gflops']:.3g}",
            _pct(r["gemm_fraction"]), _times(r["ratio"]))


def text_table(header, rows):
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    return lines + ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
                    for row in rows]


def md_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _header(result):
    m = result.get("machine", {})
    gpus = ", ".join(f"{g['device']} {g.get('name')}" for g in m.get("gpus", []))
    libs = ", ".join(f"{k} {m[k]}" for k in ("numpy", "numba", "scipy", "torch", "jax",
                                             "sklearn", "cupy") if m.get(k))
    lines = [f"gpubackprop bench, profile {result['profile']}, {result['date']}, "
             f"commit {result['commit']}",
             f"machine: {m.get('cpu')}, {m.get('cpus_usable')} CPUs usable"
             + (f"; GPU {gpus}" if gpus else "; no GPU measured"),
             f"libraries: {libs}",
             "BLAS: " + ("; ".join(f"{b['library']}'s {b['api']} {b['version']}, {b['kernels']} "
                                   f"kernels" for b in m.get("blas") or []) or "unknown")
             + (f" ({m['blas_warning']})" if m.get("blas_warning") else ""),
             f"load average (1, 5, 15 min) at start {result.get('loadavg_at_start')}, "
             f"at end {result.get('loadavg_at_end')}",
             f"{plural(result['repeats'], 'timed run')} after {result['warmup']} warm-up, "
             f"round-robin; float32"]
    if result["profile"] == "tiny":
        lines.append("tiny profile: checks that every code path runs; the timings mean "
                     "nothing and no target is checked")
    if not result.get("complete", True):
        lines.append("INCOMPLETE: the run stopped before the end; what finished is below")
    return lines + [f"warning: {w}" for w in result.get("warnings", [])]


def _regime_title(reg, on_gpu):
    steps = f"{plural(reg['steps'], 'step')} ({reg['samples_per_run']} samples) per run"
    if on_gpu and reg.get("gpu_steps"):
        steps += f" ({plural(reg['gpu_steps'], 'step')} on the GPU)"
    return (f"{reg['name']} ({reg['title']}): {reg['sizes']} {reg['activation']} -> "
            f"{reg['output']}, {reg['loss']}, batch {reg['batch']}, {steps}")


def sweep_on_gpu(result):
    """True when the sweep ran on a GPU with its own number of samples per run."""
    cfg = result["sweep_config"]
    return (any(d != "cpu" for d in result["devices"])
            and cfg["samples_per_run_gpu"] != cfg["samples_per_run"])


def _sweep_lines(result, table, heading):
    cfg = result["sweep_config"]
    samples = f"{cfg['samples_per_run']} samples per run"
    if sweep_on_gpu(result):
        samples += f" ({cfg['samples_per_run_gpu']} on a GPU)"
    out = [heading + f"batch sweep: {cfg['sizes']} relu -> identity, cross_entropy, "
           f"{samples} (samples/s, median)", ""]
    keys = sorted({(r["device"], r["label"]) for r in result["sweep"]},
                  key=lambda k: (k[0] != "cpu", k[0], not k[1].startswith("gpubackprop"), k[1]))
    cells = []
    for b in cfg["batches"]:
        row = [str(b)]
        for dev, label in keys:
            r = next((x for x in result["sweep"] if x["batch"] == b and x["device"] == dev
                      and x["label"] == label), None)
            row.append(si(r["samples_per_s"]["median"]) if r else "-")
        cells.append(row)
    out += table(["batch"] + [f"{d} {lab}" for d, lab in keys], cells)
    gpus = [d for d in result["devices"] if d != "cpu"]
    cb = result["crossover_batch"]
    if not gpus:
        out.append("no GPU measured, so no CPU/GPU crossover")
    elif "cpu" not in result["devices"]:
        out.append("the CPU was not measured, so no CPU/GPU crossover")
    else:
        out.append("the GPU never beats the CPU in this sweep" if cb is None else
                   f"the GPU beats the CPU from batch {cb} on")
    for peer, why in cfg.get("left_out", {}).items():
        out.append(f"{peer} is left out of the sweep: it {why}")
    return out + [""]


def _target_line(t):
    if t["peer"] == "floor":
        goal, val = f"{100 * t['minimum']:.0f}%", _pct(t["value"])
    else:
        goal, val = f"{t['minimum']:g}x", _times(t["value"])
    status = "not measured" if t["met"] is None else ("met" if t["met"] else "MISSED")
    note = f" ({t['note']})" if t.get("note") else ""
    return f"{t['regime']} on {t['device']}: {t['what']} >= {goal}: {val} {status}{note}"


def format_table(result, markdown=False):
    """The human summary: header, one table per regime, the sweep, targets,
    skipped peers (one line each) and notes."""
    table = md_table if markdown else text_table
    heading = "### " if markdown else "== "
    bullet = "- " if markdown else "  "
    out = _header(result) + [""]
    for reg in result["regimes"]:
        rows = [r for r in result["results"] if r["regime"] == reg["name"]]
        if not rows:
            continue
        on_gpu = any(r["device"] != "cpu" for r in rows)
        out += [heading + _regime_title(reg, on_gpu), ""]
        out += table(COLUMNS, [_row_cells(r) for r in rows])
        ours = {r["device"]: r for r in rows if r["role"] == "ours"}
        gpus = [d for d in ours if d != "cpu"]
        if "cpu" in ours and gpus:
            rate = {d: ours[d]["samples_per_s"]["median"] for d in ("cpu", gpus[0])}
            out.append(f"gpubackprop on {gpus[0]} / on the CPU, samples/s: "
                       f"{rate[gpus[0]] / rate['cpu']:.2f}x")
        out.append("")
    if result["sweep"]:
        out += _sweep_lines(result, table, heading)
    if result["targets"]:
        out += [heading + "targets", ""]
        out += [bullet + _target_line(t) for t in result["targets"]] + [""]
    if result["skipped"]:
        out += [heading + "skipped", ""]
        for s in result["skipped"]:
            out.append(bullet + f"{s['impl']} on {s['device']} ({', '.join(s['regimes'])}): "
                       f"{s['reason']}")
        out.append("")
    notes = sorted({(r["label"], r["notes"]) for r in result["results"] + result["sweep"]
                    if r.get("notes")})
    out += [heading + "notes", ""] + [bullet + LEGEND]
    out += [bullet + f"{label}: {note}" for label, note in notes]
    return "\n".join(out).rstrip() + "\n"


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json(result):
    return json.dumps(result, indent=1, default=_json_default) + "\n"


def write_text(path, text):
    """Write `text` to `path` atomically (a temporary file in the same folder,
    then os.replace): a reader, or a kill, never sees half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".bench-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
