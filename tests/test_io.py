"""Network files are plain safetensors: they load in PyTorch and NumPy by the
documented names, are written atomically with the umask's permissions, and
a crafted file (the way an attacker would make one) is refused with a clear
ValueError naming it, after reading no more than the file's own bytes."""
import json
import os
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import io as gio
from gpubackprop.activations import HIDDEN_NAMES


def _net(dtype="float64", sizes=(4, 6, 3), output="softmax", hidden="tanh"):
    return gb.MLP.from_sizes(list(sizes), activation=hidden, output_activation=output,
                             dtype=dtype, backend="numpy", seed=3)


def _same(net, back):
    assert back.sizes == net.sizes and back.dtype == net.dtype
    assert [l.activation for l in back.layers] == [l.activation for l in net.layers]
    for (W, b), (W2, b2) in zip(net.params, back.params):
        assert W2.dtype == W.dtype and np.array_equal(W, W2) and np.array_equal(b, b2)


# -- what save writes, load reads, and others read too ------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("hidden", HIDDEN_NAMES)
def test_every_network_saved_loads_back_exactly(tmp_path, dtype, hidden):
    for output in ("sigmoid", "identity", "softmax"):
        net = _net(dtype, hidden=hidden, output=output)
        net.save(tmp_path / "n.safetensors")
        _same(net, gb.load(tmp_path / "n.safetensors"))


def test_file_loads_with_safetensors_numpy_by_the_documented_names(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    net = _net("float32", sizes=(5, 7, 4, 2))
    net.save(tmp_path / "n.safetensors")
    arrays = load_file(str(tmp_path / "n.safetensors"))
    assert sorted(arrays) == ["W0", "W1", "W2", "b0", "b1", "b2"]
    for i, (W, b) in enumerate(net.params):
        assert arrays[f"W{i}"].dtype == np.float32 and np.array_equal(arrays[f"W{i}"], W)
        assert np.array_equal(arrays[f"b{i}"], b)
    with safe_open(str(tmp_path / "n.safetensors"), framework="numpy") as f:
        meta = f.metadata()
    assert meta["format"] == "gpubackprop.mlp" and meta["version"] == str(gio.NETWORK_VERSION)
    assert json.loads(meta["sizes"]) == [5, 7, 4, 2] and meta["dtype"] == "float32"
    assert json.loads(meta["activations"]) == ["tanh", "tanh", "softmax"]


def test_file_loads_in_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    net = _net()
    net.save(tmp_path / "n.safetensors")
    tensors = load_file(str(tmp_path / "n.safetensors"))
    assert tensors["W0"].dtype == torch.float64
    for i, (W, b) in enumerate(net.params):
        assert np.array_equal(tensors[f"W{i}"].numpy(), W)
        assert np.array_equal(tensors[f"b{i}"].numpy(), b)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        _net().save(tmp_path / "n.safetensors")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "n.safetensors").st_mode & 0o777 == mode


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "n.safetensors"
    net = _net()
    net.save(path)
    old = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gio.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        _net(sizes=(4, 9, 3)).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["n.safetensors"]


def test_only_float_arrays_are_written(tmp_path):
    with pytest.raises(TypeError, match="only float32 and float64"):
        gio.save_file(tmp_path / "x.safetensors", {"a": np.arange(3)}, {"format": "x"})
    assert os.listdir(tmp_path) == []


# -- crafted files ----------------------------------------------------------------------
def _raw(header, data=b"", n_header=None):
    """Bytes of a safetensors file from a header dict and the data section."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if n_header is None else n_header) + text + data


def _meta():
    return gio.encode_meta(gio.network_meta(_net()))


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def _tensor(shape, start, end, dtype="F64"):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": [start, end]}


CRAFTED = [
    ("huge_header_length", lambda: _raw({}, n_header=2 ** 62), "header claims"),
    ("header_longer_than_file", lambda: _raw({"__metadata__": _meta()}, n_header=10 ** 6),
     "header claims"),
    ("huge_tensor", lambda: _raw({"__metadata__": _meta(), "W0": _tensor(
        (10 ** 6, 10 ** 6), 0, 8 * 10 ** 12)}, bytes(64)), "not a readable safetensors"),
    ("overlapping", lambda: _raw({"__metadata__": _meta(), "W0": _tensor((4,), 0, 32),
                                  "b0": _tensor((4,), 0, 32)}, bytes(32)),
     "not a readable safetensors"),
    ("out_of_range", lambda: _raw({"__metadata__": _meta(), "W0": _tensor((4,), 32, 64)},
                                  bytes(32)), "not a readable safetensors"),
    ("shape_vs_offsets", lambda: _raw({"__metadata__": _meta(), "W0": _tensor((8,), 0, 32)},
                                      bytes(32)), "not a readable safetensors"),
    ("header_not_json", lambda: struct.pack("<Q", 5) + b"{{{{{", "not a readable safetensors"),
    ("no_metadata", lambda: _raw({"W0": _tensor((4,), 0, 32)}, bytes(32)),
     "no gpubackprop metadata"),
    ("integer_tensor", lambda: _raw({"__metadata__": _meta(),
                                     "W0": _tensor((4,), 0, 32, "I64")}, bytes(32)),
     "dtype int64"),
    ("version_not_json", lambda: _raw({"__metadata__": {**_meta(), "version": "two"}}),
     "'version' is not valid JSON"),
    ("sizes_not_json", lambda: _raw({"__metadata__": {**_meta(), "sizes": "[4, 6"}}),
     "'sizes' is not valid JSON"),
    ("tiny", lambda: b"\x01\x02", "not a safetensors file"),
    ("text", lambda: b"this is not a network, just some words", "header claims"),
]


@pytest.mark.parametrize("make, fragment", [c[1:] for c in CRAFTED], ids=[c[0] for c in CRAFTED])
def test_crafted_file_is_refused_clearly(tmp_path, make, fragment):
    path = _write(tmp_path, "evil.safetensors", make())
    with pytest.raises(ValueError, match=fragment) as info:
        gb.load(path)
    assert str(path) in str(info.value)


def test_header_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.safetensors"
    with open(path, "wb") as f:                  # sparse: no disk, and never read
        f.write(struct.pack("<Q", gio.MAX_HEADER_BYTES + 1))
        f.truncate(gio.MAX_HEADER_BYTES + 64)
    with pytest.raises(ValueError, match=f"the limit is {gio.MAX_HEADER_BYTES}"):
        gb.load(path)


@pytest.mark.parametrize("cut", [0.05, 0.3, 0.6, 0.95, 0.999])
def test_truncated_file_is_refused(tmp_path, cut):
    _net().save(tmp_path / "n.safetensors")
    data = (tmp_path / "n.safetensors").read_bytes()
    path = _write(tmp_path, "cut.safetensors", data[:int(len(data) * cut)])
    with pytest.raises(ValueError, match="cut.safetensors"):
        gb.load(path)


def test_old_npz_files_are_refused_with_the_format_change(tmp_path):
    path = tmp_path / "old.npz"
    with zipfile.ZipFile(path, "w") as z:        # what earlier versions wrote: a zip
        z.writestr("W0.npy", b"")
    with pytest.raises(ValueError, match=r"old.npz: this is an .npz archive.*safetensors now"):
        gb.load(path)


def test_tampered_metadata_is_refused(tmp_path):
    net = _net()
    meta = gio.network_meta(net)
    meta["sizes"] = [4, 6, 2]
    gio.save_file(tmp_path / "t.safetensors", gio.network_arrays(net), meta)
    with pytest.raises(ValueError, match="has shape"):
        gb.load(tmp_path / "t.safetensors")
    meta = {**gio.network_meta(net), "version": gio.NETWORK_VERSION + 1}
    gio.save_file(tmp_path / "v.safetensors", gio.network_arrays(net), meta)
    with pytest.raises(ValueError, match="is not supported"):
        gb.load(tmp_path / "v.safetensors")


def test_crafted_files_cost_no_more_memory_than_their_size(tmp_path):
    """20 tensors each claiming the whole 16 MiB data section (overlapping,
    as the old .npz reader let a file make it allocate 20x its size), and one
    tensor claiming 8 TB: refused, with the process's peak memory within a
    few file sizes (measured in a fresh interpreter)."""
    data = bytes(16 << 20)
    overlapping = _raw({"__metadata__": _meta(), **{f"W{i}": _tensor((2 << 20,), 0, 16 << 20)
                                                     for i in range(20)}}, data)
    (tmp_path / "overlap.safetensors").write_bytes(overlapping)
    (tmp_path / "huge.safetensors").write_bytes(_raw({"__metadata__": _meta(), "W0": _tensor(
        (10 ** 6, 10 ** 6), 0, 8 * 10 ** 12)}, data))
    code = f"""
import resource, gpubackprop as gb
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for name in ("overlap", "huge"):
    try:
        gb.load({str(tmp_path)!r} + "/" + name + ".safetensors")
    except ValueError as exc:
        assert "not a readable safetensors file" in str(exc), exc
    else:
        raise SystemExit(name + " was loaded")
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    grown_mib = int(r.stdout.strip())
    assert grown_mib < 3 * 16 + 16, f"peak memory grew by {grown_mib} MiB"
