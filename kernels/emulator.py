"""The cuda-emulator side of the launch seam: a .cu file built for the CPU.

`load(path, defines, dtype)` compiles kernels/`path` with g++ or clang++
(C++17, -O2) against cpu/cuda_on_cpu.h (``-include``) and cpu/ (``-I``: its
mma.h and cooperative_groups.h stand in for CUDA's), with the same -D defines
as the GPU build, into a shared library cached in a user folder under a hash
of (the source with its headers, the runtime headers, defines, dtype, the
compiler and its version, the flags).  A kernel is then called through
ctypes with exactly the arguments of the GPU launch: NumPy arrays where the
GPU gets device arrays, np.int32 / np.float32 / np.float64 scalars, each
checked against the kernel's C++ parameter types (TypeError naming the kernel
and the parameter), after the sm_90 launch-limit checks of kernels.check_launch.
"""
import concurrent.futures
import ctypes
import functools
import hashlib
import os
import pathlib
import re
import subprocess
import tempfile
import threading

import numpy as np

from . import CPU_RUNTIME_DIR, KERNEL_DIR, CheckedKernel, _path, \
    kernel_parameters, source

FLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-U_FORTIFY_SOURCE",
         "-fvisibility=hidden")
DEFAULT_CACHE = pathlib.Path.home() / ".cache" / "gpubackprop" / "emulator"
_EXTERN_SHARED = re.compile(r"extern\s+__shared__\s+([^;\[]*?)\s*\b(\w+)\s*\[\s*\]\s*;")
_ALIGN = re.compile(r"__align__\s*\(\s*\d+\s*\)")
_ERR_LEN = 1024


def find_compiler(compiler=None):
    """(path, version line) of the C++17 compiler (gpubackprop.device.find_cxx17)."""
    from gpubackprop.device import find_cxx17

    return find_cxx17(compiler)


@functools.lru_cache(maxsize=1)
def default_cache():
    """DEFAULT_CACHE, or a per-user folder under the temporary directory when
    the home folder cannot be written (a read-only container)."""
    for folder in (DEFAULT_CACHE,
                   pathlib.Path(tempfile.gettempdir()) / f"gpubackprop-emulator-{os.getuid()}"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder
        except OSError:
            continue
    raise RuntimeError(f"the cuda-emulator has no writable cache folder (tried {DEFAULT_CACHE} "
                       f"and the temporary directory); pass cache_dir=")


def _first_lines(text, n):
    lines = [ln for ln in text.splitlines() if "error" in ln] or text.splitlines()
    return "\n".join(lines[:n])


def _wrapper(path, text):
    """The C++ file that includes the kernel source and exports its kernels."""
    names = kernel_parameters(text)
    # extern __shared__ arrays: defined here with room for the largest opt-in
    dyn = sorted({(name, _ALIGN.sub("", ctype).strip())
                  for ctype, name in _EXTERN_SHARED.findall(text)})
    if len(dyn) > 8:
        raise RuntimeError(f"{path}: {len(dyn)} extern __shared__ arrays; the cuda-emulator "
                           f"takes at most 8 (GBEMU_MAX_DYN)")
    lines = [f'#include "{path}"', "#define GBEMU_MAX_SMEM (227 * 1024)"]
    lines += [f"alignas(128) thread_local {c} {d}[GBEMU_MAX_SMEM / sizeof({c})];" for d, c in dyn]
    lines += ["static int gbemu_dynamic_shared(unsigned char** out)", "{"]
    lines += [f"    out[{i}] = (unsigned char*){d};" for i, (d, _) in enumerate(dyn)]
    lines += [f"    return {len(dyn)};", "}"]
    lines += [f"GBEMU_EXPORT({k})" for k in names]
    return "\n".join(lines) + "\n", names


def _runtime_text():
    return "".join(p.read_text() for p in sorted(CPU_RUNTIME_DIR.glob("*.h")))


def library_path(path, defines, dtype, cache_dir=None, compiler=None):
    """(shared library path, kernel parameter names, compile command) for one build."""
    path = _path(path)
    text = source(path)
    cxx, version = find_compiler(compiler)
    wrapper, names = _wrapper(path, text)
    flags = [*FLAGS, f"-I{CPU_RUNTIME_DIR}", f"-iquote{KERNEL_DIR}",
             "-include", str(CPU_RUNTIME_DIR / "cuda_on_cpu.h"),
             *(f"-D{k}={v}" for k, v in defines)]
    h = hashlib.sha256()
    for part in (text, _runtime_text(), wrapper, repr(defines), dtype, cxx, version, repr(flags)):
        h.update(part.encode())
        h.update(b"\0")
    folder = pathlib.Path(cache_dir) if cache_dir is not None else default_cache()
    lib = folder / f"{path.stem}-{dtype}-{h.hexdigest()[:20]}.so"
    return lib, names, (cxx, flags, wrapper)


def build(path, defines, dtype, cache_dir=None, compiler=None):
    """Compile one build unless its library is cached; returns (library, names)."""
    lib, names, (cxx, flags, wrapper) = library_path(path, defines, dtype, cache_dir, compiler)
    if lib.is_file():
        return lib, names
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        cpp = pathlib.Path(tmp) / f"{lib.stem}.cpp"
        cpp.write_text(wrapper)
        out = pathlib.Path(tmp) / lib.name
        cmd = [cxx, *flags, str(cpp), "-o", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(
                f"the cuda-emulator could not build {_path(path)} ({dtype}) with {cxx}:\n"
                f"{_first_lines(proc.stderr, 12)}\n(command: {' '.join(cmd)})")
        os.replace(out, lib)            # atomic: a concurrent build of the same key is harmless
    return lib, names


def build_many(jobs, cache_dir=None, compiler=None, workers=None):
    """Build several (path, defines, dtype) at once (the compiler runs in
    subprocesses, so threads suffice); returns their libraries in order."""
    workers = workers or max(2, os.cpu_count() or 2)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(build, _path(p), tuple(sorted((k, str(v)) for k, v in d.items())),
                               str(dt), cache_dir, compiler) for p, d, dt in jobs]
        return [f.result()[0] for f in futures]


_LOCK = threading.Lock()


@functools.lru_cache(maxsize=None)
def load(path, defines, dtype, cache_dir=None, compiler=None):
    """The EmulatedModule of one build (compiled on first use, then cached)."""
    with _LOCK:
        lib, names = build(path, defines, dtype, cache_dir, compiler)
    return EmulatedModule(lib, names, pathlib.Path(path).name)


class EmulatedModule:
    """A built .cu: `get(name)` gives a kernel callable as a CuPy RawKernel is,
    `kernel(grid, block, args, shared_mem=0)`."""

    def __init__(self, lib, names, file):
        self.path = lib
        self.file = file
        self._lib = ctypes.CDLL(str(lib))
        self._lib.gbemu_set_schedule.argtypes = [ctypes.c_int]
        self._names = names
        self._kernels = {}

    def get(self, name):
        """The kernel `name` (KeyError naming the file's kernels if there is none)."""
        if name not in self._names:
            raise KeyError(f"{self.file} has no kernel {name!r}; it has {sorted(self._names)}")
        if name not in self._kernels:
            self._kernels[name] = EmulatedKernel(self._lib, name, self._names[name])
        return self._kernels[name]

    get_function = get

    def set_schedule(self, order):
        """The order threads run within a barrier phase on the calling thread:
        "forward" (0, 1, ...) or "reverse"; for tests that look for races."""
        self._lib.gbemu_set_schedule({"forward": 0, "reverse": 1}[order])


# parameter type code (cuda_on_cpu.h gbemu::code) -> (scalar type, ctypes type)
_SCALARS = {"f": (np.float32, ctypes.c_float), "d": (np.float64, ctypes.c_double),
            "i": (np.int32, ctypes.c_int32), "I": (np.uint32, ctypes.c_uint32),
            "q": (np.int64, ctypes.c_int64), "Q": (np.uint64, ctypes.c_uint64)}
_POINTEES = {"f": np.float32, "d": np.float64, "i": np.int32, "I": np.uint32, "q": np.int64,
             "Q": np.uint64, "B": np.uint8, "b": np.int8, "h": np.int16}


class EmulatedKernel(CheckedKernel):
    """One kernel of an EmulatedModule; `max_dynamic_shared_size_bytes` is the
    opt-in attribute, as on a CuPy RawKernel."""

    def __init__(self, lib, name, params):
        super().__init__(name)
        self.params = params
        sig = getattr(lib, f"gbemu_signature_{name}")
        sig.restype = ctypes.c_char_p
        self.signature = tuple(sig().decode().split(","))
        self._launch = getattr(lib, f"gbemu_launch_{name}")
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                                 ctypes.c_ulonglong, ctypes.POINTER(ctypes.c_void_p),
                                 ctypes.c_char_p, ctypes.c_size_t]

    def _argument(self, i, code, value):
        pname = self.params[i] if i < len(self.params) else f"#{i}"
        where = f"kernel {self.name}: parameter {i} ({pname})"
        if code[0] in "PR":
            want = _POINTEES[code[1:]]
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{where} is a pointer to {np.dtype(want)}; got "
                                f"{type(value).__name__} (pass a NumPy array)")
            if value.dtype != want:
                raise TypeError(f"{where} is a pointer to {np.dtype(want)}; got an array "
                                f"of {value.dtype}")
            if not value.flags.c_contiguous:
                raise TypeError(f"{where} needs a C-contiguous array; got strides "
                                f"{value.strides} for shape {value.shape}")
            if code[0] == "P" and not value.flags.writeable:
                raise TypeError(f"{where} is written by the kernel; got a read-only array")
            return ctypes.c_void_p(value.ctypes.data)
        scalar, ctype = _SCALARS[code]
        if type(value) is not scalar:
            raise TypeError(f"{where} is {np.dtype(scalar)}; got {type(value).__name__} "
                            f"{value!r} (pass np.{np.dtype(scalar)}(...), as the GPU launch does)")
        return ctype(value)

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        grid, block = self._check_launch(grid, block, shared_mem)
        args = tuple(args)
        if len(args) != len(self.signature):
            raise TypeError(f"kernel {self.name} takes {len(self.signature)} arguments "
                            f"({', '.join(self.params)}); got {len(args)}")
        values = [self._argument(i, c, a) for i, (c, a) in enumerate(zip(self.signature, args))]
        pointers = (ctypes.c_void_p * max(1, len(values)))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
        err = ctypes.create_string_buffer(_ERR_LEN)
        rc = self._launch((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block),
                          shared_mem, pointers, err, _ERR_LEN)
        if rc != 0:
            raise RuntimeError(err.value.decode(errors="replace"))

    def __repr__(self):
        return f"<emulated kernel {self.name}({', '.join(self.params)})>"
