"""Every CUDA C build (gpubackprop.kernels.builds(): each .cu with exactly the
-D defines its launcher uses, fused_mlp.cu's atomic build included) compiles
with nvcc for sm_90, and does not spill (float64 fused kernels may: they are
register-bound by design).  `test_every_build_for_sm80_too` (marked slow)
does the same for sm_80.

This needs nvcc only, no GPU: it checks that the kernels are valid CUDA and
fit in registers, not what they compute (they run on the cuda-emulator in
tests/test_kernels_emulated.py).  Skips with the reason when nvcc is absent.
The source compiled is `kernels.source(name)`, the text NVRTC gets (local
headers inlined), written once per session.
"""
import concurrent.futures
import os
import pathlib

import pytest

from gpubackprop.backends.gpu_common import kernels_package
from nvcc_util import NVCC, compile_cubin, parse_ptxas

kp = kernels_package()
BUILDS = kp.builds()
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (PATH, CUDA_HOME, "
                                "/usr/local/cuda): the CUDA C kernels cannot be compiled here")


def _id(name, dtype, defines):
    return f"{pathlib.Path(name).stem}-{dtype}{'-atomic' if 'FUSED_ATOMIC' in defines else ''}"


def _compile_all(workdir, archs):
    """{(build id, arch): (returncode, log, command)}, compiled in parallel."""
    jobs = [(b, arch) for b in BUILDS for arch in archs
            if arch >= kp.MIN_ARCH.get(b[0], 0)]

    def one(job):
        (name, dtype, defines), arch = job
        stem = f"{_id(name, dtype, defines)}-sm{arch}"
        src = workdir / f"{pathlib.Path(name).stem}.cu"
        return compile_cubin(src, workdir / f"{stem}.cubin", arch, defines)

    for name in kp.KERNELS:
        (workdir / name).write_text(kp.source(name))
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        results = list(pool.map(one, jobs))
    return {(_id(*b), arch): r for (b, arch), r in zip(jobs, results)}


@pytest.fixture(scope="session")
def sm90(tmp_path_factory):
    return _compile_all(tmp_path_factory.mktemp("cubin90"), (90,))


def _check(build, arch, result):
    name, dtype, defines = build
    rc, log, cmd = result
    assert rc == 0, f"{cmd}\n{log}"
    assert "warning" not in log.lower(), f"{cmd}\n{log}"
    info = parse_ptxas(log)
    assert set(info) == set(kp.KERNELS[name]), log
    for kernel, figures in info.items():
        if not (name == "fused_mlp.cu" and dtype == "float64"):
            assert figures["spill_stores"] == 0 and figures["spill_loads"] == 0, \
                f"{kernel} ({dtype}, sm_{arch}) spills: {figures}\n{log}"
        assert figures["registers"] <= 255
    return ", ".join(f"{k} {v['registers']} regs, {v['smem']} B smem, spills "
                     f"{v['spill_stores']}/{v['spill_loads']}" for k, v in sorted(info.items()))


@pytest.mark.parametrize("build", BUILDS, ids=[_id(*b) for b in BUILDS])
def test_compiles_for_sm90_without_spills(sm90, build):
    print(f"{_id(*build)}-sm90: {_check(build, 90, sm90[(_id(*build), 90)])}")


@pytest.mark.slow
def test_every_build_for_sm80_too(tmp_path):
    """sm_80 (A100), the oldest architecture the launchers target."""
    results = _compile_all(tmp_path, (80,))
    for build in BUILDS:
        if 80 >= kp.MIN_ARCH.get(build[0], 0):
            _check(build, 80, results[(_id(*build), 80)])


def test_sources_are_self_contained_and_have_no_defaults():
    """The inlined text includes no local header; no tile size has a fallback
    value in the sources (the -D defines are the only copy)."""
    for name in kp.KERNELS:
        text = kp.source(name)
        assert '#include "' not in text, name
        assert "#ifndef TILE" not in text and "#ifndef FUSED" not in text, name
        assert set(kp.kernel_parameters(text)) == set(kp.KERNELS[name]), name


def test_options_inject_every_define():
    for name, dtype, defines in BUILDS:
        opts = kp.options(name, dtype, atomic="FUSED_ATOMIC" in defines)
        assert len(opts) == len(defines)
        assert f"-DREAL={'float' if dtype == 'float32' else 'double'}" in opts


def test_parse_ptxas():
    text = ("ptxas info    : Compiling entry function 'fused_forward' for 'sm_80'\n"
            "ptxas info    : Function properties for fused_forward\n"
            "    0 bytes stack frame, 4 bytes spill stores, 8 bytes spill loads\n"
            "ptxas info    : Used 70 registers, used 1 barriers, 400 bytes smem, 416 bytes cmem[0]\n")
    assert parse_ptxas(text) == {"fused_forward": {"stack": 0, "spill_stores": 4,
                                                   "spill_loads": 8, "registers": 70,
                                                   "smem": 400}}
