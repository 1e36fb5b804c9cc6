"""Tests for gpubackprop.data: bundled digits, IDX/MNIST reading, synthetic sets."""
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


# ------------------------------------------------------------------- digits

def test_digits_shapes_range_and_labels():
    split = data.load_digits()
    assert isinstance(split, data.Split)
    assert split.X_train.shape == (1348, 64) and split.X_test.shape == (449, 64)
    assert split.y_train.shape == (1348,) and split.y_test.shape == (449,)
    assert split.X_train.dtype == np.float64 and split.y_train.dtype == np.int64
    for X in (split.X_train, split.X_test):
        assert X.min() == 0.0 and X.max() == 1.0
        assert np.allclose(X * 16, np.round(X * 16))
    assert set(np.unique(split.y_train)) == set(range(10))
    assert set(np.unique(split.y_test)) == set(range(10))


def test_digits_float32_and_fraction():
    split = data.load_digits(test_fraction=0.1, dtype="float32")
    assert split.X_train.dtype == np.float32 and split.X_test.dtype == np.float32
    assert len(split.X_test) == round(1797 * 0.1)
    assert len(split.X_train) + len(split.X_test) == 1797


def test_digits_deterministic_per_seed():
    a, b, c = data.load_digits(seed=3), data.load_digits(seed=3), data.load_digits(seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.y_train, c.y_train)


def test_digits_split_is_stratified():
    split = data.load_digits(test_fraction=0.3, seed=1)
    total = np.bincount(np.concatenate([split.y_train, split.y_test]), minlength=10)
    test = np.bincount(split.y_test, minlength=10)
    assert np.all(np.abs(test - total * 0.3) <= 1)
    assert test.sum() == round(1797 * 0.3)


def test_digits_split_is_shuffled():
    split = data.load_digits(seed=0)
    # labels in the file cycle 0..9; a shuffled split does not keep them sorted or cyclic
    assert not np.array_equal(split.y_train[:10], np.arange(10))
    rows = np.concatenate([split.X_train, split.X_test])
    assert len(rows) == 1797


def test_digits_equal_to_sklearn():
    datasets = pytest.importorskip("sklearn.datasets")
    reference = datasets.load_digits()
    pixels, labels = data._digits_arrays()
    np.testing.assert_array_equal(pixels, reference.data)
    np.testing.assert_array_equal(labels, reference.target)

    split = data.load_digits(seed=5)
    ours = np.column_stack([np.concatenate([split.X_train, split.X_test]) * 16,
                            np.concatenate([split.y_train, split.y_test])])
    theirs = np.column_stack([reference.data, reference.target])
    sort = lambda t: t[np.lexsort(t.T[::-1])]
    np.testing.assert_array_equal(sort(ours), sort(theirs))


def test_digits_bad_arguments():
    for bad in (0, 1, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="test_fraction"):
            data.load_digits(test_fraction=bad)
    with pytest.raises(TypeError, match="test_fraction"):
        data.load_digits(test_fraction="0.2")
    with pytest.raises(ValueError, match="dtype"):
        data.load_digits(dtype="int32")
    with pytest.raises(TypeError, match="seed"):
        data.load_digits(seed=1.5)
    with pytest.raises(ValueError, match="seed"):
        data.load_digits(seed=-1)


# ---------------------------------------------------------------------- IDX

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


# -------------------------------------------------------------------- MNIST

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


@pytest.mark.parametrize("compress,dotted", [(False, False), (True, False),
                                             (False, True), (True, True)])
def test_load_mnist(tmp_path, compress, dotted):
    arrays = fake_mnist(tmp_path / "mnist", compress=compress, dotted=dotted)
    split = data.load_mnist(tmp_path / "mnist")
    assert split.X_train.shape == (12, 784) and split.X_test.shape == (5, 784)
    assert split.X_train.dtype == np.float32 and split.y_train.dtype == np.int64  # the default
    pixels = arrays["train-images-idx3-ubyte"].reshape(12, 784)
    np.testing.assert_allclose(split.X_train, pixels / 255.0, rtol=1e-7)    # float64 reference
    np.testing.assert_array_equal(split.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert 0.0 <= split.X_test.min() and split.X_test.max() <= 1.0


def test_load_mnist_float32_and_validation_holdout(tmp_path):
    arrays = fake_mnist(tmp_path)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / name).unlink()                      # test=False must not need them
    split = data.load_mnist(str(tmp_path), test=False, dtype="float32")
    assert split.X_train.dtype == np.float32
    assert split.X_train.shape == (10, 784) and split.X_test.shape == (2, 784)
    np.testing.assert_array_equal(split.y_test, arrays["train-labels-idx1-ubyte"][10:])


def test_load_mnist_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="directory"):
        data.load_mnist(tmp_path / "absent")


def test_load_mnist_missing_file_lists_candidates(tmp_path):
    fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError) as info:
        data.load_mnist(tmp_path)
    for name in ("t10k-labels-idx1-ubyte", "t10k-labels-idx1-ubyte.gz",
                 "t10k-labels.idx1-ubyte", "t10k-labels.idx1-ubyte.gz"):
        assert name in str(info.value)


def test_load_mnist_count_mismatch(tmp_path):
    fake_mnist(tmp_path)
    write(tmp_path / "train-labels-idx1-ubyte", idx_bytes(np.zeros(11, np.uint8)))
    with pytest.raises(ValueError, match="11 labels .* 12 images"):
        data.load_mnist(tmp_path)


def test_load_mnist_labels_out_of_range(tmp_path):
    fake_mnist(tmp_path)
    labels = np.zeros(5, np.uint8)
    labels[3] = 10
    write(tmp_path / "t10k-labels-idx1-ubyte", idx_bytes(labels))
    with pytest.raises(ValueError, match="0..9.*found 10 at position 3"):
        data.load_mnist(tmp_path)


def test_load_mnist_wrong_image_file(tmp_path):
    fake_mnist(tmp_path)
    write(tmp_path / "train-images-idx3-ubyte", idx_bytes(np.zeros((12, 784), np.uint8)))
    with pytest.raises(ValueError, match="rows, cols"):
        data.load_mnist(tmp_path)


def test_load_mnist_bad_arguments(tmp_path):
    fake_mnist(tmp_path)
    with pytest.raises(TypeError, match="directory"):
        data.load_mnist(3)
    with pytest.raises(TypeError, match="test"):
        data.load_mnist(tmp_path, test="yes")
    with pytest.raises(ValueError, match="dtype"):
        data.load_mnist(tmp_path, dtype="float16")


def test_load_spec(tmp_path):
    fake_mnist(tmp_path / "m")
    digits = data.load("digits", seed=2, dtype="float32")
    assert digits.X_train.dtype == np.float32
    np.testing.assert_array_equal(digits.y_test, data.load_digits(seed=2).y_test)
    for prefix in ("mnist", "fashion", "fashion-mnist", "MNIST"):
        split = data.load(f"{prefix}:{tmp_path / 'm'}")
        assert split.X_train.shape == (12, 784)
    for bad in ("cifar", "mnist", "mnist:", "digits:x", ""):
        with pytest.raises(ValueError, match="mnist:DIR|names no directory"):
            data.load(bad)
    with pytest.raises(TypeError):
        data.load(None)


# ---------------------------------------------------------------- synthetic

def test_make_teacher_shapes_dtypes_labels():
    X, y = data.make_teacher(300)
    assert X.shape == (300, 20) and X.dtype == np.float64
    assert y.shape == (300,) and y.dtype == np.int64
    assert y.min() >= 0 and y.max() <= 4
    assert len(np.unique(y)) >= 3                       # not a degenerate teacher
    X, y = data.make_teacher(50, sizes=(3, 7, 4, 2), activation="relu", dtype="float32")
    assert X.shape == (50, 3) and X.dtype == np.float32
    assert set(np.unique(y)) <= {0, 1}


def test_make_teacher_deterministic():
    a, b, c = data.make_teacher(40, seed=7), data.make_teacher(40, seed=7), data.make_teacher(40, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_make_teacher_linear_teacher_is_linearly_separable():
    # one linear layer and two classes: the label is the side of a hyperplane
    # through the origin, so least squares on the signs separates the data
    X, y = data.make_teacher(200, sizes=(3, 2), activation="identity", seed=1)
    w, *_ = np.linalg.lstsq(X, 2.0 * y - 1.0, rcond=None)
    assert len(np.unique(y)) == 2
    # least squares is not a perceptron; it still gets almost all of them
    assert np.mean((X @ w > 0) == (y == 1)) > 0.9


def test_make_teacher_bad_arguments():
    with pytest.raises(ValueError, match="n_samples"):
        data.make_teacher(0)
    with pytest.raises(TypeError, match="n_samples"):
        data.make_teacher(2.5)
    with pytest.raises(ValueError, match="sizes"):
        data.make_teacher(10, sizes=(5,))
    with pytest.raises(ValueError, match="number of classes"):
        data.make_teacher(10, sizes=(5, 1))
    with pytest.raises(ValueError, match=r"sizes\[1\]"):
        data.make_teacher(10, sizes=(5, 0, 3))
    with pytest.raises(TypeError, match="sizes"):
        data.make_teacher(10, sizes=20)
    with pytest.raises(ValueError, match="activation"):
        data.make_teacher(10, activation="tanhh")
    with pytest.raises(ValueError, match="dtype"):
        data.make_teacher(10, dtype="int64")


def test_make_xor():
    X, y = data.make_xor()
    assert X.shape == (200, 2) and X.dtype == np.float64
    assert y.shape == (200,) and y.dtype == np.int64
    np.testing.assert_array_equal(y, (X[:, 0] > 0.5).astype(int) ^ (X[:, 1] > 0.5).astype(int))
    assert set(np.unique(y)) == {0, 1}
    X0, y0 = data.make_xor(8, noise=0.0, dtype="float32")
    assert X0.dtype == np.float32
    corners = {tuple(p) for p in X0.tolist()}
    assert corners == {(0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)}
    np.testing.assert_array_equal(y0, [int(a) ^ int(b) for a, b in X0])


def test_make_xor_deterministic():
    a, b = data.make_xor(seed=3), data.make_xor(seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], data.make_xor(seed=4)[0])


def test_make_xor_bad_arguments():
    with pytest.raises(ValueError, match="noise"):
        data.make_xor(noise=-0.1)
    with pytest.raises(TypeError, match="noise"):
        data.make_xor(noise="a")
    with pytest.raises(ValueError, match="n_samples"):
        data.make_xor(n_samples=-3)
    with pytest.raises(TypeError, match="n_samples"):
        data.make_xor(n_samples=True)
    with pytest.raises(TypeError, match="dtype"):
        data.make_xor(dtype=object())


# ------------------------------------------- byte budget, non-regular files (issue 14)

def _peak(call):
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


def test_idx_budget_counts_bytes_not_elements(tmp_path):
    # 2**28 float64 values (2 GiB) are under the old 2**31-element cap; 64 MiB of
    # real zeros behind that header used to be decompressed before the refusal
    header = bytes([0, 0, 0x0E, 1]) + struct.pack(">I", 2 ** 28)
    path = write(tmp_path / "big.gz", header + bytes(64 << 20), compress=True)
    err, peak = _peak(lambda: data.read_idx(path))
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
    reader = threading.Thread(target=lambda: outcome.append(_peak(lambda: data.read_idx(fifo))),
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


def test_load_mnist_peak_memory_is_the_file_plus_float32(tmp_path):
    n = 3000                                        # 2.35 MB of uint8 pixels
    fake_mnist(tmp_path, n_train=n, n_test=6, compress=True)
    split, peak = _peak(lambda: data.load_mnist(tmp_path))
    assert split.X_train.dtype == np.float32
    pixels = n * 784
    # the uint8 file data plus the float32 result (+ slack); float64 was 1 + 8 + 8
    assert peak < 6 * pixels, peak / pixels
    split64, peak64 = _peak(lambda: data.load_mnist(tmp_path, dtype="float64"))
    assert split64.X_train.dtype == np.float64 and peak64 < 10 * pixels
    np.testing.assert_allclose(split.X_train, split64.X_train, rtol=1e-7)


def test_load_mnist_max_bytes_bounds_the_float_arrays(tmp_path):
    fake_mnist(tmp_path, n_train=12)                 # 12 x 784 float32 = 37632 bytes
    data.load_mnist(tmp_path, max_bytes=12 * 784 * 4)
    with pytest.raises(ValueError, match=r"= 9408 bytes, 37632 bytes as float32, more than "
                                         r"the limit of 37631 bytes"):
        data.load_mnist(tmp_path, max_bytes=12 * 784 * 4 - 1)
    with pytest.raises(ValueError, match="max_bytes"):
        data.load_mnist(tmp_path, max_bytes=-1)
