"""Test set-up shared by every test module.

Without a GPU, numba.cuda kernels run under the CUDA simulator; the switch
must be set before numba is first imported, so it is set here, at the very
start of the session.  On a machine with a GPU nothing is changed.
"""
import os
import shutil


def _gpu_present():
    return os.path.exists("/dev/nvidiactl") or shutil.which("nvidia-smi") is not None


if "NUMBA_ENABLE_CUDASIM" not in os.environ and not _gpu_present():
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"



import pytest  # noqa: E402 - after the simulator switch above


@pytest.fixture(autouse=True, scope="session")
def _autotune_record(tmp_path_factory):
    """The session records auto's measured choices (autotune.py) in a file of
    its own, not in the user's ~/.cache."""
    from gpubackprop import autotune

    autotune.use_cache(tmp_path_factory.mktemp("autotune") / "autotune.json")
    yield
    autotune.use_cache(None)
