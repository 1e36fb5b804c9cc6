"""Fuzz of the safetensors network loader (gb.load), next to the IDX fuzz of
tests/test_idx.py: valid files cut short, with bytes flipped or appended,
and crafted headers (shapes, dtypes, offsets, metadata) answer a network or
a ValueError naming the file, never another exception, and never allocate
what a header claims: the whole run is under a data-segment limit of 256 MiB
above what the process already uses (tests/idx_files.limited_memory)."""
import json
import os
import struct
import tempfile

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gpubackprop as gb
from idx_files import limited_memory

_DIR = tempfile.mkdtemp(prefix="gpubackprop-load-fuzz-")
_PATH = os.path.join(_DIR, "net.safetensors")
_NET = gb.MLP.from_sizes([3, 4, 2], activation="tanh", output_activation="softmax",
                         backend="numpy", seed=1)
_NET.save(_PATH)
with open(_PATH, "rb") as _f:
    VALID = _f.read()
_N_HEADER = int.from_bytes(VALID[:8], "little")
HEADER = json.loads(VALID[8:8 + _N_HEADER])
DATA = VALID[8 + _N_HEADER:]


def _load_only_value_error(payload):
    path = os.path.join(_DIR, "fuzz.safetensors")
    with open(path, "wb") as f:
        f.write(payload)
    with limited_memory(256 << 20):
        try:
            net = gb.load(path, backend="numpy")
        except ValueError as exc:
            assert path in str(exc), exc
            return
    assert isinstance(net, gb.MLP)
    for W, b in net.params:                        # what load returns is finite
        assert np.isfinite(W).all() and np.isfinite(b).all()


def _mutated(cut, flip_at, flip, extra):
    payload = bytearray(VALID)
    if flip:
        payload[flip_at % len(payload)] ^= flip
    payload += extra
    return bytes(payload[:cut]) if cut is not None else bytes(payload)


def _crafted(tensor_edits, meta_edits, data_len, n_header_delta):
    """The valid header with tensors' dtype/shape/offsets and metadata replaced."""
    header = json.loads(json.dumps(HEADER))
    names = sorted(k for k in header if k != "__metadata__")
    for i, (field, value) in tensor_edits:
        header[names[i % len(names)]][field] = value
    header["__metadata__"].update(meta_edits)
    text = json.dumps(header).encode()
    n = max(0, len(text) + n_header_delta)
    return struct.pack("<Q", n) + text + DATA[:data_len]


_sizes = st.integers(0, 2 ** 64 - 1) | st.integers(0, 64) | st.just(2 ** 40)
tensor_edit = st.tuples(st.integers(0, 5), st.one_of(
    st.tuples(st.just("dtype"), st.sampled_from(["F32", "F64", "F16", "I64", "BOOL", "X"])),
    st.tuples(st.just("shape"), st.lists(_sizes, max_size=4)),
    st.tuples(st.just("data_offsets"), st.lists(_sizes, min_size=0, max_size=3)),
))
meta_value = st.one_of(st.text(max_size=20), st.sampled_from(
    ['[3, 4, 2]', '[3, 99999999999, 2]', '[3, -1, 2]', '["tanh", "softmax"]', '2', '"2"',
     '[[[[[[[[[[[[[[]]]]]]]]]]]]]]', '1e999', 'float32', 'float16', 'gpubackprop.mlp']))
meta_edit = st.dictionaries(st.sampled_from(["format", "version", "sizes", "activations",
                                             "dtype", "extra"]), meta_value, max_size=3)
crafted = st.builds(_crafted, st.lists(tensor_edit, max_size=3), meta_edit,
                    st.integers(0, len(DATA) + 8), st.integers(-4, 4))
mutated = st.builds(_mutated, st.none() | st.integers(0, len(VALID) + 8),
                    st.integers(0, 10 ** 6), st.integers(0, 255), st.binary(max_size=16))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200) | mutated | crafted)
def test_gb_load_answers_a_network_or_a_value_error_within_bounded_memory(payload):
    _load_only_value_error(payload)


def test_the_limit_is_real():
    """The limit does stop an allocation of a header's claim (so the fuzz proves something)."""
    import pytest

    with limited_memory(256 << 20):
        with pytest.raises(MemoryError):
            np.ones(2 ** 30 // 8 * 2)             # 2 GiB
    np.ones(2 ** 28 // 8)                          # lifted again: 256 MiB is fine
