"""Backprop against finite differences and two independent oracles:
a per-example implementation in the style of Nielsen's network.py (column
vectors, one example at a time) and PyTorch autograd where installed."""
import gc

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.activations import HIDDEN_NAMES, LEAKY_SLOPE

SIZES = [[7, 5, 3], [3, 9, 1, 4], [11, 13, 6, 5, 2]]
OUTPUTS = [("sigmoid", "sse"), ("identity", "sse"), ("tanh", "mse"), ("identity", "mse"),
           ("softmax", "cross_entropy"), ("identity", "cross_entropy"), ("softmax", "sse")]


def _sigma(name, z):
    return {"identity": lambda: z, "sigmoid": lambda: 1 / (1 + np.exp(-z)),
            "tanh": lambda: np.tanh(z), "relu": lambda: np.maximum(z, 0),
            "leaky_relu": lambda: np.where(z > 0, z, LEAKY_SLOPE * z),
            "softplus": lambda: np.log1p(np.exp(z)),
            "softmax": lambda: np.exp(z - z.max()) / np.exp(z - z.max()).sum()}[name]()


def _sigma_prime(name, z):
    s = 1 / (1 + np.exp(-z))
    return {"identity": lambda: np.ones_like(z), "sigmoid": lambda: s * (1 - s),
            "tanh": lambda: 1 - np.tanh(z) ** 2, "relu": lambda: (z > 0) * 1.0,
            "leaky_relu": lambda: np.where(z > 0, 1.0, LEAKY_SLOPE),
            "softplus": lambda: s}[name]()


def nielsen_backprop(Ws, bs, acts, x, y, loss):
    """Gradient of one example's cost C0, column vectors, z kept explicitly."""
    activation, activations, zs = x.reshape(-1, 1), [x.reshape(-1, 1)], []
    for W, b, act in zip(Ws, bs, acts):
        z = W @ activation + b.reshape(-1, 1)
        zs.append(z)
        activation = _sigma(act, z)
        activations.append(activation)
    a, y = activations[-1], y.reshape(-1, 1)
    if loss == "cross_entropy":
        p = a if acts[-1] == "softmax" else _sigma("softmax", a)
        delta = p - y
    elif acts[-1] == "softmax":   # full Jacobian of softmax times dC0/da
        J = np.diagflat(a) - a @ a.T
        delta = J @ (2 * (a - y))
    else:
        delta = 2 * (a - y) * _sigma_prime(acts[-1], zs[-1])
    nabla_W, nabla_b = [None] * len(Ws), [None] * len(Ws)
    nabla_W[-1], nabla_b[-1] = delta @ activations[-2].T, delta.ravel()
    for l in range(2, len(Ws) + 1):
        delta = (Ws[-l + 1].T @ delta) * _sigma_prime(acts[-l], zs[-l])
        nabla_W[-l], nabla_b[-l] = delta @ activations[-l - 1].T, delta.ravel()
    return nabla_W, nabla_b


def _case(sizes, hidden, output, seed, batch=6):
    rng = np.random.default_rng(seed)
    net = gb.MLP.from_sizes(sizes, activation=hidden, output_activation=output,
                            backend="numpy", seed=seed)
    for layer in net.layers:  # random biases too, never zeros
        layer.set_params(b=rng.normal(size=layer.n_out))
    X = rng.normal(size=(batch, sizes[0]))
    if sizes[-1] > 1:
        Y = rng.integers(0, sizes[-1], batch)
    else:
        Y = rng.normal(size=(batch, 1))
    return net, X, Y


@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("hidden", HIDDEN_NAMES)
@pytest.mark.parametrize("output,loss", OUTPUTS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_backprop_matches_finite_differences(sizes, hidden, output, loss, reduction):
    if loss == "cross_entropy" and sizes[-1] == 1:
        pytest.skip("cross entropy needs at least two classes")
    net, X, Y = _case(sizes, hidden, output, seed=len(sizes))
    assert gb.gradcheck(net, X, Y, loss=loss, reduction=reduction) < 1e-6


@pytest.mark.parametrize("hidden", HIDDEN_NAMES)
@pytest.mark.parametrize("output,loss", OUTPUTS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_backprop_matches_per_example_oracle(hidden, output, loss, reduction):
    sizes = [5, 7, 4, 3]
    net, X, labels = _case(sizes, hidden, output, seed=3, batch=9)
    Y = np.eye(sizes[-1])[labels]
    Ws = [layer.W.numpy().copy() for layer in net.layers]
    bs = [layer.b.numpy().copy() for layer in net.layers]
    acts = [layer.activation for layer in net.layers]
    sum_W = [np.zeros_like(W) for W in Ws]
    sum_b = [np.zeros_like(b) for b in bs]
    for x, y in zip(X, Y):
        nW, nb = nielsen_backprop(Ws, bs, acts, x, y, loss)
        sum_W = [s + g for s, g in zip(sum_W, nW)]
        sum_b = [s + g for s, g in zip(sum_b, nb)]
    scale = 1.0 if reduction == "sum" else 1 / len(X)
    if loss == "mse" and reduction == "mean":
        scale /= sizes[-1]
    grads = net.gradients(X, labels, loss=loss, reduction=reduction)
    for (dW, db), gW, gb_ in zip(grads, sum_W, sum_b):
        np.testing.assert_allclose(dW, scale * gW, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(db, scale * gb_, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("hidden", HIDDEN_NAMES)
@pytest.mark.parametrize("output,loss", OUTPUTS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_backprop_matches_torch_autograd(hidden, output, loss, reduction):
    torch = pytest.importorskip("torch")
    sizes = [6, 8, 5, 4]
    net, X, labels = _case(sizes, hidden, output, seed=5, batch=7)
    params = [(torch.tensor(layer.W.numpy(), requires_grad=True),
               torch.tensor(layer.b.numpy(), requires_grad=True)) for layer in net.layers]
    a = torch.tensor(X)
    fn = {"identity": lambda z: z, "sigmoid": torch.sigmoid, "tanh": torch.tanh,
          "relu": torch.relu, "softplus": torch.nn.functional.softplus,
          "leaky_relu": lambda z: torch.nn.functional.leaky_relu(z, LEAKY_SLOPE),
          "softmax": lambda z: torch.softmax(z, dim=1)}
    for (W, b), layer in zip(params, net.layers):
        z = a @ W.T + b
        a = z if (loss == "cross_entropy" and layer.activation == "softmax") \
            else fn[layer.activation](z)
    Y = torch.tensor(np.eye(sizes[-1])[labels])
    if loss == "cross_entropy":
        cost = torch.nn.functional.cross_entropy(a, torch.tensor(labels), reduction=reduction)
    elif loss == "mse":
        cost = torch.nn.functional.mse_loss(a, Y, reduction=reduction)
    else:
        cost = ((a - Y) ** 2).sum(1)
        cost = cost.mean() if reduction == "mean" else cost.sum()
    cost.backward()
    assert net.loss(X, labels, loss=loss, reduction=reduction) == pytest.approx(cost.item(),
                                                                                rel=1e-12)
    for (dW, db), (W, b) in zip(net.gradients(X, labels, loss=loss, reduction=reduction), params):
        np.testing.assert_allclose(dW, W.grad.numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(db, b.grad.numpy(), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-3), ("float64", 1e-6)])
def test_gradcheck_float32_networks(dtype, tol):
    net = gb.MLP.from_sizes([4, 6, 3], activation="tanh", dtype=dtype, backend="numpy", seed=1)
    rng = np.random.default_rng(0)
    assert gb.gradcheck(net, rng.normal(size=(5, 4)), rng.integers(0, 3, 5)) < tol


def test_gradients_shapes_match_parameters():
    net = gb.MLP.from_sizes([3, 4, 2], seed=0)
    grads = net.gradients(np.ones((2, 3)) * 0.5, [0, 1])
    assert [(dW.shape, db.shape) for dW, db in grads] == [((4, 3), (4,)), ((2, 4), (2,))]


def test_assigning_W_or_b_copies_into_the_networks_arrays():
    """layer.W = array is set_params(W=array): the values are checked and copied
    into the Tensor the network trains, which stays the same object; a list
    works as an array does; training then starts from the new values."""
    net = gb.MLP.from_sizes([3, 4, 2], backend="numpy", seed=0)
    layer = net.layers[0]
    W, b = layer.W, layer.b
    layer.W = np.arange(12.0).reshape(4, 3) / 10
    layer.b = [0.1, 0.2, 0.3, 0.4]
    assert layer.W is W and layer.b is b
    np.testing.assert_array_equal(net.params[0][0], np.arange(12.0).reshape(4, 3) / 10)
    np.testing.assert_array_equal(net.params[0][1], [0.1, 0.2, 0.3, 0.4])
    same = gb.MLP.from_sizes([3, 4, 2], backend="numpy", seed=0)
    same.layers[0].set_params(W=np.arange(12.0).reshape(4, 3) / 10, b=[0.1, 0.2, 0.3, 0.4])
    X, y = np.random.default_rng(1).normal(size=(10, 3)), np.arange(10) % 2
    for n in (net, same):
        gb.Trainer(n, optimizer=gb.SGD(lr=0.5), batch_size=5).fit(X, y, epochs=2)
    for (W0, b0), (W1, b1) in zip(net.params, same.params):
        np.testing.assert_array_equal(W0, W1)
        np.testing.assert_array_equal(b0, b1)
    loose = gb.Dense(3, 4)                       # before a network: kept for it
    loose.W = np.ones((4, 3))
    np.testing.assert_array_equal(gb.MLP([loose, gb.Dense(4, 2)]).layers[0].W.numpy(), 1.0)


def test_a_layer_joining_a_network_of_another_dtype_is_cast_to_it():
    first = gb.MLP.from_sizes([3, 4, 2], dtype="float32", seed=0)
    layer = first.layers[0]
    values = layer.W.numpy().copy()
    del first
    gc.collect()
    gb.MLP([layer, gb.Dense(4, 2)], dtype="float64")
    assert layer.W.dtype == np.float64 and layer.b.dtype == np.float64
    np.testing.assert_array_equal(layer.W.numpy(), values.astype(np.float64))


def test_inputs_may_be_torch_tensors():
    torch = pytest.importorskip("torch")
    net = gb.MLP.from_sizes([3, 4, 2], backend="numpy", seed=0)
    X = np.random.default_rng(0).normal(size=(6, 3))
    np.testing.assert_array_equal(net.forward(torch.from_numpy(X)), net.forward(X))
    t = gb.Trainer(net, optimizer=gb.SGD(lr=0.1), batch_size=3)
    t.fit(torch.from_numpy(X), torch.tensor([0, 1, 0, 1, 1, 0]), epochs=1)
