"""The hand-written kernels of gpubackprop (shipped as ``gpubackprop.kernels``).

CUDA C sources (``*.cu``, ``*.cuh``), the CPU runtime that runs them on the
cuda-emulator device (``cpu/``) and the ``numba.cuda`` twins.  See README.md
in this folder for why each kernel exists, its memory layout and launch shape.

The launch seam (SPEC section 6), the one way a backend starts a kernel:

    module = kernels.load(file, defines, dtype, device)
    module.get(name)(grid, block, args, shared_mem)

On a CUDA device `module` is CuPy's RawModule over `source(file)` (local
headers inlined); on the "cuda-emulator" device the same file is compiled by
g++/clang++ against cpu/cuda_on_cpu.h and called through ctypes with the
same arguments (NumPy arrays where the GPU gets device arrays), each checked
against the kernel's parameter types.  Both check the launch shape against
the limits of an sm_90 GPU (LaunchError) before anything runs.

Every compile-time constant lives in one table here (tile sizes, the fused
kernels' sizes) or in gpubackprop/activations.py (activation codes), and
reaches the .cu files only as -D defines: the sources hold no defaults.
"""
import pathlib
import re

KERNEL_DIR = pathlib.Path(__file__).parent
CPU_RUNTIME_DIR = KERNEL_DIR / "cpu"

#: .cu file -> the extern "C" kernels it defines
KERNELS = {
    "dense_forward.cu": ("dense_forward",),
    "delta_propagate.cu": ("delta_propagate",),
    "weight_update.cu": ("weight_update", "bias_update", "update_reduce"),
    "dense_forward_tf32.cu": ("dense_forward_tf32",),
    "fused_mlp.cu": ("fused_forward", "fused_backward", "fused_reduce_sgd"),
}

#: .cu file -> dtypes it is built for (REAL = float / double)
DTYPES = {
    "dense_forward.cu": ("float32", "float64"),
    "delta_propagate.cu": ("float32", "float64"),
    "weight_update.cu": ("float32", "float64"),
    "dense_forward_tf32.cu": ("float32",),
    "fused_mlp.cu": ("float32", "float64"),
}

#: the smallest compute capability a file needs
MIN_ARCH = {"dense_forward_tf32.cu": 80}

#: tile sizes of the tiled GEMM kernels (see gemm_common.cuh)
GEMM_TILES = {
    "float32": {"TILE_M": 64, "TILE_N": 64, "TILE_K": 16, "THREAD_M": 4, "THREAD_N": 4,
                "SMEM_PAD": 2},
    "float64": {"TILE_M": 64, "TILE_N": 64, "TILE_K": 16, "THREAD_M": 4, "THREAD_N": 4,
                "SMEM_PAD": 2},
}
#: rows of threads of bias_update (block is 32 x BIAS_ROWS)
BIAS_ROWS = 8
#: weight_update.cu's modes: write the gradient, or apply the SGD step with it
UPDATE_MODES = {"GB_GRADIENT": 0, "GB_SGD": 1}
#: the reduce kernels' launch (update_reduce, fused_reduce_sgd): threads per
#: block, and at most REDUCE_MAX_BLOCKS blocks (a grid-stride loop does the rest)
REDUCE_THREADS, REDUCE_MAX_BLOCKS = 256, 4096
#: tile sizes of the TF32 tensor-core kernel (block is always 128 threads)
TF32_TILES = {"TC_TILE_M": 64, "TC_TILE_N": 64, "TC_TILE_K": 16}
TF32_THREADS = 128
#: the fused whole-MLP kernels (fused_mlp.cuh; the launcher: backends/fused_backend.py)
FUSED = {"FUSED_TILE_B": 64, "FUSED_MAX_W": 128, "FUSED_PAD": 16, "FUSED_KC": 32,
         "FUSED_MAX_LAYERS": 8, "FUSED_MIN_BLOCKS": 1}
FUSED_THREADS = 256
#: fused_reduce_sgd's modes: write the gradient, or apply the SGD step with it
FUSED_MODES = {"FUSED_MODE_GRAD": 0, "FUSED_MODE_SGD": 1}

#: the batch split of weight_update / bias_update (issue 11): enough blocks to
#: fill an H200 (132 SMs) about twice, chunks of at least UPDATE_MIN_ROWS rows
UPDATE_TARGET_BLOCKS = 2 * 132
UPDATE_MIN_ROWS = 128
UPDATE_MAX_PARTIAL = 1 << 26          # elements of the partial-sum buffer, at most

_CTYPE = {"float32": "float", "float64": "double"}
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.M)
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?'
                     r'(\w+)\s*\(([^)]*)\)')


def _path(name):
    """kernels/`name` (".cu" added when there is no suffix), or `name` itself
    when it is a path to a file elsewhere (a test's modified copy)."""
    path = pathlib.Path(name)
    if not path.is_absolute():
        path = KERNEL_DIR / path
    return path if path.suffix else path.with_suffix(".cu")


def source(name, inline_includes=True):
    """The text of kernel source `name` ("dense_forward", "dense_forward.cu" or
    a path).  With `inline_includes` (the default) every ``#include
    "local.cuh"`` is replaced by that header's text (each header once; looked
    up next to the file, then in kernels/), so the result compiles without an
    include path and a hash of it covers the headers too."""
    path = _path(name)
    text = path.read_text()
    if not inline_includes:
        return text
    seen = set()

    def expand(match):
        header = match.group(1)
        if header in seen:
            return f"// {header} already included above"
        seen.add(header)
        found = path.parent / header
        inner = (found if found.is_file() else KERNEL_DIR / header).read_text()
        return f"// ---- begin {header}\n{_INCLUDE.sub(expand, inner)}\n// ---- end {header}"

    return _INCLUDE.sub(expand, text)


def kernel_parameters(text):
    """{kernel: (parameter names...)} of the extern "C" kernels in source `text`."""
    out = {}
    for m in _KERNEL.finditer(text):
        names = []
        for p in m.group(2).split(","):
            words = re.findall(r"\w+", p)
            names.append(words[-1] if words else "?")
        out[m.group(1)] = tuple(names)
    return out


def activation_defines():
    """GB_ACT_<NAME>=code from gpubackprop/activations.py (CODES) for every
    activation activations.cuh implements, and the leaky slope: the one table
    activations.cuh is compiled with."""
    from gpubackprop import activations

    known = kernel_activations()
    d = {f"GB_ACT_{name.upper()}": code for name, code in activations.CODES.items()
         if name in known}
    d["GB_LEAKY_SLOPE"] = repr(float(activations.LEAKY_SLOPE))
    return d


def loss_defines():
    """FUSED_LOSS_SQUARED / FUSED_LOSS_XENT: the cost codes of losses.Loss.CODES
    (sse and mse share the squared one), the table fused_mlp.cu is compiled with."""
    from gpubackprop.losses import Loss

    return {"FUSED_LOSS_SQUARED": Loss.CODES["sse"], "FUSED_LOSS_XENT": Loss.CODES["cross_entropy"]}


def kernel_activations():
    """The activations activations.cuh implements (lower-case names): those whose
    GB_ACT_<NAME> code it requires.  A name registered in activations.py
    later has no CUDA C form; the backends take the xp formulas for it or refuse it."""
    text = (KERNEL_DIR / "activations.cuh").read_text()
    return frozenset(n.lower() for n in re.findall(r"defined\(GB_ACT_(\w+)\)", text))


def defines(name, dtype, atomic=False):
    """The -D defines (a dict) the launchers compile `name` with for `dtype`;
    `atomic` selects the FUSED_ATOMIC build of fused_mlp.cu."""
    name = _path(name).name
    dtype = str(dtype)
    if name not in DTYPES:
        raise ValueError(f"no kernel source {name!r}; the sources are {sorted(DTYPES)}")
    if dtype not in DTYPES[name]:
        raise ValueError(f"{name} is not built for {dtype}; it is built for {DTYPES[name]}")
    d = {"REAL": _CTYPE[dtype], **activation_defines()}
    if name == "dense_forward_tf32.cu":
        d.update(TF32_TILES)
    elif name == "fused_mlp.cu":
        d.update(FUSED, **FUSED_MODES, **loss_defines())
        if atomic:
            d["FUSED_ATOMIC"] = 1
    else:
        d.update(GEMM_TILES[dtype])
    if name == "weight_update.cu":
        d.update(BIAS_ROWS=BIAS_ROWS, **UPDATE_MODES)
    return d


_launcher_defines = defines     # for load(), whose argument is named `defines`


def options(name, dtype, atomic=False):
    """`defines` as compiler options: ("-DREAL=float", "-DTILE_M=64", ...)."""
    return tuple(f"-D{k}={v}" for k, v in sorted(defines(name, dtype, atomic).items()))


def gemm_threads(dtype):
    """Threads per block of the tiled GEMM kernels for `dtype`."""
    t = GEMM_TILES[str(dtype)]
    return (t["TILE_M"] // t["THREAD_M"]) * (t["TILE_N"] // t["THREAD_N"])


def update_chunks(B, N, K, dtype):
    """(chunks, rows per chunk) of the weight-gradient launch of a layer with
    n_out = N, n_in = K at batch B: the batch is split until the layer has
    about UPDATE_TARGET_BLOCKS blocks, each chunk keeping >= UPDATE_MIN_ROWS
    rows and the partials <= UPDATE_MAX_PARTIAL elements; (1, B) for a layer
    wide enough to fill the GPU by its output tiles alone."""
    t = GEMM_TILES[str(dtype)]
    tiles = -(-N // t["TILE_M"]) * -(-K // t["TILE_N"])
    chunks = min(-(-UPDATE_TARGET_BLOCKS // tiles), max(1, B // UPDATE_MIN_ROWS),
                 max(1, UPDATE_MAX_PARTIAL // (N * K + N)), MAX_GRID_DIM[2])
    if chunks <= 1:
        return 1, max(B, 1)
    rows = -(-B // chunks)
    return -(-B // rows), rows


def builds():
    """Every (file, dtype, defines) a launcher compiles: the compile tests' list."""
    out = [(name, dtype, defines(name, dtype)) for name in KERNELS for dtype in DTYPES[name]]
    out += [("fused_mlp.cu", dtype, defines("fused_mlp.cu", dtype, atomic=True))
            for dtype in DTYPES["fused_mlp.cu"]]
    return out


# ---- launch limits of an sm_90 GPU (H100/H200), checked on both devices ----------------
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_GRID_DIM = (2**31 - 1, 65535, 65535)
DEFAULT_SHARED_BYTES = 48 * 1024        # dynamic + static, without the opt-in attribute
MAX_SHARED_OPTIN_BYTES = 227 * 1024     # cudaDevAttrMaxSharedMemoryPerBlockOptin


class LaunchError(RuntimeError):
    """A launch an sm_90 GPU refuses (CUDA_ERROR_INVALID_VALUE), raised on the
    GPU and on the cuda-emulator alike, before the kernel runs."""


def dims3(what, kernel, value):
    """A (x, y, z) tuple of ints from an int or a tuple of 1 to 3 ints."""
    t = (value,) if isinstance(value, int) else tuple(value)
    if not 1 <= len(t) <= 3 or not all(isinstance(v, int) or hasattr(v, "__index__") for v in t):
        raise TypeError(f"kernel {kernel}: {what} must be an int or a tuple of 1 to 3 ints; "
                        f"got {value!r}")
    return tuple(int(v) for v in t) + (1,) * (3 - len(t))


def check_launch(kernel, grid, block, shared_mem, shared_optin):
    """(grid, block) as 3-tuples, after the checks an sm_90 GPU makes; raises
    LaunchError naming the kernel for a launch the GPU would refuse."""
    grid, block = dims3("grid", kernel, grid), dims3("block", kernel, block)
    code = "(CUDA_ERROR_INVALID_VALUE on an sm_90 GPU)"
    for what, dims, limits in (("grid", grid, MAX_GRID_DIM), ("block", block, MAX_BLOCK_DIM)):
        for axis, n, lim in zip("xyz", dims, limits):
            if not 1 <= n <= lim:
                raise LaunchError(f"kernel {kernel}: {what}.{axis} = {n}, must be in "
                                  f"[1, {lim}] {code}")
    threads = block[0] * block[1] * block[2]
    if threads > MAX_THREADS_PER_BLOCK:
        raise LaunchError(f"kernel {kernel}: block {block} has {threads} threads; at most "
                          f"{MAX_THREADS_PER_BLOCK} {code}")
    limit = max(DEFAULT_SHARED_BYTES, shared_optin)
    if not 0 <= shared_mem <= limit:
        hint = ("" if shared_mem > MAX_SHARED_OPTIN_BYTES else
                " without raising the kernel's max_dynamic_shared_size_bytes")
        raise LaunchError(f"kernel {kernel}: {shared_mem} bytes of dynamic shared memory; "
                          f"the limit is {limit}{hint} {code}")
    return grid, block


def check_optin(kernel, nbytes):
    """The opt-in dynamic shared memory `nbytes`, refused above the sm_90 maximum."""
    nbytes = int(nbytes)
    if not 0 <= nbytes <= MAX_SHARED_OPTIN_BYTES:
        raise LaunchError(f"kernel {kernel}: max_dynamic_shared_size_bytes = {nbytes}; an "
                          f"sm_90 GPU allows at most {MAX_SHARED_OPTIN_BYTES} "
                          f"(CUDA_ERROR_INVALID_VALUE)")
    return nbytes


class CheckedKernel:
    """What a kernel has on both sides of the seam: its opt-in dynamic shared
    memory attribute (`max_dynamic_shared_size_bytes`, as on a CuPy
    RawKernel) and the sm_90 launch checks made before every launch."""

    def __init__(self, name):
        self.name = name
        self._optin = 0

    @property
    def max_dynamic_shared_size_bytes(self):
        return self._optin

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, nbytes):
        self._optin = check_optin(self.name, nbytes)
        self._opt_in(self._optin)

    def _opt_in(self, nbytes):
        """Pass an accepted opt-in on to the kernel itself (the GPU side does)."""

    def _check_launch(self, grid, block, shared_mem):
        """(grid, block) as 3-tuples, or LaunchError for what the GPU refuses."""
        return check_launch(self.name, grid, block, shared_mem, self._optin)


# ---- the seam -------------------------------------------------------------------
def load(file, defines=None, dtype="float32", device=None, cache_dir=None, compiler=None,
         include_dirs=()):
    """The module of kernel source `file` built with -D `defines` (default:
    `defines(file, dtype)`) for `device` (a gpubackprop Device of kind "cuda"
    or "cuda-emulator"); built once per key and cached.  `cache_dir` and
    `compiler` apply to the emulator (default: ~/.cache/gpubackprop/emulator,
    the first of g++ / clang++); `include_dirs` are extra -I folders for NVRTC."""
    from gpubackprop.device import device as as_device

    device = as_device(device if device is not None else "cuda-emulator")
    dtype = str(dtype)
    if defines is None:
        defines = _launcher_defines(file, dtype)
    key = (str(_path(file)), tuple(sorted((k, str(v)) for k, v in defines.items())), dtype)
    if device.kind == "cuda-emulator":
        from . import emulator

        return emulator.load(*key, cache_dir=cache_dir, compiler=compiler)
    if device.kind == "cuda":
        from . import gpu

        return gpu.load(*key, device.index or 0, tuple(include_dirs))
    raise ValueError(f"kernels run on 'cuda' or 'cuda-emulator' devices, not on {device}")

