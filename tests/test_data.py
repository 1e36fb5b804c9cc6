"""Tests for gpubackprop.data: bundled digits, MNIST folders, synthetic sets
(the IDX reader itself: tests/test_idx.py)."""
import numpy as np
import pytest

from gpubackprop import data
from idx_files import fake_mnist, idx_bytes, peak_memory, write

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


# -------------------------------------------------------------------- MNIST


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



# ------------------------------------------- load_mnist memory and byte budget (issue 14)

def test_load_mnist_peak_memory_is_the_file_plus_float32(tmp_path):
    n = 3000                                        # 2.35 MB of uint8 pixels
    fake_mnist(tmp_path, n_train=n, n_test=6, compress=True)
    split, peak = peak_memory(lambda: data.load_mnist(tmp_path))
    assert split.X_train.dtype == np.float32
    pixels = n * 784
    # the uint8 file data plus the float32 result (+ slack); float64 was 1 + 8 + 8
    assert peak < 6 * pixels, peak / pixels
    split64, peak64 = peak_memory(lambda: data.load_mnist(tmp_path, dtype="float64"))
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
