"""Files: safetensors, the format PyTorch, JAX and Hugging Face users load.

A file holds named tensors (W0, b0, W1, b1, ... for a network) and a map of
string metadata (safetensors' ``__metadata__``): the format name, its
version and, as JSON strings, whatever else the format needs.  Such a file
loads anywhere safetensors does::

    safetensors.torch.load_file("net.safetensors")   # {"W0": tensor, "b0": ...}
    safetensors.numpy.load_file("net.safetensors")   # the same as NumPy arrays

Writes are atomic (temporary file in the same folder, fsync, os.replace) and
honour the umask.  Reads never unpickle and trust nothing: the header's
length is bounded before it is read, safetensors checks that the tensors'
offsets tile the data exactly (so no tensor can claim more bytes than the
file holds), and the metadata and arrays are checked here before use.
"""
import json
import numbers
import os

import numpy as np

from . import paths

NETWORK_FORMAT = "gpubackprop.mlp"
#: the one version of the network file format (2: safetensors; 1 was .npz)
NETWORK_VERSION = 2
#: the largest JSON header read (safetensors' own limit is 100 MB)
MAX_HEADER_BYTES = 16 << 20
#: the tensor dtypes gpubackprop writes, as safetensors names them
DTYPES = {"F32": np.float32, "F64": np.float64}
_ZIP_MAGIC = b"PK\x03\x04"


# -- writing ------------------------------------------------------------------------
def encode_meta(meta):
    """{key: value} -> {key: str}: strings as they are, anything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def save_file(path, arrays, meta, what="file"):
    """Write {name: float array} and the metadata `meta` ({key: str or
    JSON-able}) to `path` as safetensors, atomically.

    The bytes go to a temporary file next to `path` (same file system,
    created with the umask's permissions), which is flushed, fsynced and
    renamed over `path`; on any error the temporary file is removed and
    `path` is left as it was; an OSError (a full disk, a read-only file
    system) names the path and says so (`what` names the file's kind).
    """
    from safetensors.numpy import save

    path = paths.output_path(path, f"{what} path")
    tensors = {}
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.dtype not in (np.float32, np.float64) or name == "__metadata__":
            raise TypeError(f"cannot save array {name!r} ({value.dtype}): only float32 and "
                            "float64 arrays are written")
        tensors[name] = np.ascontiguousarray(value)
    write_atomically(path, save(tensors, metadata=encode_meta(meta)), what)


def write_atomically(path, data, what="file"):
    """Write the bytes `data` to `path` as save_file does: a temporary file
    next to it, fsynced, renamed over it; `path` is left as it was on error."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = paths.temp_path(path)           # .NAME.tmp-PID-RANDOM: see remove_stale_temps
    with paths.write_errors(path, what):
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)   # the umask applies
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    _fsync_dir(folder)


def remove_stale_temps(path):
    """Delete temporary files that an earlier writer of `path` left behind
    when it was killed mid-write (SIGKILL, power loss), never those of a
    live process; returns their names (see paths.remove_stale_temps)."""
    return paths.remove_stale_temps(path)


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- reading ------------------------------------------------------------------------
def load_file(path, expected_format, expected_version, json_keys=()):
    """({name: array}, meta) from a file written by save_file.

    ValueError naming `path` if the file is not safetensors (an old .npz
    says so), truncated, corrupted, of another format or version, or holds
    tensors of another dtype.  meta maps each key to its string, except the
    keys in `json_keys` (and "version"), which are decoded from JSON.
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or os.PathLike); "
                        f"got {type(path).__name__}")
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder; give the path of a file in it")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if head.startswith(_ZIP_MAGIC):
            raise ValueError(f"{path}: this is an .npz archive, the file format of earlier "
                             "gpubackprop versions; files are safetensors now (load it with "
                             "the version that wrote it and save it again with this one)")
        if len(head) < 8:
            raise ValueError(f"{path}: not a safetensors file (only {size} bytes)")
        n_header = int.from_bytes(head, "little")
        if n_header > MAX_HEADER_BYTES or n_header > size - 8:
            raise ValueError(f"{path}: not a readable safetensors file (the header claims "
                             f"{n_header} bytes; the file has {size}, the limit is "
                             f"{MAX_HEADER_BYTES})")
        data = head + f.read(size - 8)       # bounded by the file's size
    try:
        header = json.loads(data[8:8 + n_header])
        arrays = load(data)
    except (SafetensorError, ValueError, RecursionError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file "
                         f"({type(exc).__name__}: {exc})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: no gpubackprop metadata in the file")
    if meta.get("format") != expected_format:
        raise ValueError(f"{path}: expected a {expected_format!r} file; got format "
                         f"{meta.get('format')!r}")
    for name, value in arrays.items():
        if value.dtype not in DTYPES.values():
            raise ValueError(f"{path}: tensor {name!r} has dtype {value.dtype}; only "
                             "float32 and float64 tensors are allowed")
    meta = dict(meta)
    for key in {"version", *json_keys}:
        if key in meta:
            meta[key] = _json(path, key, meta[key])
    check_version(path, meta, expected_format, expected_version)
    return arrays, meta


def _json(path, key, text):
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: metadata {key!r} is not valid JSON ({exc})") from None


def check_version(path, meta, expected_format, expected_version):
    """The metadata's 'version' must be the integer this package reads."""
    version = meta.get("version")
    if not is_int(version):
        raise ValueError(f"{path}: invalid file: 'version' must be an integer; got {version!r}")
    if version != expected_version:
        raise ValueError(f"{path}: file version {version} of {expected_format!r} is not "
                         f"supported (this gpubackprop reads version {expected_version})")


def is_int(value):
    """A JSON integer (a Python int, not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


# -- networks -------------------------------------------------------------------------
def network_meta(net):
    """The network's metadata record: format, version, sizes, activations, dtype."""
    return {"format": NETWORK_FORMAT, "version": NETWORK_VERSION,
            "sizes": net.sizes, "activations": net.activations,
            "dtype": net.dtype}


def network_arrays(net):
    """{"W0": ..., "b0": ..., ...} as NumPy arrays."""
    out = {}
    for i, layer in enumerate(net.layers):
        out[f"W{i}"], out[f"b{i}"] = layer.W.numpy(), layer.b.numpy()
    return out


def save_network(net, path):
    """net.save(path): W0, b0, ... and the network's metadata, atomically."""
    from . import __version__

    save_file(path, network_arrays(net), {**network_meta(net), "gpubackprop": __version__},
              what="network")


def read_network(path):
    """gb.load's reading half: (sizes, activations, dtype, arrays) of the
    network file at `path`, everything checked first (network.load builds it)."""
    arrays, meta = load_file(path, NETWORK_FORMAT, NETWORK_VERSION,
                             json_keys=("sizes", "activations"))
    check_network(path, meta, arrays)
    return meta["sizes"], meta["activations"], meta["dtype"], arrays


def check_network(path, meta, arrays, prefix=""):
    """Check a network's metadata strictly and the arrays W0, b0, ... against it.

    meta: {"sizes": [n_0, ..., n_L] positive ints, "activations": L known
    names (softmax only last), "dtype": "float32" | "float64"}; arrays must
    hold W{i} (n_{i+1}, n_i) and b{i} (n_{i+1},) of that dtype, finite.
    With no prefix (a network file) any other array is refused; with one
    (a network inside a checkpoint) the caller checks the rest.  ValueError.
    """
    from .activations import NAMES

    def bad(problem):
        return ValueError(f"{path}: invalid {prefix or 'network'} metadata: {problem}")

    if not isinstance(meta, dict):
        raise bad(f"expected a JSON object; got {type(meta).__name__}")
    sizes, acts, dtype = meta.get("sizes"), meta.get("activations"), meta.get("dtype")
    if not isinstance(sizes, list) or len(sizes) < 2 \
            or not all(is_int(n) and n >= 1 for n in sizes):
        raise bad(f"'sizes' must be a list of at least two positive integers; got {sizes!r}")
    n_layers = len(sizes) - 1
    if not isinstance(acts, list) or len(acts) != n_layers \
            or not all(isinstance(a, str) and a in NAMES for a in acts):
        raise bad(f"'activations' must be a list of {n_layers} names from {list(NAMES)}; "
                  f"got {acts!r}")
    if "softmax" in acts[:-1]:
        raise bad("softmax is an output activation only")
    if dtype not in ("float32", "float64"):
        raise bad(f"'dtype' must be 'float32' or 'float64'; got {dtype!r}")
    for i in range(n_layers):
        for name, shape in ((f"W{i}", (sizes[i + 1], sizes[i])), (f"b{i}", (sizes[i + 1],))):
            if name not in arrays:
                raise ValueError(f"{path}: array {name!r} is missing")
            value = arrays[name]
            if value.shape != shape:
                raise ValueError(f"{path}: array {name!r} has shape {value.shape}; the "
                                 f"sizes {sizes} say {shape}")
            if value.dtype != np.dtype(dtype):
                raise ValueError(f"{path}: array {name!r} has dtype {value.dtype}; the "
                                 f"metadata says {dtype}")
            if not np.isfinite(value).all():
                raise ValueError(f"{path}: array {name!r} contains NaN or infinite values")
    if not prefix:
        extra = sorted(set(arrays) - {f"{c}{i}" for i in range(n_layers) for c in "Wb"})
        if extra:
            raise ValueError(f"{path}: unexpected arrays {extra} in a network file")
