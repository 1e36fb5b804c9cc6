"""Every .cu build compiles with NVRTC, the compiler CuPy's RawModule uses at
run time, here without a GPU (nvcc compiles them too: test_kernels_compile.py).

Each build of `kernels.builds()` is compiled from `kernels.source(name)` with
its launcher's own -D options for compute_90 (all in one session-scoped
pass).  dense_forward_tf32.cu includes <mma.h>: it gets `-I` for a CUDA
include folder that really has crt/mma.h (the device layer's
`cuda_include_path` when there is one, else the toolkit's), as the backend
passes it; without one it skips.  Needs NVRTC's library (the
nvidia-cuda-nvrtc wheel) and its Python binding (cuda-bindings).
"""
import os
import shutil

import pytest

from gpubackprop.backends.gpu_common import kernels_package

nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings is not installed")
K = kernels_package()
BUILDS = K.builds()


def _include():
    """A CUDA include folder with crt/mma.h, or None."""
    from gpubackprop.device import cuda_include_path

    found = cuda_include_path()
    if found:
        return found
    nvcc = shutil.which("nvcc")
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda",
             os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None]
    for root in filter(None, roots):
        if os.path.exists(os.path.join(root, "include", "crt", "mma.h")):
            return os.path.join(root, "include")
    return None


def _compile(source, name, options):
    """(ok, log) from NVRTC, or None when NVRTC's library is missing."""
    try:
        err, prog = nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], [])
    except RuntimeError:
        return None
    (err,) = nvrtc.nvrtcCompileProgram(prog, len(options), [o.encode() for o in options])
    _, size = nvrtc.nvrtcGetProgramLogSize(prog)
    log = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, log)
    nvrtc.nvrtcDestroyProgram(prog)
    return err == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")


def _id(name, dtype, defines):
    return f"{name[:-3]}-{dtype}{'-atomic' if 'FUSED_ATOMIC' in defines else ''}"


_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import test_kernels_nvrtc as t
out = {}
for name, dtype, defines in t.BUILDS:
    opts = [f"-D{k}={v}" for k, v in sorted(defines.items())]
    opts += ["--gpu-architecture=compute_90"] + ([f"-I{sys.argv[2]}"] if sys.argv[2] else [])
    if "tf32" in name and not sys.argv[2]:
        out[t._id(name, dtype, defines)] = None
        continue
    out[t._id(name, dtype, defines)] = t._compile(t.K.source(name), name, opts)
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def compiled():
    """{build id: (ok, log)} for compute_90 (None: skipped, with the reason).

    NVRTC runs in a child process: loading it into the test process was seen
    to break joblib's unpickling of unrelated objects later in the session
    (scikit-learn's check_estimators_pickle), so the native library stays out."""
    import json
    import pathlib
    import subprocess
    import sys

    include = _include() or ""
    r = subprocess.run([sys.executable, "-c", _CHILD, str(pathlib.Path(__file__).parent), include],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    if any(v is None and "tf32" not in k for k, v in out.items()):
        pytest.skip("NVRTC's library is not installed")
    return out


@pytest.mark.parametrize("build", BUILDS, ids=[_id(*b) for b in BUILDS])
def test_kernel_compiles_with_nvrtc(compiled, build):
    result = compiled[_id(*build)]
    if result is None:
        pytest.skip("no CUDA include folder with crt/mma.h for <mma.h>")
    ok, log = result
    assert ok, log
