"""A fit with validation after every epoch, as a user runs one: the medium
regime's network and batch, the epochs on the compiled fast path (SciPy's
BLAS), the validation passes through the backend's ops.

Two rows, one group: the ops' GEMMs on SciPy's BLAS (what backend="numba"
does) and on NumPy's matmul (a second OpenBLAS, whose threads spin for a
while after each validation pass on the cores the next epoch needs).
Compare the two means within one run (bench/RESULTS.md).
"""
import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.backends.base import Backend
from gpubackprop.backends.numba_cpu import NumbaCPUBackend

#: profile -> (training rows, validation rows, epochs)
SIZES = {"tiny": (512, 256, 2), "quick": (20_000, 10_000, 5), "full": (60_000, 10_000, 10)}


@pytest.mark.parametrize("ops_gemm", ["scipy-blas", "numpy-matmul"])
def test_fit_with_validation(benchmark, profile, ops_gemm, monkeypatch):
    regime = profile.regime("medium")
    sizes, batch = list(regime.sizes), regime.batch
    n, n_val, epochs = SIZES[profile.name]
    if ops_gemm == "numpy-matmul":
        monkeypatch.setattr(NumbaCPUBackend, "matmul", Backend.matmul)
    rng = np.random.default_rng(0)
    X, y = rng.random((n, sizes[0]), dtype=np.float32), rng.integers(0, sizes[-1], n)
    X_val = rng.random((n_val, sizes[0]), dtype=np.float32)
    y_val = rng.integers(0, sizes[-1], n_val)

    def fit():
        net = gb.MLP.from_sizes(sizes, activation="relu", output_activation="identity",
                                dtype="float32", seed=0, backend="numba")
        trainer = gb.Trainer(net, loss="cross_entropy", optimizer=gb.SGD(lr=0.01),
                             batch_size=min(batch, n), seed=0)
        return trainer.fit(X, y, epochs=epochs, validation=(X_val, y_val), progress=False)

    fit()                                        # warm-up: compile or load the epoch
    benchmark.group = f"medium fit with validation ({profile.name})"
    benchmark.extra_info.update(sizes=sizes, rows=n, validation_rows=n_val, epochs=epochs)
    history = benchmark.pedantic(fit, rounds=3, iterations=1)
    assert len(history) == epochs and np.isfinite(history[-1]["val_loss"])
