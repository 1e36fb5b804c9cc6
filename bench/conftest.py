"""pytest-benchmark suites for gpubackprop.

    pytest bench                          # tiny sizes: every code path, in seconds
    pytest bench --benchmark-disable      # each case runs once, no timing (tests/test_bench.py)
    pytest bench --quick                  # the sizes of the default `gpubackprop bench`
    pytest bench --full                   # the full sizes

The sizes come from gpubackprop.bench.PROFILES ("tiny", "quick", "full"), so
the suites and the `gpubackprop bench` command measure the same things.
"""
import os
import shutil

import pytest


def _gpu_present():
    return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


# as tests/conftest.py: without a GPU, numba.cuda code runs under the simulator
if "NUMBA_ENABLE_CUDASIM" not in os.environ and not _gpu_present():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"


def pytest_addoption(parser):
    group = parser.getgroup("gpubackprop bench")
    group.addoption("--full", action="store_true", default=False, help="full-size regimes")
    group.addoption("--quick", action="store_true", default=False,
                    help="the sizes of the default `gpubackprop bench` run")


def profile_name(config):
    if config.getoption("--full"):
        return "full"
    return "quick" if config.getoption("--quick") else "tiny"


def _devices():
    from gpubackprop.device import available_devices

    # real GPUs only: timing the cuda-emulator would measure nothing
    return ["cpu"] + [d for d in available_devices() if d.startswith("cuda:")][:1]


DEVICES = _devices()


@pytest.fixture(scope="session")
def profile(pytestconfig):
    from gpubackprop.bench import PROFILES

    return PROFILES[profile_name(pytestconfig)]


def pytest_generate_tests(metafunc):
    """Parametrise over the grids of the chosen profile."""
    from gpubackprop import backends
    from gpubackprop.bench import OPS, PEERS, PROFILES
    from gpubackprop.device import device

    cfg = PROFILES[profile_name(metafunc.config)]
    if "op_case" in metafunc.fixturenames:
        metafunc.parametrize("op_case", [
            pytest.param((be, dev, op, batch, width), id=f"{dev}-{be}-{op}-b{batch}-w{width}")
            for dev in DEVICES for be in backends.available(device(dev))
            for op in OPS for batch in cfg.ops_batches for width in cfg.ops_widths])
    if "training_case" in metafunc.fixturenames:
        metafunc.parametrize("training_case", [
            pytest.param((regime, dev, impl), id=f"{regime.name}-{dev}-{impl}")
            for regime in cfg.regimes for dev in DEVICES
            for impl in ("gpubackprop", "gpubackprop[fast-path]", "gpubackprop[loop]")
            + tuple(p for p in PEERS if p != "paths")])
