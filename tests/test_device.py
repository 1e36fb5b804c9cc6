"""Devices and Tensor, on a machine with or without CUDA."""
import numpy as np
import pytest

import gpubackprop as gb
import importlib

device_module = importlib.import_module("gpubackprop.device")


@pytest.fixture
def no_cuda(monkeypatch):
    """Pretend CuPy is missing, whatever this machine has."""
    device_module.cuda_status.cache_clear()
    monkeypatch.setattr(device_module, "import_cupy", _missing_cupy)
    yield
    device_module.cuda_status.cache_clear()


def _missing_cupy():
    raise RuntimeError("CUDA is not usable: CuPy could not be imported (No module named "
                       f"'cupy'); {device_module.INSTALL_HINT}")


def test_cpu_device():
    d = gb.device("cpu")
    assert str(d) == "cpu" and d.kind == "cpu" and d.xp is np
    assert d == "cpu" and d == gb.device(d)
    assert "cpu" in gb.available_devices()


def test_auto_falls_back_to_cpu_with_a_notice(no_cuda, capsys):
    d = gb.device("auto")
    assert d.kind == "cpu"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CuPy could not be imported" in err
    assert [d for d in gb.available_devices() if d.startswith("cuda:")] == []   # no GPU listed


@pytest.mark.parametrize("spec", ["cuda", "cuda:1", "gpu"])
def test_cuda_where_unusable_says_why_and_how(no_cuda, spec):
    with pytest.raises(RuntimeError, match="CuPy could not be imported.*pip install"):
        gb.device(spec)


@pytest.mark.parametrize("spec,exc,fragment", [
    ("tpu", ValueError, "did you mean|expected one of"),
    ("cuda:x", ValueError, "integer"),
    ("cpu:0", ValueError, "no index"),
    (3, TypeError, "device must be a string"),
])
def test_bad_device_specs(spec, exc, fragment):
    with pytest.raises(exc, match=fragment):
        gb.device(spec)


def test_tensor_wraps_numpy():
    a = np.arange(6.0).reshape(2, 3)
    t = gb.Tensor(a)
    assert t.device == "cpu" and t.shape == (2, 3) and t.dtype == np.float64
    assert np.array_equal(np.asarray(t), a) and t.numpy() is t.data
    assert t.to("cpu") is t
    t[0, 0] = 7.0
    assert t.numpy()[0, 0] == 7.0
    assert gb.Tensor(a, dtype="float32").dtype == np.float32
    assert np.array_equal(np.from_dlpack(t), t.numpy())


def test_parameters_are_tensors_writable_in_place():
    net = gb.MLP.from_sizes([3, 2], seed=0)
    W = net.layers[0].W
    assert isinstance(W, gb.Tensor) and W.shape == (2, 3)
    W[...] = 0.25
    assert np.all(net.layers[0].W.numpy() == 0.25)
    net.layers[0].set_params(W=np.ones((2, 3)), b=np.array([1.0, 2.0]))
    np.testing.assert_allclose(net.forward(np.zeros((1, 3))),
                               1 / (1 + np.exp(-np.array([[1.0, 2.0]]))), rtol=1e-15)


def test_backend_selection_on_cpu():
    assert gb.MLP.from_sizes([2, 2], backend="numpy").backend.name == "numpy"
    assert gb.MLP.from_sizes([2, 2], backend="auto").backend.name in ("numpy", "numba")
    with pytest.raises(ValueError, match="runs on cuda"):
        gb.MLP.from_sizes([2, 2], backend="cupy")
    with pytest.raises(TypeError, match="backend_options"):
        gb.MLP.from_sizes([2, 2], backend="numpy", backend_options={"tf32": True})


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_all_finite_finds_every_nan_and_inf(dtype, layout):
    """all_finite: NaN, +inf or -inf at any place is found, whichever check
    runs (x.x for C-contiguous float32/64, entry by entry otherwise);
    finite entries whose squares overflow still count as finite."""
    from gpubackprop.device import all_finite

    rng = np.random.default_rng(0)
    base = rng.normal(size=(37, 11)).astype(dtype)
    view = {"C": lambda a: a, "F": np.asfortranarray, "strided": lambda a: a[::2]}[layout]
    assert all_finite(view(base))
    big = np.finfo(dtype).max / 2
    huge = base.copy()
    huge[3, 4], huge[-1, -1] = big, -big            # x.x overflows: finite all the same
    assert all_finite(view(huge))
    for bad in (np.nan, np.inf, -np.inf):
        for i, j in ((0, 0), (17, 5), (36, 10)):
            X = huge.copy() if bad == np.nan else base.copy()
            X[i, j] = bad
            if layout == "strided" and i % 2:
                continue                              # not in the view
            assert not all_finite(view(X)), (bad, i, j)
    assert all_finite(np.empty((0, 3), dtype))


@pytest.mark.parametrize("cores", [2, 3])
def test_all_finite_over_the_cores_finds_nan_and_inf_in_every_part(monkeypatch, cores):
    """A long array's x.x is summed in one part per core on the thread pool:
    a NaN or inf in any part, at its edges too, is found; overflowing finite
    parts are checked entry by entry; part 0 runs here, the others on the pool."""
    import threading

    from gpubackprop import threads

    device = device_module

    monkeypatch.setattr(device, "PARALLEL_DOT", 100)
    monkeypatch.setattr(device, "SMALL_CHECK", 0)       # x.x even for this small array
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    calls = []
    real_dot = device._dot
    monkeypatch.setattr(device, "_dot",
                        lambda x: calls.append((threading.get_ident(), x.size)) or real_dot(x))
    X = np.random.default_rng(1).normal(size=(61, 11)).astype(np.float32)   # 671 entries
    assert device.all_finite(X)
    assert sum(size for _, size in calls) == X.size and len(calls) == cores
    here = threading.get_ident()
    assert sum(t == here for t, _ in calls) == 1
    edges = [k * X.size // cores for k in range(cores)] + [X.size - 1]
    for bad in (np.nan, np.inf, -np.inf):
        for flat in sorted({e for k in edges for e in (k - 1, k) if 0 <= e < X.size}):
            Y = X.copy()
            Y.flat[flat] = bad
            assert not device.all_finite(Y), (bad, flat)
    huge = X.copy()
    huge.flat[-1] = np.finfo(np.float32).max               # its part's x.x overflows
    assert device.all_finite(huge)


@pytest.mark.parametrize("kernels, flags, warned", [
    ("Haswell", ["avx2", "avx512f"], True), ("SkylakeX", ["avx2", "avx512f"], False),
    ("Haswell", ["avx2"], False)])
def test_cpu_blas_warns_of_avx2_kernels_on_an_avx512_cpu(monkeypatch, kernels, flags, warned):
    """OPENBLAS_CORETYPE=Haswell on an AVX-512 CPU halves the GEMM rate: info
    and the bench say so; an AVX2 CPU running AVX2 kernels is not warned."""
    device = device_module

    monkeypatch.setattr(device, "_cpu_flags", lambda: flags)
    blas = [{"library": "numpy", "api": "openblas", "version": "0.3.31", "kernels": kernels,
             "threads": 2}]
    warning = device.cpu_blas_warning(blas)
    assert (warning is not None) == warned
    if warned:
        assert "Haswell" in warning and "OPENBLAS_CORETYPE" in warning
    assert all(b["library"] in ("numpy", "scipy") for b in device.cpu_blas())
