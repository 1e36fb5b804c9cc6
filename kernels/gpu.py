"""The CUDA side of the launch seam: CuPy's RawModule over the inlined source.

`load(path, defines, dtype, device_index, include_dirs)` compiles
`kernels.source(path)` (local headers inlined, so CuPy's cache, which hashes
the text, sees header edits) with NVRTC and the -D defines, once per key.
Kernels are called as on the emulator, `kernel(grid, block, args,
shared_mem=0)`, after the same sm_90 launch-limit checks (LaunchError).
"""
import functools

from . import CheckedKernel, kernel_parameters, source


@functools.lru_cache(maxsize=None)
def load(path, defines, dtype, device_index=0, include_dirs=()):
    """The GpuModule of one build on GPU `device_index` (compiled once per key)."""
    from gpubackprop.device import import_cupy

    cp = import_cupy()
    text = source(path)
    options = tuple(f"-D{k}={v}" for k, v in defines) + tuple(f"-I{d}" for d in include_dirs)
    with cp.cuda.Device(device_index):
        module = cp.RawModule(code=text, options=options)
        module.compile()          # compile errors surface here, not at the first launch
    return GpuModule(module, kernel_parameters(text), device_index)


class GpuModule:
    """A compiled .cu on one GPU; `get(name)` gives a GpuKernel."""

    def __init__(self, module, params, device_index):
        self._module = module
        self._params = params
        self._device_index = device_index
        self._kernels = {}

    def get(self, name):
        if name not in self._params:
            raise KeyError(f"no kernel {name!r}; this source has {sorted(self._params)}")
        if name not in self._kernels:
            self._kernels[name] = GpuKernel(self._module.get_function(name), name)
        return self._kernels[name]

    get_function = get


class GpuKernel(CheckedKernel):
    """A CuPy RawKernel behind the seam's call and launch checks."""

    def __init__(self, function, name):
        super().__init__(name)
        self._fn = function

    def _opt_in(self, nbytes):
        self._fn.max_dynamic_shared_size_bytes = nbytes

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        grid, block = self._check_launch(grid, block, shared_mem)
        self._fn(grid, block, tuple(args), shared_mem=shared_mem, stream=stream)
