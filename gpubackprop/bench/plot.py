"""The plot: training throughput against batch size, one line per
implementation and device (ours and every peer of the sweep), the CPU/GPU
crossover marked when both ran, the machine, date and commit in the title."""
from .report import si, sweep_on_gpu

_STYLE = {"cpu": ("-", "o")}          # device -> (line style, marker); GPUs: dashed squares
_GPU_STYLE = ("--", "s")


def _ticks_x(ax, batches):
    """Log-2 axis with a labelled tick at every measured batch size."""
    from matplotlib.ticker import FixedLocator, NullLocator

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(batches))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{b // 1024}k" if b >= 8192 and b % 1024 == 0 else str(b)
                        for b in batches])


def _ticks_y(ax):
    """Log-10 axis with ticks at 1, 2, 5 x 10^k labelled 10k, 20k, 50k, 1M, ..."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: si(y)))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _title(result):
    m = result.get("machine", {})
    gpus = ", ".join(g.get("name", "?") for g in m.get("gpus", []))
    where = (m.get("cpu") or "CPU") + (f" + {gpus}" if gpus else "")
    cfg = result["sweep_config"]
    samples = f"{cfg['samples_per_run']} samples per run"
    if sweep_on_gpu(result):
        samples += f" ({cfg['samples_per_run_gpu']} on the GPU)"
    first = f"SGD on {cfg['sizes']} ReLU, cross entropy, float32, {samples}"
    return f"{first}\n{where}, {result['date'][:10]}, commit {result['commit']}"


def plot(result, path):
    """Write the throughput-vs-batch PNG; returns (path or None, a sentence)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except Exception as exc:
        return None, (f"matplotlib is not installed ({type(exc).__name__}), so no plot "
                      f"(pip install 'gpubackprop[bench]')")
    rows = result["sweep"]
    if not rows:
        return None, "no batch sweep was run (--no-sweep), so no plot"
    fig = Figure(figsize=(11, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    impls = sorted({r["impl"] for r in rows},
                   key=lambda i: (not i.startswith("gpubackprop"), i == "floor", i))
    colors = {impl: f"C{k}" for k, impl in enumerate(impls)}
    keys = sorted({(r["device"], r["impl"], r["label"]) for r in rows},
                  key=lambda k: (k[0] != "cpu", k[0], impls.index(k[1])))
    for dev, impl, label in keys:
        pts = sorted((r["batch"], r["samples_per_s"]) for r in rows
                     if r["device"] == dev and r["impl"] == impl)
        xs = [b for b, _ in pts]
        style, marker = _STYLE.get(dev, _GPU_STYLE)
        if impl == "floor":
            style = ":"
        ours = impl.startswith("gpubackprop")
        ax.plot(xs, [s["median"] for _, s in pts], style, marker=marker, color=colors[impl],
                linewidth=2.4 if ours else 1.4, label=f"{label} on {dev}")
        ax.fill_between(xs, [s["min"] for _, s in pts], [s["max"] for _, s in pts],
                        color=colors[impl], alpha=0.12, linewidth=0)
    cb = result["crossover_batch"]
    if cb is not None:
        ax.axvline(cb, color="k", linestyle=":", linewidth=1)
        ax.annotate(f" GPU beats CPU from batch {cb}", xy=(cb, 0.97),
                    xycoords=("data", "axes fraction"), ha="left", va="top", fontsize=9)
    _ticks_x(ax, sorted({r["batch"] for r in rows}))
    _ticks_y(ax)
    ax.set_xlabel("batch size")
    ax.set_ylabel("training throughput, samples/s\n(median; band: min-max)")
    ax.set_title(_title(result), fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(path)
    return path, f"wrote the plot to {path}"
