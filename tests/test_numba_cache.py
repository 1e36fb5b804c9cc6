"""The compiled CPU epoch across processes: a cold first run is short and says
it compiles, a cache-loaded run gives the same bits, and a cache entry built
from another activation table is noticed and recompiled.

Each run is a fresh Python process started outside the checkout (so the
installed package is imported), with NUMBA_CACHE_DIR pointing at a temporary
directory: the first run compiles, the later ones load what it cached.
"""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from gpubackprop.backends.numba_cpu import NOTICE

#: a cold `gpubackprop train` takes ~6 s on the 2-core CI machine (the goal is
#: <= 10 s); the bound is looser because other jobs share those cores
COLD_LIMIT_S = 30

# an activation table edited after the first run compiled: the epoch loaded
# from the cache was built without softsign and must be rebuilt
EDITED_TABLE = r"""
import sys
import numpy as np
from gpubackprop import activations

def softsign(z):
    return z / (1.0 + abs(z))

def dsoftsign(a):
    return (1.0 - abs(a)) ** 2

activations.register(activations.Activation("softsign", 7, softsign, dsoftsign))
import gpubackprop as gb
from gpubackprop.backends import numba_cpu_kernels as numba_cpu

rng = np.random.default_rng(0)
X, Y = rng.normal(size=(40, 5)), np.eye(3)[rng.integers(0, 3, 40)]
params = {}
for backend in ("numpy", "numba"):
    net = gb.MLP.from_sizes([5, 8, 3], activation="softsign", output_activation="sigmoid",
                            backend=backend, seed=1)
    gb.Trainer(net, optimizer=gb.SGD(lr=0.5), batch_size=6, seed=2).fit(X, Y, epochs=2,
                                                                        progress=False)
    params[backend] = net.params
err = max(float(np.abs(p - q).max() / np.abs(q).max())
          for pair, ref in zip(params["numba"], params["numpy"]) for p, q in zip(pair, ref))
stats = numba_cpu._epoch.stats
print("err", err, "hits", sum(stats.cache_hits.values()), "misses", sum(stats.cache_misses.values()))
"""


def run(args, tmp_path, cache):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    t = time.perf_counter()
    out = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr, time.perf_counter() - t


def weights(path):
    from safetensors.numpy import load_file

    return {k: v.tobytes() for k, v in load_file(path).items()}


@pytest.mark.slow
def test_cold_run_compiles_once_and_a_cached_run_has_the_same_bits(tmp_path):
    cache = tmp_path / "numba-cache"
    train = ["-m", "gpubackprop", "train", "--backend", "numba", "--epochs", "3",
             "--no-progress", "--save"]
    cold, seconds = run(train + ["cold.safetensors"], tmp_path, cache)
    print(f"cold `gpubackprop train --epochs 3`: {seconds:.1f} s wall")
    assert NOTICE in cold
    assert seconds <= COLD_LIMIT_S
    warm, _ = run(train + ["warm.safetensors"], tmp_path, cache)
    assert weights(tmp_path / "cold.safetensors") == weights(tmp_path / "warm.safetensors")

    edited, _ = run(["-c", EDITED_TABLE], tmp_path, cache)
    fields = edited.split()
    err, hits, misses = (float(fields[fields.index(k) + 1]) for k in ("err", "hits", "misses"))
    assert hits >= 1 and misses >= 1           # loaded the stale entry, then recompiled
    assert err <= 1e-12
    assert np.isfinite(err)
