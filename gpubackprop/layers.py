"""Dense: one fully connected layer, z = a_prev @ W.T + b, a = sigma(z)."""
import weakref

import numpy as np

from . import activations
from .checks import positive_int
from .device import all_finite, array_module
from .tensor import Tensor, unwrap


class Dense:
    """A layer of `n_out` neurons, each joined to all `n_in` of the layer before.

    W has shape (n_out, n_in): W[j, k] joins neuron k of layer l-1 to neuron j
    of layer l.  b has shape (n_out,).  Both are Tensors on the network's
    device once the layer belongs to an MLP, writable in place.

    A layer belongs to one network: its W and b are that network's
    parameters, trained in place.  Putting the same Dense into a second MLP
    (or twice into one) would make both train the same arrays, so MLP
    refuses it; `layer.copy()` is a new layer with a copy of the values.
    """

    def __init__(self, n_in, n_out, activation="sigmoid", W=None, b=None):
        self.n_in = positive_int("n_in", n_in)
        self.n_out = positive_int("n_out", n_out)
        self.activation = activations.check_name(activation)
        self._W = self._b = None            # Tensors once the layer belongs to an MLP
        self._init_W, self._init_b = W, b
        self._owner = None          # weakref to the MLP this layer belongs to
        if W is not None or b is not None:
            self._check_params(W, b)

    def __str__(self):
        return f"Dense({self.n_in}, {self.n_out})"

    # -- parameters -------------------------------------------------------
    @property
    def W(self):
        """The weights (n_out, n_in): a Tensor on the network's device, None
        before the layer belongs to an MLP.  `layer.W = array` is
        set_params(W=array): checked, and copied into the same Tensor, so
        the network goes on training the arrays it holds."""
        return self._W

    @W.setter
    def W(self, value):
        self._assign("W", value)

    @property
    def b(self):
        """The biases (n_out,): a Tensor, as W."""
        return self._b

    @b.setter
    def b(self, value):
        self._assign("b", value)

    def _assign(self, name, value):
        if value is None:
            raise TypeError(f"{name} of {self} cannot be set to None; assign an array of "
                            f"shape {(self.n_out, self.n_in) if name == 'W' else (self.n_out,)}")
        self.set_params(**{name: value})

    def _place(self, device, dtype):
        """Put W and b on `device` as `dtype` (a layer moved with its network,
        or joining a new one after its old network is gone)."""
        if self._W.dtype != np.dtype(dtype):
            self._check_params(self._W.data, self._b.data, dtype)
        self._W, self._b = (t if t.device == device and t.dtype == np.dtype(dtype)
                            else Tensor(t.data, device=device, dtype=dtype)
                            for t in (self._W, self._b))

    def _check_params(self, W, b, dtype=None):
        """Shapes, real dtypes and finiteness of new W/b values; with `dtype`,
        finiteness after the cast to it (1e39 overflows float32)."""
        for name, value, shape in (("W", W, (self.n_out, self.n_in)), ("b", b, (self.n_out,))):
            if value is None:
                continue
            value = unwrap(value)
            if not hasattr(value, "shape"):
                try:
                    value = np.asarray(value, dtype=float)
                except (TypeError, ValueError):
                    raise ValueError(f"{name} of {self} must be an array of numbers of "
                                     f"shape {shape}") from None
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} of {self} must have shape {shape}; "
                                 f"got {tuple(value.shape)}")
            kind = np.dtype(value.dtype).kind
            if kind not in "fiu":
                raise TypeError(f"{name} must hold real numbers; got dtype {value.dtype}")
            if not all_finite(value):
                raise ValueError(f"{name} of {self} contains NaN or infinite values")
            if dtype is not None:
                _check_cast(value, dtype, f"{name} of {self}")

    def _materialize(self, device, dtype, rng):
        """Create W and b on `device` (given values, else a seeded initialisation)."""
        gain = 2.0 if self.activation in ("relu", "leaky_relu") else 1.0
        W = self._init_W
        if W is None:   # N(0, gain / n_in): keeps the variance of z near 1
            W = rng.normal(0.0, np.sqrt(gain / self.n_in), (self.n_out, self.n_in))
        b = self._init_b
        if b is None:
            b = np.zeros(self.n_out)
        self._check_params(self._init_W, self._init_b, dtype)    # given values fit dtype?
        self._W = Tensor(_as_host_or_device(W), device=device, dtype=dtype)
        self._b = Tensor(_as_host_or_device(b), device=device, dtype=dtype)
        self._init_W = self._init_b = None

    def set_params(self, W=None, b=None):
        """Overwrite W and/or b in place (shapes must match; the values must be
        finite in the network's dtype).  Before the layer belongs to an MLP
        the values are kept for it instead."""
        if self.W is None:
            self._check_params(W, b)
            if W is not None:
                self._init_W = W
            if b is not None:
                self._init_b = b
            return
        self._check_params(W, b, self.W.dtype)
        if W is not None:
            self.W[...] = unwrap(W)
        if b is not None:
            self.b[...] = unwrap(b)

    @property
    def params(self):
        """(W, b) as arrays on the device."""
        return self.W.data, self.b.data

    # -- belonging to a network -------------------------------------------------
    def _check_free(self, index):
        """ValueError if this layer belongs to another (live) network."""
        if self._owner is not None and self._owner() is not None:
            raise ValueError(f"layers[{index}] ({self!r}) already belongs to another MLP; "
                             "a layer's W and b are its network's parameters, so sharing "
                             "it would train both networks' weights together. Use "
                             "layer.copy() for an independent layer with the same values")

    def _adopt(self, net):
        """This layer now belongs to `net` (held weakly: once that network is
        gone the layer may join another)."""
        self._owner = weakref.ref(net)

    def copy(self):
        """A new Dense of the same shape and activation with a copy of W and b
        (host copies; the network it joins puts them on its device)."""
        if self.W is None:
            W = None if self._init_W is None else np.array(unwrap(self._init_W), copy=True)
            b = None if self._init_b is None else np.array(unwrap(self._init_b), copy=True)
        else:
            W, b = self.W.numpy().copy(), self.b.numpy().copy()
        return Dense(self.n_in, self.n_out, self.activation, W=W, b=b)

    def __repr__(self):
        return f"Dense({self.n_in}, {self.n_out}, activation={self.activation!r})"


def _check_cast(value, dtype, name):
    """ValueError if `value` (finite) is not finite once cast to `dtype`."""
    from .inputs import nonfinite_error

    if np.dtype(dtype).itemsize >= np.dtype(value.dtype).itemsize or \
            np.dtype(value.dtype).kind != "f":
        return          # a cast that widens (or from integers) cannot overflow
    xp = np if np.isscalar(value) else array_module(value)
    with np.errstate(over="ignore"):
        cast = xp.asarray(value, dtype=dtype)
    if not all_finite(cast):
        raise nonfinite_error(value, dtype, name)


def _as_host_or_device(value):
    value = unwrap(value)
    return value if hasattr(value, "shape") else np.asarray(value, dtype=float)
