"""Datasets: bundled digits, MNIST-style IDX files, and small synthetic sets.

Every loader returns NumPy arrays on the CPU, batch-major:

* inputs ``X`` of shape ``(n_samples, n_features)`` in the requested float
  dtype (``"float32"`` or ``"float64"``);
* labels ``y`` of shape ``(n_samples,)``, ``int64`` class indices.

The train/test loaders return a :data:`Split` named tuple
``(X_train, y_train, X_test, y_test)``.

Nothing here downloads anything: the digits data ship inside the package
(see :mod:`gpubackprop.datasets`), MNIST and Fashion-MNIST are read from IDX
files the user already has.
"""
import functools
import gzip
import importlib.resources
import numbers
import os
from collections import namedtuple

import numpy as np

from . import checks
from . import idx
from .idx import MAX_BYTES, check_budget, read_idx

__all__ = ["Split", "load_digits", "read_idx", "load_mnist", "make_teacher",
           "make_xor", "load"]

Split = namedtuple("Split", "X_train y_train X_test y_test")
Split.__doc__ = """A train/test split: X_* are (n, n_features) floats, y_* are (n,) int64."""


# ---------------------------------------------------------------- arguments

def _seed(seed):
    """A seed for np.random.default_rng: a non-negative integer, or None."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be a non-negative integer or None; got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None; got {seed}")
    return int(seed)


def _fraction(argument, value):
    """A number strictly between 0 and 1."""
    return checks.real(argument, value, 0.0, 1.0, low_open=True, high_open=True)


# ------------------------------------------------------------------- digits

_DIGITS_RESOURCE = "digits.csv.gz"


@functools.lru_cache(maxsize=1)
def _digits_arrays():
    """The whole bundled digits set: pixels (1797, 64) uint8 in 0..16, labels (1797,) int64.

    Cached; callers must not modify the returned arrays.
    """
    resource = importlib.resources.files("gpubackprop.datasets").joinpath(_DIGITS_RESOURCE)
    with resource.open("rb") as raw, gzip.open(raw, "rt") as text:
        table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    pixels = table[:, :-1].astype(np.uint8)
    labels = table[:, -1].astype(np.int64)
    pixels.flags.writeable = False
    labels.flags.writeable = False
    return pixels, labels


def _stratified_indices(labels, test_fraction, rng):
    """Shuffled (train_idx, test_idx) with each class split in the same proportion.

    The test set gets round(n * test_fraction) samples (at least 1, at most
    n - 1), shared among the classes in proportion to their sizes (largest
    remainders get the leftovers).
    """
    n = len(labels)
    classes, counts = np.unique(labels, return_counts=True)
    n_test = min(max(int(round(n * test_fraction)), 1), n - 1)
    quota = counts * n_test / n
    per_class = np.floor(quota).astype(np.int64)
    leftover = n_test - int(per_class.sum())
    by_remainder = np.argsort(-(quota - per_class), kind="stable")
    per_class[by_remainder[:leftover]] += 1

    train, test = [], []
    for cls, k in zip(classes, per_class):
        members = rng.permutation(np.flatnonzero(labels == cls))
        test.append(members[:k])
        train.append(members[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def load_digits(test_fraction=0.25, seed=0, dtype="float64"):
    """The bundled 8x8 handwritten digits, split into train and test sets.

    1797 images of 64 pixels, scaled from 0..16 to [0, 1]; labels are the
    digits 0..9 as int64 class indices. The split is stratified (each class is
    divided in the same proportion) and shuffled with
    ``np.random.default_rng(seed)``, so a given seed always gives the same split.

    Returns a :data:`Split`: ``X_train (n_train, 64)``, ``y_train (n_train,)``,
    ``X_test (n_test, 64)``, ``y_test (n_test,)`` with
    ``n_test = round(1797 * test_fraction)``.
    """
    test_fraction = _fraction("test_fraction", test_fraction)
    rng = np.random.default_rng(_seed(seed))
    dtype = checks.dtype_name("dtype", dtype)
    pixels, labels = _digits_arrays()
    train, test = _stratified_indices(labels, test_fraction, rng)
    scale = np.dtype(dtype).type(16)
    return Split(pixels[train].astype(dtype) / scale, labels[train].copy(),
                 pixels[test].astype(dtype) / scale, labels[test].copy())


# -------------------------------------------------------------------- MNIST

_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_N_CLASSES = 10


def _candidates(name):
    """File names tried for one MNIST file: raw, .gz, and the dotted mirror spelling."""
    dotted = name.replace("-idx", ".idx")
    return [name, name + ".gz", dotted, dotted + ".gz"]


def _find_mnist_file(directory, name):
    tried = _candidates(name)
    for candidate in tried:
        path = os.path.join(directory, candidate)
        if os.path.exists(path):      # read_idx refuses what is not a regular file
            return path
    raise FileNotFoundError(f"MNIST file {name!r} not found in {directory!r}; "
                            f"looked for: {', '.join(tried)}")


def _mnist_images(path, dtype, max_bytes):
    """(n, rows*cols) floats in [0, 1] from an IDX file of uint8 images.

    The uint8 pixels become `dtype` directly (no float64 step): the peak is
    the file's bytes plus the result, and the result (itemsize bytes per
    pixel) is what `max_bytes` bounds."""
    images = idx.read(path, max_bytes, as_dtype=dtype)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"{path!r}: expected uint8 images of shape (n, rows, cols); "
                         f"got {images.dtype.name} of shape {images.shape}")
    flat = images.reshape(len(images), -1).astype(dtype)
    flat /= np.dtype(dtype).type(255)
    return flat


def _mnist_labels(path, n_images, images_path, max_bytes):
    """(n,) int64 class indices 0..9, as many as there are images."""
    labels = idx.read(path, max_bytes, as_dtype=np.int64)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(f"{path!r}: expected integer labels of shape (n,); "
                         f"got {labels.dtype.name} of shape {labels.shape}")
    if len(labels) != n_images:
        raise ValueError(f"{path!r} holds {len(labels)} labels but {images_path!r} "
                         f"holds {n_images} images")
    bad = (labels < 0) | (labels >= _N_CLASSES)
    if bad.any():
        raise ValueError(f"{path!r}: labels must be class indices 0..{_N_CLASSES - 1}; "
                         f"found {labels[bad][0]} at position {int(np.argmax(bad))}")
    return labels.astype(np.int64)


def _mnist_pair(directory, kind, dtype, max_bytes):
    images_path = _find_mnist_file(directory, _MNIST_FILES[kind + "_images"])
    labels_path = _find_mnist_file(directory, _MNIST_FILES[kind + "_labels"])
    X = _mnist_images(images_path, dtype, max_bytes)
    return X, _mnist_labels(labels_path, len(X), images_path, max_bytes)


def load_mnist(directory, test=True, dtype="float32", max_bytes=MAX_BYTES):
    """MNIST (or Fashion-MNIST) from the four IDX files in ``directory``.

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each raw or
    with ``.gz``, also spelled ``train-images.idx3-ubyte`` as some mirrors do.
    Images are flattened to ``(n, 784)`` and scaled to [0, 1] in ``dtype``
    (float32 by default: 4 bytes a pixel, 188 MB for MNIST's training set;
    the uint8 pixels are converted directly, with no float64 step); labels
    are ``(n,)`` int64 class indices 0..9.  ``max_bytes`` bounds each array
    built (default ``idx.MAX_BYTES``, 1 GiB): a file whose header claims more
    is refused with a ValueError before anything of that size is allocated.

    With ``test=True`` the test part is the official test set (10,000 images).
    With ``test=False`` the t10k files are not read and the last sixth of the
    training set (10,000 of 60,000, as in Nielsen's book) is held out as the
    test part, for validation without touching the test set.
    """
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"directory must be a path; got {type(directory).__name__}")
    test = checks.boolean("test", test)
    dtype = checks.dtype_name("dtype", dtype)
    max_bytes = check_budget(max_bytes)
    directory = os.path.expanduser(os.fspath(directory))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"data directory {directory!r} does not exist "
                                f"or is not a directory")
    X_train, y_train = _mnist_pair(directory, "train", dtype, max_bytes)
    if test:
        X_test, y_test = _mnist_pair(directory, "test", dtype, max_bytes)
        if X_test.shape[1] != X_train.shape[1]:
            raise ValueError(f"{directory!r}: training images have {X_train.shape[1]} pixels, "
                             f"test images {X_test.shape[1]}")
        return Split(X_train, y_train, X_test, y_test)
    n_held = len(X_train) // 6
    if n_held == 0:
        raise ValueError(f"{directory!r}: {len(X_train)} training images are too few "
                         f"to hold out a sixth with test=False")
    cut = len(X_train) - n_held
    return Split(X_train[:cut], y_train[:cut], X_train[cut:], y_train[cut:])


# ---------------------------------------------------------------- synthetic

def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * z))


_TEACHER_ACTIVATIONS = {
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "relu": lambda z: np.maximum(z, 0.0),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
    "softplus": lambda z: np.logaddexp(0.0, z),
    "identity": lambda z: z,
}


def _layer_sizes(sizes):
    """A tuple of at least two positive ints, the last one (the classes) at least 2."""
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__"):
        raise TypeError(f"sizes must be a sequence of layer widths such as (20, 16, 5); "
                        f"got {sizes!r}")
    if len(sizes) < 2:
        raise ValueError(f"sizes must list at least the input width and the number of "
                         f"classes; got {tuple(sizes)!r}")
    sizes = tuple(checks.positive_int(f"sizes[{i}]", s) for i, s in enumerate(sizes))
    if sizes[-1] < 2:
        raise ValueError(f"sizes[-1] is the number of classes and must be >= 2; "
                         f"got {sizes[-1]}")
    return sizes


def make_teacher(n_samples, sizes=(20, 16, 5), activation="tanh", seed=0, dtype="float64"):
    """A classification set labelled by a random "teacher" network.

    The teacher is a fully connected network of widths ``sizes`` with weights
    ``W ~ N(0, 1/n_in)`` of shape ``(n_out, n_in)``, zero biases, the given
    activation on the hidden layers and a linear output layer; it is built
    with plain NumPy so that it does not depend on the rest of the package.
    ``X ~ N(0, 1)`` has shape ``(n_samples, sizes[0])``; ``y`` of shape
    ``(n_samples,)`` is the int64 argmax of the teacher's output, a class
    index in ``0..sizes[-1]-1``, computed from ``X`` as returned (after the
    dtype cast). Returns ``(X, y)``.
    """
    n_samples = checks.positive_int("n_samples", n_samples)
    sizes = _layer_sizes(sizes)
    key = checks.choice("activation", activation, _TEACHER_ACTIVATIONS)
    rng = np.random.default_rng(_seed(seed))
    dtype = checks.dtype_name("dtype", dtype)

    X = rng.standard_normal((n_samples, sizes[0])).astype(dtype)
    weights = [rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)
               for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    a = X.astype(np.float64)
    for W in weights[:-1]:
        a = _TEACHER_ACTIVATIONS[key](a @ W.T)
    y = np.argmax(a @ weights[-1].T, axis=1).astype(np.int64)
    return X, y


_XOR_CORNERS = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])


def make_xor(n_samples=200, noise=0.1, seed=0, dtype="float64"):
    """The XOR problem: points scattered around the 4 corners of the unit square.

    The corners get ``n_samples // 4`` points each (the remainder spread over
    the first corners), in shuffled order, plus Gaussian noise of standard
    deviation ``noise``. Returns ``(X, y)``: ``X (n_samples, 2)`` and
    ``y (n_samples,)`` int64, ``y = int(x0 > 0.5) ^ int(x1 > 0.5)`` computed
    from the returned points.
    """
    n_samples = checks.positive_int("n_samples", n_samples)
    noise = checks.real("noise", noise, low=0.0)
    rng = np.random.default_rng(_seed(seed))
    dtype = checks.dtype_name("dtype", dtype)

    corners = rng.permutation(np.arange(n_samples) % 4)
    X = (_XOR_CORNERS[corners] + noise * rng.standard_normal((n_samples, 2))).astype(dtype)
    y = ((X[:, 0] > 0.5) ^ (X[:, 1] > 0.5)).astype(np.int64)
    return X, y


# ---------------------------------------------------------------------- CLI

_LOAD_FORMS = "'digits', 'mnist:DIR', 'fashion:DIR' or 'fashion-mnist:DIR'"
_IDX_PREFIXES = ("mnist", "fashion", "fashion-mnist", "fashion_mnist")


def load(spec, seed=0, dtype="float64"):
    """The data set named by a command-line ``--data`` value, as a :data:`Split`.

    ``"digits"`` is the bundled digits (split with ``seed``); ``"mnist:DIR"``
    and ``"fashion:DIR"`` (or ``"fashion-mnist:DIR"``) read the IDX files in
    DIR with :func:`load_mnist` and use the official test set.
    """
    if not isinstance(spec, str):
        raise TypeError(f"data spec must be a string, one of {_LOAD_FORMS}; "
                        f"got {type(spec).__name__}")
    name, sep, directory = spec.partition(":")
    name = name.strip().lower()
    if not sep and name == "digits":
        return load_digits(seed=seed, dtype=dtype)
    if sep and name in _IDX_PREFIXES:
        if not directory.strip():
            raise ValueError(f"data spec {spec!r} names no directory; expected {name}:DIR")
        return load_mnist(directory, dtype=dtype)
    raise ValueError(f"unknown data spec {spec!r}; expected {_LOAD_FORMS}")
