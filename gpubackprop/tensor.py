"""Tensor: a thin wrapper over a NumPy or CuPy array that knows its device."""
import numpy as np

from .device import Device, device as get_device, is_cupy_array, to_host


class Tensor:
    """An array on a device.  `data` is the underlying numpy/cupy array;
    indexing and in-place assignment go straight to it (t[...] = x)."""

    __array_priority__ = 100

    @property
    def __gb_array__(self):
        """The underlying array: how the device layer unwraps a Tensor without
        importing this module (device.py sits below it)."""
        return self.data

    def __init__(self, array, device=None, dtype=None):
        if isinstance(array, Tensor):
            array = array.data
        if isinstance(array, (list, tuple)):
            try:
                array = np.asarray(array)
            except ValueError as exc:        # NumPy's "inhomogeneous shape"
                raise ValueError("array must be rectangular: the nested lists given have "
                                 f"rows of different lengths ({exc})") from None
        if device is None:
            device = "cuda:%d" % array.device.id if is_cupy_array(array) else "cpu"
        self.device = get_device(device)
        if dtype is not None:
            from .checks import dtype_name
            dtype = dtype_name("dtype", dtype)
        self.data = self.device.asarray(array, dtype=dtype)
        if np.dtype(self.data.dtype).kind not in "fiub":
            raise TypeError(f"array must hold real numbers; got dtype {self.data.dtype}")

    @classmethod
    def wrap(cls, array, device):
        """A Tensor around an array already on `device` (no copy, no checks)."""
        t = cls.__new__(cls)
        t.data, t.device = array, device
        return t

    @property
    def dtype(self):
        return np.dtype(self.data.dtype)

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def ndim(self):
        return self.data.ndim

    def __len__(self):
        return len(self.data)

    def to(self, device):
        """This tensor on `device` (itself when already there)."""
        device = get_device(device)
        if device == self.device:
            return self
        return Tensor(self.data, device=device)

    def numpy(self):
        """A NumPy array (a copy from the GPU; the array itself on the CPU)."""
        return to_host(self.data)

    def __array__(self, dtype=None, copy=None):
        a = self.numpy()
        return a if dtype is None else a.astype(dtype, copy=False)

    def __dlpack__(self, *args, **kwargs):
        return self.data.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self.data.__dlpack_device__()

    def __getitem__(self, key):
        return self.data[key]

    def __setitem__(self, key, value):
        if isinstance(value, Tensor):
            value = value.data
        try:
            if self.device.kind == "cuda" and not is_cupy_array(value):
                value = self.device.asarray(value)
            self.data[key] = value
        except (TypeError, ValueError) as exc:     # a string, a ragged list, a wrong shape
            what = f"an array of shape {tuple(value.shape)}" if hasattr(value, "shape") \
                else repr(value)[:60]
            raise type(exc)(f"cannot write {what} into a {self.dtype} Tensor of shape "
                            f"{self.shape}: {exc}") from None

    def __repr__(self):
        return f"Tensor({self.numpy()!r}, device='{self.device}')"


def unwrap(x):
    """The array inside a Tensor, or x itself."""
    return x.data if isinstance(x, Tensor) else x
