"""The numba.cuda kernels build for real GPUs, here without one.

The simulator runs the kernels' Python, but it accepts code the CUDA target
rejects (a shared-array shape written as a sum, say).  This compiles every
numba.cuda kernel for sm_80 and sm_90 through numba's real CUDA pipeline
(typing, NVVM, PTX) and assembles the PTX with ptxas, checking that the
float32 kernels do not spill.  It also checks the two fixes that make the
first compile work at all on the GPU machine's stack: NumPy 2.5 without
np.row_stack (simulated by deleting it), and libnvvm found when numba-cuda's
own search gives up (nvrtc from a wheel, no CUDA_HOME; simulated).  Each runs
in a subprocess, because this test session has the simulator switched on.
Needs NVRTC's library (the nvidia-cuda-nvrtc wheel of the test extra),
libnvvm (the CUDA toolkit or the nvidia-nvvm wheel) and, for the assembly,
ptxas (the CUDA toolkit).
"""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from nvcc_util import parse_ptxas

BUILD = textwrap.dedent(r"""
    import json, sys
    import numpy as np
    from numba import cuda, types
    import gpubackprop.kernels.numba_kernels as nk
    import gpubackprop.kernels.fused_mlp_numba as fm

    cc = tuple(int(c) for c in sys.argv[1])
    out = {}
    for dt, nt in ((np.float32, types.float32), (np.float64, types.float64)):
        k = nk.kernels(dt)
        A2, A1, f, i = types.Array(nt, 2, "C"), types.Array(nt, 1, "C"), nt, types.int32
        I1 = types.Array(types.int64, 1, "C")
        I1i = types.Array(types.int32, 1, "C")
        cases = {
            "dense_forward": (k.dense_forward, (A2, A2, A1, A2, i)),
            "delta_propagate": (k.delta_propagate, (A2, A2, A2, A2, i)),
            "weight_update": (k.weight_update, (A2, A2, A2, A2, A2, A2, i, f, f, f, f, i)),
            "bias_update": (k.bias_update, (A2, A1, A1, A1, A2, i, f, f, f, f, i)),
            "update_reduce": (k.update_reduce, (A2, A2, A2, A2, A1, A1, A1, i, i,
                                                f, f, f, f, i)),
            # the widest the twin takes on a GPU (fm.static_smem_bytes)
            "fused_forward": (fm.kernels(dt, 48 if dt is np.float32 else 16)["fused_forward"],
                              (A2, I1, i, i, A1, I1i, I1i, A1)),
        }
        for name, (kernel, sig) in cases.items():
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc)
            out[f"{name}-{np.dtype(dt).name}"] = ptx
    json.dump(out, sys.stdout)
""")


def _python(code, workdir, *args):
    """Run `code` in a fresh interpreter with the real CUDA target; skip when
    the compiler's libraries are missing on this machine."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    # run outside the checkout: with -c the current folder comes first on sys.path,
    # and the source tree's gpubackprop/ has no kernels/ (the installed one has)
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                       env=env, timeout=600, cwd=workdir)
    if r.returncode and ("libnvrtc" in r.stderr or "NVRTC" in r.stderr):
        pytest.skip("NVRTC's library is not installed (pip install nvidia-cuda-nvrtc)")
    if r.returncode and "libnvvm (NVVM" in r.stderr:
        pytest.skip("libnvvm is not installed (the CUDA toolkit or pip install nvidia-nvvm)")
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


def _build(cc, workdir):
    return json.loads(_python(BUILD, workdir, cc))


NO_ROW_STACK = textwrap.dedent(r"""
    import numpy as np
    del np.row_stack                  # NumPy 2.5 removed it
    from gpubackprop.backends import numba_cuda
    assert numba_cuda._probe((9, 0)) is None, numba_cuda._probe((9, 0))
    assert np.row_stack is np.vstack
    print(numba_cuda.numba_kernels().probe_ptx((9, 0)).count(".entry"))
""")


def test_first_compile_works_on_numpy_without_row_stack(tmp_path):
    """numba-cuda 0.30 evaluates np.row_stack at its first compile: without
    the shim in numba_kernels.py this raises AttributeError."""
    assert _python(NO_ROW_STACK, tmp_path).strip() == "1"


NVVM_NOT_FOUND = textwrap.dedent(r"""
    import ctypes, os
    from cuda import pathfinder
    real = pathfinder.load_nvidia_dynamic_lib

    def search_that_gives_up(name):
        # numba-cuda's case on the GPU machine: nvrtc from a wheel, no CUDA_HOME,
        # so only a libnvvm already loaded in the process is found
        if name == "nvvm":
            try:
                ctypes.CDLL("libnvvm.so.4", mode=os.RTLD_NOLOAD)
            except OSError:
                raise pathfinder.DynamicLibNotFoundError("nvvm: not found (simulated)")
        return real(name)

    pathfinder.load_nvidia_dynamic_lib = search_that_gives_up
    from gpubackprop.backends import numba_cuda
    nk = numba_cuda.numba_kernels()
    print(nk.prepare_compiler())
    assert ".entry" in nk.probe_ptx((8, 0))
""")


def test_libnvvm_is_found_when_pathfinder_gives_up(tmp_path):
    path = _python(NVVM_NOT_FOUND, tmp_path).strip()
    assert "libnvvm" in os.path.basename(path), path


@pytest.mark.parametrize("cc", ["80", "90"])
def test_numba_kernels_compile_for_the_gpu_without_spills(cc, tmp_path):
    ptxas = shutil.which("ptxas") or "/usr/local/cuda/bin/ptxas"
    ptx_by_kernel = _build(cc, tmp_path)
    assert len(ptx_by_kernel) == 12
    if not os.path.exists(ptxas):
        pytest.skip("ptxas is not installed: PTX built, not assembled")
    for name, ptx in ptx_by_kernel.items():
        src = tmp_path / f"{name}.ptx"
        src.write_text(ptx)
        r = subprocess.run([ptxas, f"-arch=sm_{cc}", "-v", str(src), "-o",
                            str(tmp_path / f"{name}.cubin")], capture_output=True, text=True)
        assert r.returncode == 0, f"{name}: {r.stderr[-2000:]}"
        report = parse_ptxas(r.stdout + r.stderr)
        assert report, f"{name}: no ptxas report"
        for stats in report.values():
            print(f"sm_{cc} {name}: {stats}")
            if name.endswith("float32"):
                assert stats["spill_stores"] == 0 and stats["spill_loads"] == 0, (name, stats)


def test_fused_twin_static_shared_memory_limits():
    import gpubackprop.kernels.fused_mlp_numba as fm

    assert fm.static_smem_bytes("float32", 48) <= fm.STATIC_SMEM_LIMIT
    assert fm.static_smem_bytes("float32", 64) > fm.STATIC_SMEM_LIMIT
    assert fm.static_smem_bytes("float64", 16) <= fm.STATIC_SMEM_LIMIT
    assert fm.static_smem_bytes("float64", 32) > fm.STATIC_SMEM_LIMIT


UNAVAILABLE = textwrap.dedent(r"""
    import importlib, sys, types
    device_module = importlib.import_module("gpubackprop.device")
    device_module.cuda_status = lambda: (1, "")          # CuPy sees a GPU (pretended)
    from gpubackprop.backends import numba_cuda

    class PretendGPU(device_module.Device):
        xp = types.SimpleNamespace(cuda=types.SimpleNamespace(
            Device=lambda i: types.SimpleNamespace(compute_capability=sys.argv[1])))

    nk = numba_cuda.numba_kernels()
    if sys.argv[2] == "no-nvvm":                         # nothing to find anywhere
        from cuda import pathfinder
        def not_found(name):
            raise pathfinder.DynamicLibNotFoundError(f"{name}: not found (simulated)")
        pathfinder.load_nvidia_dynamic_lib = not_found
        nk.libnvvm_candidates = lambda: []
    print(numba_cuda.NumbaCudaBackend.unavailable_reason(PretendGPU("cuda", 0)))
""")


def test_unavailable_reason_compiles_a_probe_for_the_device(tmp_path):
    """The probe compiles for the device's compute capability; what is left
    (here: no driver for numba.cuda to launch with) is said, not a crash."""
    reason = _python(UNAVAILABLE, tmp_path, "90", "as-is").strip()
    if "libnvvm (NVVM" in reason:
        pytest.skip("libnvvm is not installed (the CUDA toolkit or pip install nvidia-nvvm)")
    assert "numba.cuda finds no usable GPU" in reason


def test_unavailable_reason_says_when_nothing_can_compile(tmp_path):
    reason = _python(UNAVAILABLE, tmp_path, "90", "no-nvvm").strip()
    assert "cannot compile a kernel for sm_90" in reason and "libnvvm" in reason
