"""MLP: a stack of Dense layers, its forward pass and backpropagation."""

import numpy as np

from . import backends, inputs, losses
from .checks import dtype_name, positive_int
from .device import all_finite, device as get_device, to_host
from .layers import Dense


class MLP:
    """A multilayer perceptron.

    net = MLP([Dense(784, 30, "sigmoid"), Dense(30, 10, "sigmoid")],
              device="cpu", dtype="float64", backend="auto", seed=0)

    backend: "auto" (the default), "numpy", "numba", "cupy", "cuda" or "fused"
    (gpubackprop.backends); backend_options: keyword arguments of the
    backend's class, e.g. {"tf32": True} for "cuda".
    """

    def __init__(self, layers, device="cpu", dtype="float64", backend="auto", seed=0,
                 backend_options=None):
        self.layers = _check_layers(layers)
        self.device = get_device(device)
        self.dtype = dtype_name("dtype", dtype)
        positive_int("seed", seed, minimum=0)
        self._backend_request = (backend, backend_options)
        self.backend = backends.create(backend, self.device, backend_options)
        rng = np.random.default_rng(seed)
        for layer in self.layers:
            if layer.W is None:
                layer._materialize(self.device, self.dtype, rng)
            else:  # a layer of a network that is gone: bring it here
                layer._place(self.device, self.dtype)
        self.backend.check_network(self.sizes, self.activations, self.dtype)
        for layer in self.layers:      # a Dense belongs to one network (see Dense)
            layer._adopt(self)

    @property
    def backend_options(self):
        """The backend_options the network was made with (a copy), or None."""
        options = self._backend_request[1]
        return None if options is None else dict(options)

    @classmethod
    def from_sizes(cls, sizes, activation="sigmoid", output_activation=None, **kwargs):
        """MLP.from_sizes([784, 30, 10], activation="sigmoid"): every layer uses
        `activation`, the last one `output_activation` if given."""
        if not isinstance(sizes, (list, tuple)) or len(sizes) < 2:
            raise ValueError(f"sizes must be a list of at least two layer sizes, as "
                             f"[784, 30, 10]; got {sizes!r}")
        for i, n in enumerate(sizes):
            positive_int(f"sizes[{i}]", n)
        out = activation if output_activation is None else output_activation
        acts = [activation] * (len(sizes) - 2) + [out]
        return cls([Dense(n_in, n_out, a) for n_in, n_out, a in zip(sizes, sizes[1:], acts)],
                   **kwargs)

    # -- shapes -------------------------------------------------------------
    @property
    def sizes(self):
        return [self.layers[0].n_in] + [layer.n_out for layer in self.layers]

    @property
    def n_in(self):
        return self.layers[0].n_in

    @property
    def n_out(self):
        return self.layers[-1].n_out

    @property
    def activations(self):
        """[sigma of layer 1, ..., sigma of layer L] (names)."""
        return [layer.activation for layer in self.layers]

    @property
    def params(self):
        """[(W, b), ...] as device arrays."""
        return [layer.params for layer in self.layers]

    # -- forward and backward ------------------------------------------------
    def _features(self, X):
        return inputs.features(X, self.n_in, self.device, self.dtype)

    def _targets(self, Y, batch, loss=None):
        return inputs.targets(Y, self.n_out, batch, self.device, self.dtype, loss=loss)

    def feedforward(self, X):
        """Every layer's activation [a_0 = X, a_1, ..., a_L] for checked input X."""
        return self.backend.feedforward(self.params, self.activations, X)

    def backward(self, a, Y, loss):
        """Per-example deltas [delta_1, ..., delta_L] from the activations of
        feedforward and targets Y (the chain rule, from the output back)."""
        return self.backend.backward(self.params, self.activations, a, Y, loss)

    def forward(self, X):
        """The network's output a_L, shape (batch, n_out), on its device."""
        return self.feedforward(self._features(X))[-1]

    def predict(self, X):
        """Class indices (batch,) = argmax of the output; for one output, the
        output itself (batch,)."""
        out = self.forward(X)
        return out.argmax(axis=1) if self.n_out > 1 else out[:, 0]

    def loss(self, X, Y, loss="sse", reduction="mean"):
        """The cost C of the batch (a Python float)."""
        cost = _get_loss(loss, reduction, self.layers[-1].activation)
        X = self._features(X)
        Y = self._targets(Y, X.shape[0], cost)
        a = self.feedforward(X)[-1]
        return float(to_host(cost.value(a, Y, self.layers[-1].activation, self.device.xp)))

    def gradients(self, X, Y, loss="sse", reduction="mean"):
        """dC/dW and dC/db of every layer: a list of (dW, db), shapes of (W, b)."""
        cost = _get_loss(loss, reduction, self.layers[-1].activation)
        X = self._features(X)
        Y = self._targets(Y, X.shape[0], cost)
        a = self.feedforward(X)
        deltas = self.backward(a, Y, cost)
        scale = cost.scale(X.shape[0], self.n_out)
        return [self.backend.weight_gradient(delta, a_prev, scale)
                for delta, a_prev in zip(deltas, a[:-1])]

    # -- persistence -----------------------------------------------------------
    def metadata(self):
        """{"format", "version", "sizes", "activations", "dtype"} (see io.py)."""
        from .io import network_meta

        return network_meta(self)

    def state_arrays(self):
        """{"W0": ..., "b0": ..., ...} as NumPy arrays."""
        from .io import network_arrays

        return network_arrays(self)

    def save(self, path):
        """Write the network to `path` as safetensors (tensors W0, b0, ... plus
        metadata), atomically; gb.load(path) reads it back."""
        from .io import save_network

        for i, layer in enumerate(self.layers):     # what save writes, load must read
            for name, value in zip("Wb", layer.params):
                if not all_finite(value):
                    raise ValueError(f"cannot save the network to {path!r}: {name} of "
                                     f"layers[{i}] contains NaN or infinite values, and "
                                     "gb.load refuses such a file; restore finite "
                                     "parameters first (set_params, or a checkpoint)")
        save_network(self, path)

    def to_torch(self, copy=True):
        """A torch.nn.Sequential of Linear and activation modules with this
        network's weights (PyTorch needed; copy=False shares them: interop.py)."""
        from .interop import to_torch

        return to_torch(self, copy=copy)

    @classmethod
    def from_torch(cls, module, device=None, backend="auto", copy=True):
        """The MLP of a torch.nn.Sequential of Linear and supported activation
        modules (ValueError naming the first other module; interop.py)."""
        from .interop import layers_from_torch

        layers, device, dtype = layers_from_torch(module, device=device, copy=copy)
        return cls(layers, device=device, dtype=dtype, backend=backend)

    def to(self, device):
        """Move the network to `device` (in place); returns self."""
        self.device = get_device(device)
        for layer in self.layers:
            layer._place(self.device, self.dtype)
        self.backend = backends.create(*self._backend_request[:1], self.device,
                                       self._backend_request[1])
        self.backend.check_network(self.sizes, self.activations, self.dtype)
        return self

    def __repr__(self):
        inner = ", ".join(repr(layer) for layer in self.layers)
        return (f"MLP([{inner}], device='{self.device}', dtype='{self.dtype}', "
                f"backend='{self.backend.name}')")


def _get_loss(loss, reduction, output_activation):
    cost = losses.get(loss, reduction)
    cost.check_output(output_activation)
    return cost


def _check_layers(layers):
    if not isinstance(layers, (list, tuple)) or not layers:
        raise ValueError(f"layers must be a non-empty list of Dense layers; got {layers!r}")
    for i, layer in enumerate(layers):
        if not isinstance(layer, Dense):
            raise TypeError(f"layers[{i}] must be a gpubackprop.Dense; got {type(layer).__name__}")
        first = next(j for j, other in enumerate(layers) if other is layer)
        if first != i:
            raise ValueError(f"layers[{first}] and layers[{i}] are the same Dense object; "
                             "each layer needs its own W and b (use layer.copy())")
        layer._check_free(i)
    for i, (prev, layer) in enumerate(zip(layers, layers[1:]), start=1):
        if prev.n_out != layer.n_in:
            raise ValueError(f"layer sizes do not chain: layers[{i - 1}] has {prev.n_out} "
                             f"outputs but layers[{i}] expects {layer.n_in} inputs")
    for i, layer in enumerate(layers[:-1]):
        if layer.activation == "softmax":
            raise ValueError(f"softmax is an output activation only; layers[{i}] is hidden")
    if layers[-1].activation == "softmax" and layers[-1].n_out < 2:
        raise ValueError("a softmax output needs at least 2 outputs: over one it is always 1 "
                         "and nothing trains; use sigmoid (or identity) for one output")
    return list(layers)


def load(path, device="cpu", backend=None):
    """A network saved by MLP.save (safetensors; checked, never unpickled)."""
    from .io import read_network

    sizes, acts, dtype, arrays = read_network(path)
    layers = [Dense(n_in, n_out, act, W=arrays[f"W{i}"], b=arrays[f"b{i}"])
              for i, (n_in, n_out, act) in enumerate(zip(sizes, sizes[1:], acts))]
    return MLP(layers, device=device, dtype=dtype, backend=backend)
