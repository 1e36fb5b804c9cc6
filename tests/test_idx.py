"""Tests for the IDX reader (gpubackprop.idx, gpubackprop.data.read_idx):
round trips, malformed and hostile headers, the byte budget, non-regular
files, and a fuzz whose every example must stay within a bounded memory."""
import gzip
import os
import struct
import tempfile
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpubackprop import data
from idx_files import IDX_CODES, idx_bytes, limited_memory, peak_memory, sample_array, write

@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("code", sorted(IDX_CODES), ids=lambda c: f"0x{c:02X}")
def test_idx_round_trip(tmp_path, code, compress):
    array = sample_array(code, (3, 4, 5), seed=code)
    path = write(tmp_path / ("f.idx" + (".gz" if compress else "")),
                 idx_bytes(array, code), compress)
    out = data.read_idx(path)
    assert out.shape == (3, 4, 5)
    assert out.dtype == array.dtype.newbyteorder("=")
    assert out.dtype.isnative and out.flags.writeable
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("shape", [(7,), (2, 3), (2, 1, 3), (1, 2, 3, 2), (0,), (3, 0)])
def test_idx_shapes(tmp_path, shape):
    array = np.arange(int(np.prod(shape)), dtype=np.uint8).reshape(shape)
    out = data.read_idx(write(tmp_path / "x", idx_bytes(array)))
    assert out.shape == shape
    np.testing.assert_array_equal(out, array)


def test_idx_gzip_detected_by_magic_not_name(tmp_path):
    array = sample_array(0x0C, (4, 2))
    out = data.read_idx(write(tmp_path / "no-extension", idx_bytes(array), compress=True))
    np.testing.assert_array_equal(out, array)
    # and a raw file that happens to be named .gz
    out = data.read_idx(write(tmp_path / "raw.gz", idx_bytes(array)))
    np.testing.assert_array_equal(out, array)


def test_idx_accepts_str_path(tmp_path):
    array = np.arange(6, dtype=np.uint8)
    path = write(tmp_path / "s", idx_bytes(array))
    np.testing.assert_array_equal(data.read_idx(str(path)), array)


def test_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        data.read_idx(tmp_path / "nope")


GOOD = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))

MALFORMED = {
    "bad-magic": (b"\x01\x00" + GOOD[2:], "bad magic"),
    "bad-magic-second-byte": (b"\x00\x07" + GOOD[2:], "bad magic"),
    "bad-type": (GOOD[:2] + b"\x0a" + GOOD[3:], "unknown data type code 0x0A"),
    "zero-dims": (b"\x00\x00\x08\x00" + b"\x00" * 8, "0 dimensions"),
    "five-dims": (b"\x00\x00\x08\x05" + struct.pack(">5I", 1, 1, 1, 1, 1) + b"\x00",
                  "5 dimensions"),
    "dims-too-small": (idx_bytes(np.zeros(24, np.uint8), shape=(2, 3, 3)), "trailing bytes"),
    "dims-too-large": (idx_bytes(np.zeros(24, np.uint8), shape=(2, 3, 5)), "truncated"),
    "truncated-data": (GOOD[:-1], "truncated"),
    "truncated-header": (GOOD[:9], "truncated"),
    "truncated-magic": (GOOD[:3], "truncated"),
    "empty": (b"", "truncated"),
    "absurd-size": (b"\x00\x00\x08\x03" + struct.pack(">3I", 2 ** 14, 2 ** 14, 2 ** 12),
                    "more than the limit"),
    "absurd-size-f8": (b"\x00\x00\x0e\x02" + struct.pack(">2I", 2 ** 31 - 1, 2 ** 31 - 1)
                       + b"\x00" * 64, "more than the limit"),
}


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_idx_malformed(tmp_path, case, compress):
    payload, fragment = MALFORMED[case]
    path = write(tmp_path / "bad.idx", payload, compress)
    with pytest.raises(ValueError, match=fragment) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("shape", [(2 ** 20, 2 ** 20), (2 ** 31,), (2 ** 30, 2)],
                         ids=["2**40", "2**31-ubyte", "2**31-pairs"])
def test_idx_absurd_header_fails_fast_without_allocating(tmp_path, shape, compress):
    # the header claims up to 2**40 elements; the file holds a few bytes
    header = bytes([0, 0, 0x08, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)
    path = write(tmp_path / "huge.idx", header + b"\x00" * 100, compress)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match="limit|truncated"):
            data.read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2.0
    assert peak < 8 * 2 ** 20


@pytest.mark.parametrize("garbage", [
    b"\x1f\x8b",                                    # magic only
    b"\x1f\x8b\x08\x00" + b"\x00" * 6,              # header, no deflate data
    b"\x1f\x8b" + bytes(range(256)) * 4,            # garbage after the magic
], ids=["magic-only", "header-only", "garbage"])
def test_idx_gz_garbage(tmp_path, garbage):
    with pytest.raises(ValueError, match="gzip|truncated"):
        data.read_idx(write(tmp_path / "g.gz", garbage))


def test_idx_gz_truncated_and_corrupt_stream(tmp_path):
    stream = gzip.compress(idx_bytes(sample_array(0x0D, (50, 20))))
    with pytest.raises(ValueError, match="gzip|truncated"):
        data.read_idx(write(tmp_path / "t.gz", stream[: len(stream) // 2]))
    corrupt = bytearray(stream)
    corrupt[-6] ^= 0xFF                                # CRC32 of the member
    with pytest.raises(ValueError, match="gzip"):
        data.read_idx(write(tmp_path / "c.gz", bytes(corrupt)))


def test_idx_raw_file_named_gz_explains(tmp_path):
    with pytest.raises(ValueError, match="not gzip-compressed"):
        data.read_idx(write(tmp_path / "x.gz", b"\x05\x06\x07\x08"))


_FUZZ_DIR = tempfile.mkdtemp(prefix="gpubackprop-idx-fuzz-")


def _only_value_error(payload):
    """read_idx answers an array or a ValueError, within a bounded memory:
    nothing allocated grows with what a header claims (tracemalloc sees
    NumPy's and Python's allocations)."""
    path = os.path.join(_FUZZ_DIR, "fuzz.idx")
    with open(path, "wb") as f:
        f.write(payload)
    tracemalloc.start()
    try:
        with limited_memory(256 << 20):      # and a hard limit on the data segment
            data.read_idx(path)
    except ValueError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 4 * 2 ** 20


header_like = st.builds(
    lambda code, ndim, dims, rest: bytes([0, 0, code, ndim]) + b"".join(
        struct.pack(">I", d) for d in dims) + rest,
    st.sampled_from(sorted(IDX_CODES) + [0, 0x0A, 0xFF]),
    st.integers(0, 6),
    st.lists(st.integers(0, 2 ** 32 - 1) | st.integers(0, 8), max_size=5),
    st.binary(max_size=64),
)


def _mutated(code, shape, cut, flip_at, flip, extra):
    """A valid IDX encoding, then cut short, one byte flipped, or bytes appended."""
    payload = bytearray(idx_bytes(sample_array(code, shape), code))
    if flip:
        payload[flip_at % len(payload)] ^= flip
    payload += extra
    return bytes(payload[:cut]) if cut is not None else bytes(payload)


nearly_valid = st.builds(
    _mutated,
    st.sampled_from(sorted(IDX_CODES)),
    st.lists(st.integers(0, 4), min_size=1, max_size=4).map(tuple),
    st.none() | st.integers(0, 200),
    st.integers(0, 1000),
    st.integers(0, 255),
    st.binary(max_size=8),
)
any_bytes = st.binary(max_size=300) | header_like | nearly_valid


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_bytes)
def test_idx_random_bytes_raw_only_value_error(payload):
    _only_value_error(payload)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_bytes, st.integers(0, 400), st.booleans())
def test_idx_random_bytes_gzipped_only_value_error(payload, cut, flip):
    stream = bytearray(gzip.compress(payload))
    if flip:
        stream[cut % len(stream)] ^= 0x55
    _only_value_error(bytes(stream[: max(cut, 2)]) if cut < len(stream) else bytes(stream))
    _only_value_error(b"\x1f\x8b" + payload)


# ------------------------------------------- byte budget, non-regular files (issue 14)

def test_idx_budget_counts_bytes_not_elements(tmp_path):
    # 2**28 float64 values (2 GiB) are under the old 2**31-element cap; 64 MiB of
    # real zeros behind that header used to be decompressed before the refusal
    header = bytes([0, 0, 0x0E, 1]) + struct.pack(">I", 2 ** 28)
    path = write(tmp_path / "big.gz", header + bytes(64 << 20), compress=True)
    err, peak = peak_memory(lambda: data.read_idx(path))
    assert isinstance(err, ValueError) and "2147483648 bytes, more than the limit" in str(err)
    assert peak < 4 * 2 ** 20
    # an int32 file of 2**29 elements (2 GiB): refused by bytes, raw too
    header = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2 ** 29)
    with pytest.raises(ValueError, match="more than the limit of 1073741824 bytes"):
        data.read_idx(write(tmp_path / "int32.idx", header + bytes(16)))


def test_idx_max_bytes_is_overridable_and_checked(tmp_path):
    path = write(tmp_path / "x.idx", GOOD)                 # 24 uint8 values
    with pytest.raises(ValueError, match="24 bytes, more than the limit of 23 bytes"):
        data.read_idx(path, max_bytes=23)
    np.testing.assert_array_equal(data.read_idx(path, max_bytes=24),
                                  np.arange(24).reshape(2, 3, 4))
    with pytest.raises(ValueError, match="max_bytes must be an integer >= 1; got 0"):
        data.read_idx(path, max_bytes=0)
    with pytest.raises(TypeError, match="max_bytes must be an integer"):
        data.read_idx(path, max_bytes=1.5)


def test_idx_gz_header_beyond_what_deflate_can_expand_is_refused_at_once(tmp_path):
    header = bytes([0, 0, 0x08, 1]) + struct.pack(">I", 512 << 20)   # 512 MiB < budget
    path = write(tmp_path / "claims.gz", header + bytes(100), compress=True)
    with pytest.raises(ValueError, match=r"gzip bytes expand to at most \d+") as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_idx_refuses_a_fifo_without_blocking(tmp_path):
    import threading

    fifo = tmp_path / "train-images-idx3-ubyte"
    os.mkfifo(fifo)
    outcome = []
    reader = threading.Thread(target=lambda: outcome.append(peak_memory(lambda: data.read_idx(fifo))),
                              daemon=True)
    reader.start()
    reader.join(10)
    if reader.is_alive():                      # unblock the reader before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("read_idx blocked on a FIFO")
    err = outcome[0][0]
    assert isinstance(err, ValueError) and "FIFO" in str(err) and str(fifo) in str(err)
    # load_mnist finds the FIFO by name and says what it is (not "not found")
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(ValueError, match="it is a FIFO"):
        data.load_mnist(tmp_path)


def test_idx_refuses_a_folder(tmp_path):
    with pytest.raises(ValueError, match="it is a folder; only regular files are read"):
        data.read_idx(tmp_path)
