"""Data-parallel scaling on this machine: the same training at 1, 2, ... ranks.

    rows = bench_scaling(ranks=(1, 2))      # what `gpubackprop bench --ranks 1,2` can call

For every world size r it launches r ranks (gpubackprop launch's command
line) that train a random MLP with Trainer(comm=...) and time the epochs
after the first.  Strong scaling keeps the global batch; weak scaling
multiplies it by r (the same work per rank per step).  Each row says how
many cores the machine has and how many BLAS threads each rank ran, so a
result on 2 cores is read as what it is.  The child is this module:
`python -m gpubackprop.distributed.scaling CONFIG_JSON OUT_JSON`.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

from .launch import command


def bench_scaling(ranks=(1, 2), sizes=(784, 256, 256, 10), batch_size=512, n=16384, epochs=3,
                  dtype="float32", device="cpu", backend="numpy", threads=1, timeout=600):
    """Rows {"mode", "ranks", "global_batch", "seconds_per_epoch", "samples_per_s",
    "efficiency", "cores", "threads_per_rank", "comm_backend"}; efficiency is
    throughput / (ranks x the 1-rank throughput of the same mode) when 1 is
    among `ranks`.  threads: BLAS threads per rank (1: each rank one core, so
    r ranks use r cores; more ranks than cores only share them)."""
    ranks = [int(r) for r in ranks]
    if not ranks or min(ranks) < 1:
        raise ValueError(f"ranks must be positive world sizes; got {ranks!r}")
    if epochs < 2:
        raise ValueError(f"epochs must be >= 2 (the first one is not timed); got {epochs}")
    cores = os.cpu_count() or 1
    rows = []
    for mode in ("strong", "weak"):
        for r in ranks:
            cfg = {"sizes": list(sizes), "batch_size": batch_size * (r if mode == "weak" else 1),
                   "n": n, "epochs": epochs, "dtype": dtype, "device": device,
                   "backend": backend, "threads": threads}
            result = _run(r, cfg, timeout)
            rows.append({"mode": mode, "ranks": r, "global_batch": cfg["batch_size"],
                         "seconds_per_epoch": result["seconds"],
                         "samples_per_s": n / result["seconds"], "cores": cores,
                         "threads_per_rank": cfg["threads"],
                         "comm_backend": result["comm_backend"]})
    for row in rows:
        base = [b for b in rows if b["mode"] == row["mode"] and b["ranks"] == 1]
        row["efficiency"] = (row["samples_per_s"] / (row["ranks"] * base[0]["samples_per_s"])
                             if base else None)
    return rows


def _run(r, cfg, timeout):
    """Launch r ranks of this module; rank 0's timing as a dict."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        argv = command(r, [sys.executable, "-m", "gpubackprop.distributed.scaling",
                           json.dumps(cfg), out])
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{r} ranks did not finish in {timeout} s") from None
        if proc.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"{r} ranks failed (exit {proc.returncode}): "
                               f"{proc.stderr.strip()[-2000:]}")
        with open(out) as f:
            return json.load(f)


def _child(cfg, out):
    """One rank: train, time every epoch after the first, rank 0 writes `out`."""
    import numpy as np

    import gpubackprop as gb

    comm = gb.distributed.init()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(cfg["n"], cfg["sizes"][0])).astype(cfg["dtype"])
    y = rng.integers(0, cfg["sizes"][-1], cfg["n"])
    device = comm.device if cfg["device"] == "auto" else cfg["device"]
    net = gb.MLP.from_sizes(cfg["sizes"], activation="relu", output_activation="softmax",
                            device=device, dtype=cfg["dtype"], backend=cfg["backend"], seed=0)
    trainer = gb.Trainer(net, loss="cross_entropy", optimizer=gb.SGD(lr=0.01),
                         batch_size=cfg["batch_size"], seed=0, comm=comm)
    times = []

    def tick(record):
        net.device.synchronize()
        times.append(time.perf_counter())

    with _blas_threads(cfg["threads"]):
        times.append(time.perf_counter())
        trainer.fit(X, y, epochs=cfg["epochs"], callback=tick)
    seconds = min(b - a for a, b in zip(times[1:], times[2:]))
    if comm.rank == 0:
        with open(out, "w") as f:
            json.dump({"seconds": seconds, "comm_backend": comm.backend}, f)


def _blas_threads(n):
    """A context limiting BLAS to n threads (threadpoolctl), or nothing."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]), sys.argv[2])
