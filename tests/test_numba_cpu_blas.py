"""backends/numba_cpu_blas.py: the numba backend's one BLAS (NumPy's own
OpenBLAS where found, else SciPy's).

matmul's own path (SciPy's, by the compiled gemm_op) is held against NumPy's float64
product on random data for every layout BLAS reads in place (C, F) and one
it must copy (a strided view), at odd shapes; what BLAS cannot take falls
back to NumPy; the ops and evaluation run on the library; and the compiled
epoch trains as the NumPy reference on either library.
"""
import numpy as np
import pytest
from reference import rel_err

import gpubackprop as gb
from gpubackprop.backends import numba_cpu_blas as blas
from gpubackprop.backends.numba_cpu import NumbaCPUBackend

TOL = {np.float64: 1e-13, np.float32: 2e-6}


def operand(rng, shape, layout, dtype):
    """A random (rows, cols) array laid out as C, F or a strided view."""
    x = rng.standard_normal(shape)
    if layout == "F":
        x = np.asfortranarray(x)
    elif layout == "strided":
        wide = np.zeros((shape[0], 2 * shape[1]))
        wide[:, ::2] = x
        x = wide[:, ::2]
    return x.astype(dtype, copy=False) if layout == "strided" else x.astype(dtype, order="K")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("M, K, N", [(1, 1, 1), (1, 7, 1), (7, 1, 5), (3, 5, 7), (64, 33, 1),
                                     (130, 70, 41)])
@pytest.mark.parametrize("layout_a", ["C", "F", "strided"])
@pytest.mark.parametrize("layout_b", ["C", "F"])
def test_matmul_matches_numpy(dtype, M, K, N, layout_a, layout_b, scipy_blas, monkeypatch):
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    a = operand(rng, (M, K), layout_a, dtype)
    b = operand(rng, (K, N), layout_b, dtype)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    calls = []
    real = blas._blas_matmul
    monkeypatch.setattr(blas, "_blas_matmul", lambda *args: calls.append(1) or real(*args))
    out = np.full((M, N), np.nan, dtype)
    assert blas.matmul(a, b, out) is out
    fresh = blas.matmul(a, b)
    assert fresh.dtype == dtype and fresh.shape == (M, N) and fresh.flags.c_contiguous
    assert rel_err(out, exact) < TOL[dtype]
    np.testing.assert_array_equal(fresh, out)       # with or without a buffer: same bits
    assert len(calls) == 2                          # SciPy's gemm, not NumPy's matmul


def test_what_blas_does_not_take_runs_numpys_matmul(scipy_blas):
    rng = np.random.default_rng(1)
    ints = rng.integers(-5, 5, (4, 3)), rng.integers(-5, 5, (3, 2))
    np.testing.assert_array_equal(blas.matmul(*ints), ints[0] @ ints[1])
    mixed = rng.random((4, 3)).astype(np.float32), rng.random((3, 2))
    np.testing.assert_allclose(blas.matmul(*mixed), mixed[0] @ mixed[1], rtol=1e-6)
    empty = np.ones((0, 3)), np.ones((3, 2))
    assert blas.matmul(*empty).shape == (0, 2)
    no_k = np.ones((4, 0)), np.ones((0, 2))
    np.testing.assert_array_equal(blas.matmul(*no_k), np.zeros((4, 2)))
    square = rng.random((5, 5))
    expected = square @ square
    np.testing.assert_allclose(blas.matmul(square, square, out=square), expected)  # out is a
    with pytest.raises(ValueError):
        blas.matmul(np.ones((4, 3)), np.ones((2, 2)))


@pytest.fixture
def scipy_blas(monkeypatch):
    """The backend as on a NumPy whose BLAS is not found: SciPy's."""
    monkeypatch.setattr(blas, "library", blas.scipy_gemm)
    blas.gemm.cache_clear()
    yield
    blas.gemm.cache_clear()


def net_and_reference(sizes):
    kw = dict(activation="tanh", output_activation="identity", seed=3)
    return (gb.MLP.from_sizes(sizes, backend="numba", **kw),
            gb.MLP.from_sizes(sizes, backend="numpy", **kw))


def test_numpys_own_blas_is_found_here():
    """NumPy's wheels bundle scipy-openblas64: the backend then runs NumPy's."""
    name, sgemm, dgemm, ints = blas.library()
    assert (name, ints) == ("numpy", np.dtype(np.int64)) and sgemm and dgemm


def test_the_ops_and_evaluation_run_numpys_matmul_with_numpys_blas(monkeypatch):
    calls = []
    real = np.matmul
    monkeypatch.setattr(np, "matmul", lambda a, b, out=None: calls.append(a.shape) or
                        real(a, b, out=out))
    net, ref = net_and_reference([9, 7, 4])
    X = np.random.default_rng(2).standard_normal((300, 9))
    assert rel_err(net.forward(X), ref.forward(X)) < 1e-13
    assert len(calls) >= 2


def test_with_scipys_blas_the_ops_and_evaluation_call_it(scipy_blas, monkeypatch):
    calls = []
    real = blas._blas_matmul
    monkeypatch.setattr(blas, "_blas_matmul", lambda a, b, out: calls.append(a.shape) or
                        real(a, b, out))
    rng = np.random.default_rng(2)
    net, ref = net_and_reference([9, 7, 4])
    X, y = rng.standard_normal((300, 9)), rng.integers(0, 4, 300)
    assert rel_err(net.forward(X), ref.forward(X)) < 1e-13
    assert len(calls) == 2                                # one GEMM per layer
    trainer = gb.Trainer(net, loss="cross_entropy", optimizer=gb.SGD(lr=0.1), batch_size=300)
    before = len(calls)
    trainer.evaluate(X, y)
    assert len(calls) > before
    grads = net.gradients(X[:50], np.eye(4)[y[:50]], loss="cross_entropy")
    expected = ref.gradients(X[:50], np.eye(4)[y[:50]], loss="cross_entropy")
    for (dW, db), (dW_ref, db_ref) in zip(grads, expected):
        assert rel_err(dW, dW_ref) < 1e-12 and rel_err(db, db_ref) < 1e-12
    assert isinstance(net.backend, NumbaCPUBackend)


@pytest.mark.parametrize("library", ["numpy", "scipy"])
def test_the_compiled_epoch_on_either_library_trains_as_the_reference(library, request):
    """The epoch's GEMMs through gemm (forward, delta, the folded update),
    float64, against the NumPy backend's loop: SciPy's library takes 32-bit
    ints, NumPy's 64-bit ones, each its own compiled signature."""
    if library == "scipy":
        request.getfixturevalue("scipy_blas")
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((64, 9)), rng.integers(0, 4, 64)
    nets = []
    for backend in ("numba", "numpy"):
        net = gb.MLP.from_sizes([9, 11, 4], activation="sigmoid", output_activation="identity",
                                seed=1, backend=backend)
        trainer = gb.Trainer(net, loss="cross_entropy", optimizer=gb.SGD(lr=0.5), batch_size=8,
                             seed=0)
        trainer.fit(X, y, epochs=2, progress=False)
        nets.append((net, trainer))
    (net, trainer), (ref, _) = nets
    assert trainer.path_choice.fast_path
    for (W, b), (W_ref, b_ref) in zip(net.params, ref.params):
        assert rel_err(W, W_ref) < 1e-12 and rel_err(b, b_ref) < 1e-12


def test_a_dimension_past_32_bits_is_left_to_numpy():
    tall = np.lib.stride_tricks.as_strided(np.zeros(1), shape=(2 ** 31, 1), strides=(0, 8))
    assert not blas._blas_operands(tall, np.ones((1, 1)), None)
    assert blas._blas_operands(tall[:2 ** 31 - 1], np.ones((1, 1)), None)
