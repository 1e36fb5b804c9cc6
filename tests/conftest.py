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

