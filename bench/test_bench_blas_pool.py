"""A fit with validation after every epoch, as a user runs one: the medium
regime's network and batch, the epochs on the compiled fast path, the
validation passes through the backend's ops.

Two rows, one group: "one-library", what backend="numba" does (the epoch's
GEMMs and the ops' on one BLAS, NumPy's where found), and "two-libraries",
the epoch on SciPy's BLAS and the ops on NumPy's matmul (each OpenBLAS's
threads spin for a while after its calls, on the cores the other's next
GEMM needs).  Compare the two means within one run (bench/RESULTS.md).
"""
import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.backends import numba_cpu_blas
from gpubackprop.backends.base import Backend
from gpubackprop.backends.numba_cpu import NumbaCPUBackend

#: profile -> (training rows, validation rows, epochs)
SIZES = {"tiny": (512, 256, 2), "quick": (20_000, 10_000, 5), "full": (60_000, 10_000, 10)}


@pytest.fixture
def libraries(request, monkeypatch):
    """The BLAS set-up of the row (param): "one-library" or "two-libraries"."""
    if request.param == "two-libraries":
        monkeypatch.setattr(numba_cpu_blas, "library", numba_cpu_blas.scipy_gemm)
        monkeypatch.setattr(NumbaCPUBackend, "matmul", Backend.matmul)
    numba_cpu_blas.gemm.cache_clear()
    yield request.param
    numba_cpu_blas.gemm.cache_clear()


@pytest.mark.parametrize("libraries", ["one-library", "two-libraries"], indirect=True)
def test_fit_with_validation(benchmark, profile, libraries):
    regime = profile.regime("medium")
    sizes, batch = list(regime.sizes), regime.batch
    n, n_val, epochs = SIZES[profile.name]
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
