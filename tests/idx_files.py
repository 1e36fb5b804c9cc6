"""IDX test files: encode arrays as IDX bytes (headers may lie), fake MNIST
folders, and the peak traced memory of a call (for tests/test_idx.py and
tests/test_data.py), and a memory limit for fuzzing loaders."""
import contextlib
import gzip
import struct
import tracemalloc

import numpy as np
import pytest

IDX_CODES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def idx_bytes(array, code=None, shape=None):
    """The IDX encoding of `array` (the header may lie when shape/code are given)."""
    array = np.asarray(array)
    if code is None:
        code = next(c for c, d in IDX_CODES.items() if np.dtype(d).str[1:] == array.dtype.str[1:])
    shape = array.shape if shape is None else shape
    header = bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    return header + array.astype(IDX_CODES.get(code, "u1")).tobytes()


def write(path, payload, compress=False):
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


def sample_array(code, shape, seed=0):
    rng = np.random.default_rng(seed)
    dtype = np.dtype(IDX_CODES[code])
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)



def fake_mnist(directory, n_train=12, n_test=5, compress=False, dotted=False, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        if dotted:
            name = name.replace("-idx", ".idx")
        write(directory / (name + (".gz" if compress else "")), idx_bytes(array), compress)
    return arrays



def peak_memory(call):
    """(result or exception, peak traced bytes) of call()."""
    tracemalloc.start()
    try:
        try:
            out = call()
        except Exception as exc:          # the caller checks which
            out = exc
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@contextlib.contextmanager
def limited_memory(extra_bytes):
    """Run the block with the process's data segment (heap and anonymous
    mmaps, Rust's and C's allocations included, which tracemalloc does not
    see) limited to what it uses now plus `extra_bytes`: a loader that
    believes a header and allocates its claim fails with MemoryError.
    Linux only (skips elsewhere); the limit is lifted afterwards."""
    import resource

    try:
        with open("/proc/self/status") as f:
            used_kib = int(f.read().split("VmData:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        pytest.skip("no /proc/self/status: the memory limit needs Linux")
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = used_kib * 1024 + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
