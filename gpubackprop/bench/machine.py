"""Where a benchmark ran: the machine, the library versions, the load, the commit."""
import contextlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys

import numpy as np

from ..device import cpu_blas, cpu_blas_warning
from ..threads import usable_cores

#: module -> distribution names to ask the package metadata when it is not imported
_DISTS = {"numba": ("numba",), "scipy": ("scipy",), "torch": ("torch",), "jax": ("jax",),
          "sklearn": ("scikit-learn",), "matplotlib": ("matplotlib",),
          "cupy": ("cupy-cuda13x", "cupy-cuda12x", "cupy")}


def commit(given=None):
    """The code measured: `given` if set, else the git commit of the checkout
    this package is imported from ("+dirty" with uncommitted changes to
    tracked files), else the commit pip recorded when it installed from git,
    else "unknown"."""
    if given:
        return given
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    head = _git(root, "rev-parse", "--show-toplevel")
    if head and os.path.realpath(head) == os.path.realpath(root):
        sha = _git(root, "rev-parse", "--short=12", "HEAD")
        if sha:
            dirty = _git(root, "status", "--porcelain", "--untracked-files=no")
            return sha + ("+dirty" if dirty else "")
    with contextlib.suppress(Exception):
        direct = importlib.metadata.distribution("gpubackprop").read_text("direct_url.json")
        sha = json.loads(direct or "{}").get("vcs_info", {}).get("commit_id")
        if sha:
            return sha[:12]
    return "unknown"


def _git(cwd, *args):
    with contextlib.suppress(Exception):
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=10)
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def package_version():
    with contextlib.suppress(Exception):
        return importlib.metadata.version("gpubackprop")
    from .. import __version__

    return __version__


def loadavg():
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def busy_warning(load):
    """A sentence when other work already keeps the CPUs busy (timings will be noisy)."""
    n = usable_cores()
    if load and load[0] >= 0.75 * n:
        return (f"the machine is busy before the benchmark starts (1-min load average "
                f"{load[0]:.2f} on {n} CPUs): timings will be noisy, multi-threaded BLAS "
                f"and OpenMP code most")
    return None


def installed_version(mod):
    """The version of module `mod`: the loaded module's, else its installed
    distribution's (_DISTS), read without importing it; None if absent."""
    version = getattr(sys.modules.get(mod), "__version__", None)
    for dist in _DISTS.get(mod, (mod,)) if version is None else ():
        with contextlib.suppress(Exception):
            return importlib.metadata.version(dist)
    return version


def machine(devices):
    """The machine and library versions; `gpus` names every GPU in `devices`."""
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "cpus_usable": usable_cores(),
            "numpy": np.__version__, "blas": cpu_blas()}
    info["blas_warning"] = cpu_blas_warning(info["blas"])
    for mod in _DISTS:
        info[mod] = installed_version(mod)
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
    info["gpus"] = [_gpu(d) for d in devices if d != "cpu"]
    return info


def _cpu_name():
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _gpu(spec):
    """{"device", "name", "memory_bytes", "compute_capability", "cuda_runtime",
    "driver"} through CuPy, else PyTorch, else the name "unknown" and why."""
    from ..device import device as get_device

    out = {"device": spec}
    try:
        dev = get_device(spec)
        cp = dev.xp
        props = cp.cuda.runtime.getDeviceProperties(dev.index)
        name = props["name"]
        out.update(name=name.decode() if isinstance(name, bytes) else str(name),
                   memory_bytes=int(props.get("totalGlobalMem", 0)),
                   compute_capability=f"{props.get('major')}.{props.get('minor')}",
                   cuda_runtime=cp.cuda.runtime.runtimeGetVersion(),
                   driver=cp.cuda.runtime.driverGetVersion())
        return out
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
    torch = sys.modules.get("torch")
    with contextlib.suppress(Exception):
        index = int(spec.partition(":")[2] or 0)
        out.update(name=torch.cuda.get_device_name(index),
                   memory_bytes=int(torch.cuda.get_device_properties(index).total_memory))
        return out
    out.update(name="unknown", why=why)
    return out
