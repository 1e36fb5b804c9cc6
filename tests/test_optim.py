"""optim.SGD against torch.optim.SGD, and an optimizer added by subclassing
(Nesterov momentum) training on every backend: fused fast paths step aside
for an optimizer whose step they do not compute."""
import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import backends

from reference import rel_err

torch = pytest.importorskip("torch", reason="PyTorch is the oracle of these tests")


class Nesterov(gb.SGD):
    """SGD with Nesterov momentum, as torch.optim.SGD(nesterov=True):
    g += wd p;  v = mu v + g;  p -= lr (g + mu v)."""

    def step(self, params, grads, state):
        lr, mu, wd = self.lr, self.momentum, self.weight_decay
        for (W, b), (dW, db), (vW, vb) in zip(params, grads, state.velocities):
            for p, g, v in ((W, dW, vW), (b, db, vb)):
                g += wd * p
                v *= mu
                v += g
                g += mu * v
                p -= lr * g


def _data(n=24, n_in=5, n_out=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, n_in)), rng.integers(0, n_out, size=n)


def _torch_train(net, X, y, opt_kwargs, steps):
    """Full-batch steps of the same network in PyTorch (float64)."""
    model = net.to_torch().double()
    opt = torch.optim.SGD(model.parameters(), **opt_kwargs)
    Xt, Yt = torch.tensor(X), torch.nn.functional.one_hot(torch.tensor(y), net.n_out).double()
    for _ in range(steps):
        opt.zero_grad()
        cost = ((model(Xt) - Yt) ** 2).sum(dim=1).mean()      # sse, reduction="mean"
        cost.backward()
        opt.step()
    return [(m.weight.detach().numpy(), m.bias.detach().numpy())
            for m in model if isinstance(m, torch.nn.Linear)]


@pytest.mark.parametrize("opt_cls, nesterov", [(gb.SGD, False), (Nesterov, True)])
def test_full_batch_steps_match_torch(opt_cls, nesterov):
    X, y = _data()
    net = gb.MLP.from_sizes([5, 7, 3], activation="tanh", output_activation="sigmoid",
                            seed=3, backend="numpy")
    expected = _torch_train(net, X, y, dict(lr=0.3, momentum=0.8, weight_decay=0.01,
                                            nesterov=nesterov), steps=5)
    opt = opt_cls(lr=0.3, momentum=0.8, weight_decay=0.01)
    gb.Trainer(net, loss="sse", optimizer=opt, batch_size=len(X), seed=0).fit(X, y, epochs=5)
    for (W, b), (Wt, bt) in zip(net.params, expected):
        assert rel_err(W, Wt) < 1e-12 and rel_err(b, bt) < 1e-12


def _backends_here():
    """(device, backend) pairs that can run on this machine."""
    out = []
    for dev in gb.available_devices():
        for name, why in backends.available(gb.device(dev)).items():
            if why is None:
                out.append((dev, name))
    return out


@pytest.mark.parametrize("dev, backend", _backends_here())
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 2e-5)])
def test_a_subclassed_optimizer_trains_on_every_backend(dev, backend, dtype, tol):
    """Nesterov is not SGD.step: every backend must run the trainer's loop for
    it (a fused path computing plain SGD would silently give other numbers)."""
    X, y = _data(n=23)

    def train(device, name):
        net = gb.MLP.from_sizes([5, 6, 3], activation="sigmoid", seed=2, device=device,
                                dtype=dtype, backend=name)
        t = gb.Trainer(net, loss="sse", optimizer=Nesterov(lr=0.5, momentum=0.9,
                                                           weight_decay=0.001),
                       batch_size=5, seed=0)
        t.fit(X, y, epochs=2)
        return [(layer.W.numpy(), layer.b.numpy()) for layer in net.layers]

    ref = train("cpu", "numpy")
    got = train(dev, backend)
    for (W, b), (W0, b0) in zip(got, ref):
        assert rel_err(W, W0) < tol and rel_err(b, b0) < tol


def test_fused_record_only_for_plain_sgd():
    assert gb.SGD(lr=1.0, momentum=0.5).fused_record() == (1.0, 0.5, 0.0)
    assert Nesterov(lr=1.0, momentum=0.5).fused_record() is None


def test_state_saves_and_loads_its_arrays():
    opt = gb.SGD(lr=0.1, momentum=0.9)
    params = [(np.ones((3, 2)), np.ones(3)), (np.ones((1, 3)), np.ones(1))]
    state = opt.init_state(params)
    assert sorted(state.arrays()) == ["vW0", "vW1", "vb0", "vb1"]
    rng = np.random.default_rng(0)
    arrays = {k: rng.normal(size=v.shape) for k, v in state.arrays().items()}
    state.load(arrays)
    for k, v in state.arrays().items():
        assert np.array_equal(v, arrays[k])
    assert opt.state_fits(state, params)
    assert not gb.SGD(lr=0.1).state_fits(state, params)       # momentum off: no buffers
    assert gb.SGD(lr=0.1).init_state(params).arrays() == {}


@pytest.mark.parametrize("attr, value, fragment", [("lr", -1.0, "lr"), ("momentum", 1.5, "momentum"),
                                                   ("weight_decay", float("nan"), "weight_decay")])
def test_hyperparameters_changed_after_construction_are_checked_at_fit(attr, value, fragment):
    X, y = _data()
    net = gb.MLP.from_sizes([5, 3], backend="numpy")
    before = net.layers[0].W.numpy().copy()
    t = gb.Trainer(net, optimizer=gb.SGD(lr=0.1), batch_size=4)
    with pytest.raises(ValueError, match=fragment):       # refused where it is set
        setattr(t.optimizer, attr, value)
    object.__setattr__(t.optimizer, "_" + attr, value)    # slipped past the property
    with pytest.raises(ValueError, match=fragment):       # and again at fit
        t.fit(X, y)
    assert np.array_equal(net.layers[0].W.numpy(), before)
