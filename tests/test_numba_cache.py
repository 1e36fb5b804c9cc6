"""The compiled CPU epoch across processes: a cold first run is short and says
it compiles, a cache-loaded run gives the same bits, a cache entry built
from another activation table is noticed and recompiled, and kernels cached
by different processes run each activation's own math side by side.

Each run is a fresh Python process started outside the checkout (so the
installed package is imported), with NUMBA_CACHE_DIR pointing at a temporary
directory: the first run compiles, the later ones load what it cached.
"""
import os
import shutil
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


# `gpubackprop train` in a process, then which of numba's Python-side typed
# List helpers it compiled: the kernels' Lists are made by cached compiled
# code, as those helpers compile in every process (a few tenths of a second)
TRAIN_AND_LIST_HELPERS = r"""
import sys
from numba.typed import typedlist
from gpubackprop.cli import main

assert not main(sys.argv[1:])
helpers = ("_make_list", "_append", "_length", "_getitem")
print("list helpers compiled:", [h for h in helpers if getattr(typedlist, h).signatures])
"""

# Two kernels that both call the activation loops, each compiled and cached by
# its own process, then loaded together.  Numba names compiled code by qualified
# name, argument types and a counter that restarts in every process; SHIFT
# throwaway compiles move that counter, so where the loops shared one name the
# second kernel could hold relu's loop under the symbol the first holds tanh's
# under, and the process that loads both ran one of them (seen: SHIFT 1 and 5
# with numba 0.68).
CLASH = r"""
import sys
import numpy as np
from numba import njit
from gpubackprop import activations
from gpubackprop.backends import numba_cpu
from gpubackprop.losses import Loss

mode, shift = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
a, y = rng.random((300, 256), dtype=np.float32), rng.random((300, 256), dtype=np.float32)
if mode in ("first", "both"):     # _output_delta_op: the sigma' loops, sigmoid's branch taken
    numba_cpu._run("_output_delta_op", a, y, Loss.CODES["sse"], activations.CODES["sigmoid"],
                   np.empty_like(a))
for i in range(shift):
    namespace = {}
    exec(f"def throwaway_{i}(x):\n    return x + {i}", namespace)
    njit(namespace[f"throwaway_{i}"])(1.0)
if mode in ("second", "both"):    # _times_dsigma_op: the same loops, relu's
    g, a = rng.standard_normal((2, 300, 256), dtype=np.float32)
    got = g.copy()
    numba_cpu._run("_times_dsigma_op", got, a, activations.CODES["relu"])
    print("relu err", float(np.abs(got - g * (a > 0)).max()))
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
    warm, _ = run(["-c", TRAIN_AND_LIST_HELPERS, *train[2:], "warm.safetensors"], tmp_path,
                  cache)
    assert weights(tmp_path / "cold.safetensors") == weights(tmp_path / "warm.safetensors")
    assert "list helpers compiled: []" in warm

    edited, _ = run(["-c", EDITED_TABLE], tmp_path, cache)
    fields = edited.split()
    err, hits, misses = (float(fields[fields.index(k) + 1]) for k in ("err", "hits", "misses"))
    assert hits >= 1 and misses >= 1           # loaded the stale entry, then recompiled
    assert err <= 1e-12
    assert np.isfinite(err)


@pytest.mark.slow
def test_kernels_cached_by_different_processes_keep_their_own_activations(tmp_path):
    """One process caches _output_delta_op, another (its compile counter moved
    by SHIFT throwaway functions) caches _times_dsigma_op; a third loads both
    and relu's sigma' must still be relu's."""
    first = tmp_path / "first"
    run(["-c", CLASH, "first", "0"], tmp_path, first)
    for shift in range(7):
        cache = tmp_path / f"shift-{shift}"
        shutil.copytree(first, cache)
        run(["-c", CLASH, "second", str(shift)], tmp_path, cache)
        out, _ = run(["-c", CLASH, "both", "0"], tmp_path, cache)
        err = float(out.split("relu err")[1].split()[0])
        assert err == 0.0, f"shift {shift}: relu's sigma' off by {err}"
