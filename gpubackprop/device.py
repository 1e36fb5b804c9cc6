"""Devices: where arrays live, and the one switch between NumPy and CuPy.

Only this module imports CuPy, and only when a CUDA device is asked for, so
the package imports and runs on a machine without CuPy.  It also counts the
bytes that cross between host and device, so tests can check that training
on the GPU waits on the device only once per epoch.
"""
import contextlib
import functools
import os
import sys

import numpy as np

from . import threads
from .checks import unknown_choice

INSTALL_HINT = ("install CuPy for your CUDA version: pip install 'gpubackprop[cuda12]' "
                "or 'gpubackprop[cuda13]'")


class Device:
    """A place for arrays: `kind` is "cpu", "cuda" or "cuda-emulator" (the CUDA C
    kernels compiled for this CPU, arrays in host memory), `index` the GPU number."""

    def __init__(self, kind, index=None):
        self.kind = kind
        self.index = index if kind == "cuda" else None

    @property
    def xp(self):
        """The array module of this device: numpy or cupy (numpy on the emulator)."""
        return import_cupy() if self.kind == "cuda" else np

    def asarray(self, array, dtype=None):
        """`array` (NumPy, CuPy or Tensor) as an array of this device, copying
        across devices (and counting the transfer) only when needed."""
        array = getattr(array, "__gb_array__", array)    # a Tensor: its array
        on_gpu = is_cupy_array(array)
        if self.kind != "cuda":
            if on_gpu:
                array = to_host(array)
            return np.asarray(array, dtype=dtype)
        cp = import_cupy()
        with cp.cuda.Device(self.index):
            if not on_gpu:
                host = np.asarray(array, dtype=dtype)
                transfers.count("to_device", host.nbytes)
                return cp.asarray(host)
            return cp.asarray(array, dtype=dtype)

    def synchronize(self):
        if self.kind == "cuda":
            import_cupy().cuda.Device(self.index).synchronize()

    def __str__(self):
        return self.kind if self.kind != "cuda" else f"cuda:{self.index}"

    def __repr__(self):
        return f"device({str(self)!r})"

    def __eq__(self, other):
        if isinstance(other, str):
            other = device(other)
        return isinstance(other, Device) and (self.kind, self.index) == (other.kind, other.index)

    def __hash__(self):
        return hash((self.kind, self.index))


class TransferCounter:
    """Counts host<->device copies made through this package."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.to_host = 0
        self.to_device = 0
        self.bytes_to_host = 0
        self.bytes_to_device = 0

    def count(self, direction, nbytes):
        setattr(self, direction, getattr(self, direction) + 1)
        key = "bytes_" + direction
        setattr(self, key, getattr(self, key) + int(nbytes))

    def __repr__(self):
        return (f"TransferCounter(to_host={self.to_host}, to_device={self.to_device}, "
                f"bytes_to_host={self.bytes_to_host}, bytes_to_device={self.bytes_to_device})")


transfers = TransferCounter()


def to_host(array):
    """A NumPy copy of a CuPy array (counted), or the NumPy array itself."""
    if is_cupy_array(array):
        transfers.count("to_host", array.nbytes)
        return array.get()
    return np.asarray(array)


def all_finite(array):
    """True if every entry of a NumPy or CuPy array is finite; on the GPU the
    reduction runs there and only its one bool is read back."""
    if is_cupy_array(array):
        return bool(to_host(import_cupy().isfinite(array).all()))
    array = np.asarray(array)
    if array.size < SMALL_CHECK:
        return bool(np.isfinite(array).all())
    if array.dtype in (np.float32, np.float64) and array.flags.c_contiguous:
        # x.x in one BLAS pass, no temporary (every fit checks its data: the
        # time is in bench/RESULTS.md): its terms are >= 0 or NaN, so a NaN
        # or inf entry makes it NaN or inf and a finite x.x proves every
        # entry finite; one that overflows (entries past ~1e19 in float32)
        # is checked entry by entry below
        if np.isfinite(_self_dot(array.reshape(-1))):
            return True
    return bool(np.isfinite(array).all())


#: arrays of fewer entries are checked by isfinite (their temporary is small,
#: and a BLAS call with its error state costs more than the pass)
SMALL_CHECK = 1 << 14
#: entries from which x.x is split over the cores: one core alone does not
#: reach the memory's bandwidth, and smaller arrays are not worth a hand-off
PARALLEL_DOT = 1 << 20


def _self_dot(flat):
    """flat . flat for a 1-D array (overflow to inf is not an error here), in
    one contiguous part per usable core (threads: BLAS releases the GIL) when
    it is long; the parts' sums add up."""
    parts = min(threads.usable_cores(), flat.size // PARALLEL_DOT)
    if parts < 2:
        return _dot(flat)
    chunks = np.array_split(flat, parts)
    others = [threads.pool(parts - 1).submit(_dot, c) for c in chunks[1:]]
    total = _dot(chunks[0])
    with np.errstate(over="ignore", invalid="ignore"):
        return total + sum(f.result() for f in others)


def _dot(x):
    with np.errstate(over="ignore", invalid="ignore"):     # the state is per thread
        return np.dot(x, x)


def is_cupy_array(array):
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(array, cp.ndarray)


def array_module(array):
    """numpy or cupy: the module of `array` (xp of a given array; only a CuPy
    array makes this import CuPy)."""
    return import_cupy() if is_cupy_array(array) else np


def import_cupy():
    """Import CuPy, or raise RuntimeError saying why and how to install it."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        raise RuntimeError(f"CUDA is not usable: CuPy could not be imported ({exc}); "
                           f"{INSTALL_HINT}") from exc
    return cupy


@functools.lru_cache(maxsize=1)
def cuda_status():
    """(number of usable CUDA devices, reason when there are none).

    The reason says which of three things is missing: CuPy itself, a GPU
    with its driver, or CuPy's ability to compile a kernel (NVRTC needs the
    CUDA headers; without them the first kernel would fail, so a GPU that
    cannot compile is not offered)."""
    try:
        cp = import_cupy()
    except RuntimeError as exc:
        return 0, str(exc)
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # no driver, driver too old, ...
        return 0, _no_gpu_reason(exc)
    if n == 0:
        return 0, _no_gpu_reason(None)
    why = _compile_probe(cp)
    return (0, why) if why else (n, "")


def _driver_loadable():
    """Whether the NVIDIA driver's CUDA library can be loaded in this process."""
    import ctypes

    try:
        ctypes.CDLL("nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1")
    except OSError:
        return False
    return True


def _no_gpu_reason(error):
    """Why CuPy (installed) sees no device: no driver at all, or what the
    runtime reports when there is one (an old driver, no device)."""
    if not _driver_loadable():
        return ("CUDA is not usable: CuPy is installed, but no NVIDIA GPU driver was found "
                "(the CUDA driver library cannot be loaded): this machine has no usable "
                "NVIDIA GPU")
    if error is None:
        return "CUDA is not usable: the NVIDIA driver is there, but it reports no CUDA device"
    return f"CUDA is not usable: the NVIDIA driver is there, but the CUDA runtime reports {error}"


def _compile_probe(cp):
    """None if CuPy compiles and runs a tiny element-wise kernel, else why not."""
    try:
        x = cp.arange(4, dtype=cp.float32)
        y = cp.ElementwiseKernel("float32 x", "float32 y", "y = 2 * x + 1",
                                 "gpubackprop_probe")(x)
        ok = float(y.sum()) == 16.0
    except Exception as exc:  # CompileException (headers), CUDARuntimeError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "cannot open source file" in str(exc):
            return ("CUDA is not usable: CuPy cannot compile kernels, the CUDA headers are "
                    f"missing ({first}); install them: pip install 'cupy-cuda13x[ctk]' (or "
                    "cupy-cuda12x[ctk]), or the CUDA toolkit")
        return f"CUDA is not usable: CuPy cannot compile or run a first kernel ({first})"
    if not ok:
        return "CUDA is not usable: a first CuPy kernel computed a wrong result"
    return None


def cuda_include_path():
    """A folder of CUDA headers that really holds crt/mma.h (what <mma.h>, the
    TF32 kernel's tensor-core header, includes), or None.

    The nvidia-cuda-runtime wheel's include folder, which CuPy hands to NVRTC,
    has mma.h but not crt/mma.h (that ships in nvidia-cuda-crt), so NVRTC
    fails with `cannot open source file "crt/mma.h"` unless a folder that has
    it is added with -I.  Looked for in the NVIDIA wheels on sys.path first
    (matching the installed runtime), then in the CUDA toolkit of the `nvcc`
    on PATH, then /usr/local/cuda."""
    import glob
    import os
    import shutil

    folders = []
    for root in sys.path:
        if root and os.path.isdir(os.path.join(root, "nvidia")):
            folders += sorted(glob.glob(os.path.join(root, "nvidia", "*", "include")))
    nvcc = shutil.which("nvcc")
    homes = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    for home in homes + ["/usr/local/cuda"]:
        folders += [os.path.join(home, "include")] + \
            sorted(glob.glob(os.path.join(home, "targets", "*", "include")))
    for folder in folders:
        if os.path.isfile(os.path.join(folder, "crt", "mma.h")):
            return folder
    return None


def available_devices():
    """Names of the usable devices, CPU first: ['cpu', 'cuda:0', ..., 'cuda-emulator']
    (the emulator when a C++17 compiler is there: emulator_status)."""
    n, _ = cuda_status()
    return ["cpu"] + [f"cuda:{i}" for i in range(n)] + \
        (["cuda-emulator"] if emulator_status()[0] else [])


#: the C++17 compilers the cuda-emulator tries, in order
EMULATOR_COMPILERS = ("g++", "clang++")


@functools.lru_cache(maxsize=None)
def find_cxx17(compiler=None):
    """(path, version line) of the C++17 compiler the cuda-emulator builds
    kernels with: `compiler` if given, else the first of EMULATOR_COMPILERS
    that builds a small C++17 program; RuntimeError saying which were tried
    and why each failed when none does."""
    import pathlib
    import shutil
    import subprocess
    import tempfile

    tried = []
    for name in ([compiler] if compiler else EMULATOR_COMPILERS):
        path = shutil.which(name)
        if path is None:
            tried.append(f"{name}: not found on PATH")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            src = pathlib.Path(tmp) / "probe.cpp"
            src.write_text("#include <ucontext.h>\ninline thread_local int x;\n"
                           "int main() { if constexpr (true) return x; }\n")
            proc = subprocess.run([path, "-std=c++17", "-o", str(src.with_suffix("")), str(src)],
                                  capture_output=True, text=True)
        if proc.returncode != 0:
            first = (proc.stderr.strip().splitlines() or ["no message"])[0]
            tried.append(f"{name}: cannot build C++17 ({first})")
            continue
        version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
        return path, version.splitlines()[0] if version else name
    raise RuntimeError("the cuda-emulator needs a C++17 compiler; tried " + "; ".join(tried))


@functools.lru_cache(maxsize=1)
def emulator_status():
    """(compiler, reason): the C++17 compiler the cuda-emulator device builds
    kernels with ("g++ (Debian 12.2.0) ... (/usr/bin/g++)"), or None and why
    there is none (which compilers were tried)."""
    try:
        path, version = find_cxx17()
    except RuntimeError as exc:
        return None, str(exc)
    return f"{version} ({path})", ""


#: what device() takes before ":N" ("gpu" is "cuda"; "_" is read as "-")
DEVICE_KINDS = ("cpu", "cuda", "cuda-emulator", "auto", "gpu")


def device(spec="auto"):
    """A Device from "cpu", "cuda", "cuda:N", "cuda-emulator", "auto" or a Device.

    "auto" is the first CUDA device when one is usable, else the CPU (with a
    one-line notice on stderr saying why CUDA is not used).  "cuda" where
    CUDA is unusable raises RuntimeError with the reason and the install hint.
    """
    if isinstance(spec, Device):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"device must be a string ('cpu', 'cuda', 'cuda:N', 'auto') "
                        f"or a Device; got {type(spec).__name__}")
    kind, _, index = spec.strip().lower().replace("_", "-").partition(":")
    if kind not in DEVICE_KINDS:
        raise unknown_choice("device", spec, DEVICE_KINDS)
    if kind in ("cpu", "cuda-emulator"):
        if index:
            raise ValueError(f"device {kind!r} takes no index; got {spec!r}")
        if kind == "cuda-emulator" and not emulator_status()[0]:
            raise RuntimeError(f"device 'cuda-emulator' was asked for, but "
                               f"{emulator_status()[1]}")
        return Device(kind)
    n, reason = cuda_status()
    if kind == "auto":
        if index:
            raise ValueError(f"device 'auto' takes no index; got {spec!r}")
        if n:
            return Device("cuda", 0)
        print(f"gpubackprop: using the CPU ({reason})", file=sys.stderr)
        return Device("cpu")
    try:
        i = int(index) if index else 0
    except ValueError:
        raise ValueError(f"device index must be an integer, as in 'cuda:0'; got {spec!r}") from None
    if i < 0:
        raise ValueError(f"device index must be >= 0, as in 'cuda:0'; got {spec!r}")
    if not n:
        raise RuntimeError(f"device {spec!r} was asked for, but {reason}")
    if not 0 <= i < n:
        raise ValueError(f"device {spec!r}: index out of range, this machine has {n} "
                         f"CUDA device(s) (cuda:0..cuda:{n - 1})")
    return Device("cuda", i)


#: OpenBLAS CPU types whose kernels stop at AVX2 (threadpoolctl's "architecture")
_AVX2_KERNELS = {"Haswell", "Zen", "SandyBridge", "Sandybridge", "Nehalem", "Prescott"}


def cpu_blas():
    """The BLAS libraries NumPy's and SciPy's wheels bring (the numba
    backend runs one of them: backends/numba_cpu_blas.py), as threadpoolctl
    finds them loaded: [{"library": "numpy"
    or "scipy" (whose wheel brought it), "api", "version", "kernels" (the CPU
    type OpenBLAS picked), "threads"}]."""
    import numpy  # noqa: F401
    with contextlib.suppress(ImportError):
        import scipy.linalg.cython_blas  # noqa: F401   loaded, so that it is listed
    try:
        import threadpoolctl
        found = threadpoolctl.threadpool_info()
    except Exception:                 # a library threadpoolctl cannot read
        return []
    return [{"library": _wheel(i.get("filepath", "?")), "api": i.get("internal_api"),
             "version": i.get("version"), "kernels": i.get("architecture"),
             "threads": i.get("num_threads")}
            for i in found if i.get("user_api") == "blas"]


def _wheel(path):
    """numpy or scipy where the library came in that wheel, else its file name."""
    return next((p for p in ("numpy", "scipy") if f"{p}.libs" in path), os.path.basename(path))


def cpu_blas_warning(blas):
    """A sentence when OpenBLAS runs AVX2 kernels on a CPU with AVX-512
    (OPENBLAS_CORETYPE set to an older type does that: its GEMMs then run up
    to 2x slower, bench/RESULTS.md), else None."""
    slow = sorted({b["kernels"] for b in blas if b["kernels"] in _AVX2_KERNELS})
    if not slow or "avx512f" not in _cpu_flags():
        return None
    return (f"OpenBLAS runs {'/'.join(slow)} (AVX2) kernels on this CPU, which has AVX-512; "
            "OPENBLAS_CORETYPE may be forcing them: its GEMMs run up to 2x slower")


def _cpu_flags():
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f
                         if line.startswith("flags")), [])
    return []
