"""Device detection says which part is missing (CuPy, a GPU and its driver,
or CuPy's ability to compile), with fake CuPy modules, on any machine; and
cuda_include_path finds a header folder that really has crt/mma.h."""
import importlib
import sys
import types

import pytest

import gpubackprop as gb

device_module = importlib.import_module("gpubackprop.device")


class FakeCompileError(Exception):
    pass


def fake_cupy(n_devices=1, count_error=None, compile_error=None):
    """A stand-in for the cupy module: the runtime's device count, and an
    ElementwiseKernel that compiles (y = 2x + 1 on NumPy) or raises."""
    import numpy as np

    cp = types.ModuleType("cupy")

    def get_device_count():
        if count_error is not None:
            raise count_error
        return n_devices

    cp.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(
        getDeviceCount=get_device_count))
    cp.float32 = np.float32
    cp.arange = np.arange

    def elementwise(in_params, out_params, body, name):
        if compile_error is not None:
            raise compile_error
        return lambda x: 2 * x + 1

    cp.ElementwiseKernel = elementwise
    return cp


@pytest.fixture
def with_cupy(monkeypatch):
    """Install a fake cupy; the driver check is answered by `driver`."""
    def install(cp, driver=True):
        monkeypatch.setitem(sys.modules, "cupy", cp)
        monkeypatch.setattr(device_module, "_driver_loadable", lambda: driver)
        device_module.cuda_status.cache_clear()
        return device_module.cuda_status()
    yield install
    device_module.cuda_status.cache_clear()


def test_cupy_missing(with_cupy):
    n, why = with_cupy(None)          # sys.modules["cupy"] = None: ImportError
    assert n == 0 and "CuPy could not be imported" in why and "pip install" in why


def test_cupy_but_no_driver_does_not_say_upgrade(with_cupy):
    error = RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient "
                         "for CUDA runtime version")
    n, why = with_cupy(fake_cupy(count_error=error), driver=False)
    assert n == 0 and "no NVIDIA GPU driver was found" in why
    assert "upgrade" not in why.lower() and "insufficient" not in why
    with pytest.raises(RuntimeError, match="no NVIDIA GPU driver") as info:
        gb.device("cuda")
    assert "pip install" not in str(info.value)       # CuPy is there: no install hint


def test_driver_without_devices(with_cupy):
    n, why = with_cupy(fake_cupy(n_devices=0))
    assert n == 0 and "reports no CUDA device" in why


def test_old_driver_reports_the_runtime_error(with_cupy):
    error = RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")
    n, why = with_cupy(fake_cupy(count_error=error), driver=True)
    assert n == 0 and "insufficient" in why


def test_cupy_that_cannot_compile_is_not_a_usable_gpu(with_cupy, capsys):
    error = FakeCompileError('catastrophic error: cannot open source file "cuda_fp16.h"\n...')
    n, why = with_cupy(fake_cupy(compile_error=error))
    assert n == 0 and "cannot compile" in why and "headers" in why
    assert gb.device("auto").kind == "cpu"
    assert "cannot compile" in capsys.readouterr().err


def test_other_first_kernel_failure(with_cupy):
    n, why = with_cupy(fake_cupy(compile_error=FakeCompileError("out of resources")))
    assert n == 0 and "first kernel" in why and "out of resources" in why


def test_usable_gpu(with_cupy):
    assert with_cupy(fake_cupy(n_devices=2)) == (2, "")


def test_cuda_include_path_has_crt_mma(tmp_path, monkeypatch):
    """A wheel folder with mma.h but no crt/mma.h (nvidia-cuda-runtime) is
    passed over for one that has it."""
    runtime = tmp_path / "site" / "nvidia" / "cu13" / "include"
    runtime.mkdir(parents=True)
    (runtime / "mma.h").write_text("#include <crt/mma.h>\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "site")])
    monkeypatch.setattr("shutil.which", lambda name: None)
    found = device_module.cuda_include_path()
    assert found is None or (pathlib_has(found, "crt/mma.h") and "site" not in found)
    crt = tmp_path / "site" / "nvidia" / "cuda_crt" / "include" / "crt"
    crt.mkdir(parents=True)
    (crt / "mma.h").write_text("// tensor core intrinsics\n")
    assert device_module.cuda_include_path() == str(crt.parent)


def pathlib_has(folder, rel):
    import os

    return os.path.isfile(os.path.join(folder, rel))
