"""PyTorch interop: to_torch / from_torch against torch as the oracle
(forward outputs, and gradients through torch's autograd), DLPack sharing,
and the refusal of modules gpubackprop does not run."""
import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.activations import HIDDEN_NAMES

from reference import rel_err

torch = pytest.importorskip("torch")
nn = torch.nn

OUTPUTS = [("sigmoid", "sse"), ("identity", "mse"), ("softmax", "cross_entropy"),
           ("identity", "cross_entropy")]


def _problem(sizes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(9, sizes[0])).astype(dtype)
    y = rng.integers(0, sizes[-1], 9)
    return X, y

def _torch_cost(out, y, loss, output, reduction):
    """The package's costs written in torch (losses.py): C0 per example, then
    the mean over examples (per element for mse) or the sum."""
    Y = nn.functional.one_hot(torch.as_tensor(y), out.shape[1]).to(out.dtype)
    if loss == "cross_entropy":
        logp = torch.log(out) if output == "softmax" else torch.log_softmax(out, dim=1)
        total = -(Y * logp).sum()
    else:
        total = ((out - Y) ** 2).sum()
    if reduction == "sum":
        return total
    return total / (out.numel() if loss == "mse" else out.shape[0])


@pytest.mark.parametrize("dtype, tol", [("float32", 1e-6), ("float64", 1e-12)])
@pytest.mark.parametrize("hidden", HIDDEN_NAMES)
def test_to_torch_computes_the_same_outputs(dtype, tol, hidden):
    for output, _ in OUTPUTS[:3]:
        net = gb.MLP.from_sizes([5, 7, 6, 4], activation=hidden, output_activation=output,
                                dtype=dtype, backend="numpy", seed=1)
        model = net.to_torch()
        X, _ = _problem(net.sizes, dtype)
        got = model(torch.from_numpy(X)).detach().numpy()
        assert got.dtype == np.dtype(dtype)
        assert rel_err(got, net.forward(X)) < tol, (hidden, output)


def test_to_torch_modules():
    net = gb.MLP([gb.Dense(3, 4, "leaky_relu"), gb.Dense(4, 5, "identity"),
                  gb.Dense(5, 2, "softmax")], backend="numpy")
    kinds = [type(m) for m in net.to_torch()]
    assert kinds == [nn.Linear, nn.LeakyReLU, nn.Linear, nn.Linear, nn.Softmax]
    assert net.to_torch()[4].dim == 1


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("output, loss", OUTPUTS)
@pytest.mark.parametrize("hidden", HIDDEN_NAMES)
def test_gradients_equal_torch_autograd(hidden, output, loss, reduction):
    net = gb.MLP.from_sizes([5, 7, 6, 4], activation=hidden, output_activation=output,
                            backend="numpy", seed=2)
    X, y = _problem(net.sizes, "float64", seed=3)
    model = net.to_torch()
    cost = _torch_cost(model(torch.from_numpy(X)), y, loss, output, reduction)
    cost.backward()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert rel_err(net.loss(X, y, loss=loss, reduction=reduction), cost.item()) < 1e-12
    for (dW, db), lin in zip(net.gradients(X, y, loss=loss, reduction=reduction), linears):
        assert rel_err(dW, lin.weight.grad.numpy()) < 1e-10, (hidden, output, loss)
        assert rel_err(db, lin.bias.grad.numpy()) < 1e-10, (hidden, output, loss)


def test_from_torch_of_a_torch_model_computes_the_same():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Identity(), nn.Linear(8, 5),
                          nn.Softplus(), nn.Linear(5, 3, bias=False), nn.Softmax(dim=-1))
    net = gb.MLP.from_torch(model, backend="numpy")
    assert net.sizes == [6, 8, 5, 3] and net.dtype == "float32" and str(net.device) == "cpu"
    assert [layer.activation for layer in net.layers] == ["relu", "softplus", "softmax"]
    assert not net.layers[2].b.numpy().any()               # no bias: b = 0
    X, _ = _problem(net.sizes, "float32")
    assert rel_err(net.forward(X), model(torch.from_numpy(X)).detach().numpy()) < 1e-6


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_through_torch_is_exact(dtype):
    net = gb.MLP.from_sizes([4, 5, 3], activation="tanh", dtype=dtype, backend="numpy", seed=4)
    back = gb.MLP.from_torch(net.to_torch(), backend="numpy")
    assert back.dtype == dtype and back.activations == net.activations
    for (W, b), (W2, b2) in zip(net.params, back.params):
        assert np.array_equal(W, W2) and np.array_equal(b, b2)
        assert not np.shares_memory(W, W2)                  # copy=True: independent


def test_copy_false_shares_the_arrays_through_dlpack():
    net = gb.MLP.from_sizes([4, 5, 3], backend="numpy", seed=5)
    model = net.to_torch(copy=False)
    W = net.layers[0].W.data
    assert np.shares_memory(W, model[0].weight.detach().numpy())
    W[0, 0] = 0.25                                           # one array, two views
    assert model[0].weight[0, 0].item() == 0.25
    back = gb.MLP.from_torch(model, backend="numpy", copy=False)
    assert np.shares_memory(back.layers[1].b.data, model[2].bias.detach().numpy())
    X, y = _problem(back.sizes, "float64")
    gb.Trainer(back, optimizer=gb.SGD(lr=0.5), batch_size=3).fit(X, y, epochs=1)
    assert np.array_equal(model[2].weight.detach().numpy(), back.layers[1].W.numpy())


def test_a_saved_network_loads_in_torch_with_the_same_outputs(tmp_path):
    from safetensors.torch import load_file

    net = gb.MLP.from_sizes([5, 7, 3], activation="relu", output_activation="softmax",
                            dtype="float32", backend="numpy", seed=6)
    X, y = _problem(net.sizes, "float32")
    gb.Trainer(net, loss="cross_entropy", optimizer=gb.SGD(lr=0.1), batch_size=3).fit(
        X, y, epochs=2)
    net.save(tmp_path / "net.safetensors")
    tensors = load_file(str(tmp_path / "net.safetensors"))
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3), nn.Softmax(dim=1))
    model.load_state_dict({"0.weight": tensors["W0"], "0.bias": tensors["b0"],
                           "2.weight": tensors["W1"], "2.bias": tensors["b1"]})
    out = model(torch.from_numpy(X)).detach().numpy()
    assert rel_err(out, net.forward(X)) < 1e-6
    assert rel_err(net.to_torch()(torch.from_numpy(X)).detach().numpy(), out) < 1e-6


@pytest.mark.parametrize("model, fragment", [
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.GELU()), r"module 1 of the Sequential \(GELU"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.Dropout(), nn.Linear(4, 2)),
     r"module 1 .*Dropout.* is not supported"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.LeakyReLU(0.2)), "negative_slope=0.01"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.Softplus(beta=2)), "beta=1"),
    (lambda: nn.Sequential(nn.ReLU(), nn.Linear(3, 4)), "must follow a Linear layer"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Tanh()), "one activation per layer"),
    (lambda: nn.Sequential(nn.Identity()), "no Linear layer"),
    (lambda: nn.Sequential(nn.Linear(3, 4).half()), "float32 or all float64"),
    (lambda: nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), nn.Linear(4, 2)),
     "softmax is an output activation only"),
])
def test_unsupported_models_are_refused_clearly(model, fragment):
    with pytest.raises(ValueError, match=fragment):
        gb.MLP.from_torch(model(), backend="numpy")


def test_from_torch_takes_a_sequential():
    with pytest.raises(TypeError, match="torch.nn.Sequential; got Linear"):
        gb.MLP.from_torch(nn.Linear(3, 4))
