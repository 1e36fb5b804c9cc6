"""The SGD trainer: convergence, history, determinism, optimizer maths, save/load."""
import time

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop.backends import available
from gpubackprop.device import Device

from reference import rel_err

CPU_BACKENDS = [n for n, why in available(Device("cpu")).items() if why is None]


@pytest.fixture(scope="module")
def digits():
    return gb.data.load_digits()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nielsen_recipe_on_digits_reaches_95_percent(digits, backend):
    net = gb.MLP.from_sizes([64, 30, 10], activation="sigmoid", backend=backend, seed=0)
    trainer = gb.Trainer(net, loss="sse", optimizer=gb.SGD(lr=3.0), batch_size=10, seed=0)
    t0 = time.perf_counter()
    history = trainer.fit(digits.X_train, digits.y_train, epochs=30,
                          validation=(digits.X_test, digits.y_test))
    assert time.perf_counter() - t0 < 60
    assert len(history) == 30
    assert history.val_accuracy[-1] >= 0.95
    assert trainer.evaluate(digits.X_test, digits.y_test)["accuracy"] >= 0.95
    assert (net.predict(digits.X_test) == digits.y_test).mean() >= 0.95
    assert history.loss[-1] < history.loss[0]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_same_seed_same_bits(backend):
    X, y = gb.data.make_teacher(300, sizes=(8, 6, 3), seed=1)

    def run():
        net = gb.MLP.from_sizes([8, 12, 3], activation="tanh", backend=backend, seed=4)
        gb.Trainer(net, loss="sse", optimizer=gb.SGD(0.5, 0.9, 1e-3),
                   batch_size=7, seed=9).fit(X, y, epochs=3)
        return [p.numpy() for layer in net.layers for p in (layer.W, layer.b)]

    for a, b in zip(run(), run()):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.5, 0.01)])
def test_sgd_matches_torch(backend, momentum, weight_decay):
    torch = pytest.importorskip("torch")
    X, y = gb.data.make_teacher(40, sizes=(5, 4, 3), seed=2)
    net = gb.MLP.from_sizes([5, 6, 3], activation="relu", output_activation="identity",
                            backend=backend, seed=3)
    params = [torch.tensor(p.numpy(), requires_grad=True)
              for layer in net.layers for p in (layer.W, layer.b)]
    opt = torch.optim.SGD(params, lr=0.1, momentum=momentum, weight_decay=weight_decay)
    # same batches as the trainer: its seeded shuffle, batches of 8
    order = np.random.default_rng(11).permutation(40)
    for start in range(0, 40, 8):
        idx = order[start:start + 8]
        a = torch.tensor(X[idx])
        for i in range(0, len(params), 2):
            a = a @ params[i].T + params[i + 1]
            if i < len(params) - 2:
                a = torch.relu(a)
        loss = torch.nn.functional.cross_entropy(a, torch.tensor(y[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    gb.Trainer(net, loss="cross_entropy", optimizer=gb.SGD(0.1, momentum, weight_decay),
               batch_size=8, seed=11).fit(X, y, epochs=1)
    ours = [p.numpy() for layer in net.layers for p in (layer.W, layer.b)]
    for a, b in zip(ours, params):
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_history_records_every_epoch(digits):
    net = gb.MLP.from_sizes([64, 10, 10], seed=0)
    seen = []
    h = gb.Trainer(net, optimizer=gb.SGD(lr=1.0), batch_size=32).fit(
        digits.X_train, digits.y_train, epochs=3, validation=(digits.X_test, digits.y_test),
        callback=seen.append)
    assert [r["epoch"] for r in h] == [1, 2, 3] == h.epoch
    assert seen == h.records
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "time"):
        assert len(getattr(h, key)) == 3 and all(np.isfinite(getattr(h, key)))
    assert set(h.as_dict()) == set(gb.History.KEYS)


def test_each_fit_has_its_own_history_and_a_resumed_one_continues(tmp_path):
    """A second fit returns a new History counting its epochs from 1 (the
    first keeps its records); a fit resumed from a checkpoint continues the
    checkpoint's History."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 4)), np.arange(30) % 3
    t = gb.Trainer(gb.MLP.from_sizes([4, 5, 3], seed=0), optimizer=gb.SGD(lr=0.5),
                   batch_size=10)
    first = t.fit(X, y, epochs=2, validation=(X, y))
    second = t.fit(X, y, epochs=3)
    assert second is not first and second is t.history
    assert first.epoch == [1, 2] and second.epoch == [1, 2, 3]
    assert all(v is None for v in second.val_loss) and len(first.val_loss) == 2
    ckpt = tmp_path / "c.safetensors"
    t.fit(X, y, epochs=2, checkpoint=ckpt)
    resumed = gb.Trainer(gb.MLP.from_sizes([4, 5, 3], seed=0), optimizer=gb.SGD(lr=0.5),
                         batch_size=10).fit(X, y, epochs=4, checkpoint=ckpt, resume=True)
    assert resumed.epoch == [1, 2, 3, 4]


def test_regression_and_one_hot_targets():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(200, 2))
    Y = (X[:, :1] * X[:, 1:])          # a smooth target, (batch, 1)
    net = gb.MLP.from_sizes([2, 16, 1], activation="tanh", output_activation="identity", seed=1)
    h = gb.Trainer(net, loss="mse", optimizer=gb.SGD(0.1, momentum=0.9), batch_size=16).fit(
        X, Y, epochs=40)
    assert h.loss[-1] < 0.2 * h.loss[0]
    assert "accuracy" not in h[-1]
    assert net.predict(X).shape == (200,)
    Xx, yx = gb.data.make_xor(400, seed=0)
    onehot = np.eye(2)[yx]
    net = gb.MLP.from_sizes([2, 8, 2], activation="tanh", output_activation="softmax", seed=0)
    gb.Trainer(net, loss="cross_entropy", optimizer=gb.SGD(0.5), batch_size=10).fit(
        Xx, onehot, epochs=30)
    assert (net.predict(Xx) == yx).mean() > 0.95


def test_save_and_load_round_trip(tmp_path):
    net = gb.MLP.from_sizes([5, 7, 3], activation="softplus", output_activation="softmax",
                            dtype="float32", seed=2)
    path = tmp_path / "net.safetensors"
    net.save(path)
    back = gb.load(path)
    assert back.sizes == net.sizes and back.dtype == "float32"
    assert [l.activation for l in back.layers] == [l.activation for l in net.layers]
    X = np.random.default_rng(0).normal(size=(4, 5))
    assert np.array_equal(back.forward(X), net.forward(X))
    assert not list(tmp_path.glob(".tmp-*"))


# -- a backend's fused fast path gives the loop's numbers --------------------------------------
class LoopSGD(gb.SGD):
    """Plain SGD through the trainer's loop: a subclass with its own `step` is
    never handed to a fused fast path (SGD.fused_record)."""

    def step(self, params, grads, state):
        super().step(params, grads, state)


def _usable_backends():
    from gpubackprop.backends import available as avail

    return [(dev, name) for dev in gb.available_devices()
            for name, why in avail(gb.device(dev)).items() if why is None]


FAST_CASES = [  # sizes, hidden, output, loss
    ([5, 3], "sigmoid", "sigmoid", "sse"),
    ([6, 9, 4], "tanh", "softmax", "cross_entropy"),
    ([7, 8, 5, 3], "relu", "identity", "cross_entropy"),
    ([4, 6, 6, 5, 2], "softplus", "identity", "mse"),
]


@pytest.mark.parametrize("dev, backend", _usable_backends())
@pytest.mark.parametrize("dtype, tol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("sizes, hidden, output, loss", FAST_CASES)
def test_fast_path_matches_the_loop(dev, backend, dtype, tol, sizes, hidden, output, loss):
    X, y = gb.data.make_teacher(37, sizes=(sizes[0], 5, sizes[-1]), seed=5)   # 37: ragged batches

    def trainer(opt_cls):
        net = gb.MLP.from_sizes(sizes, activation=hidden, output_activation=output, seed=1,
                                device=dev, dtype=dtype, backend=backend)
        return gb.Trainer(net, loss=loss, optimizer=opt_cls(lr=0.2, momentum=0.7,
                                                            weight_decay=1e-3),
                          batch_size=8, seed=3)

    t, ref_t = trainer(gb.SGD), trainer(LoopSGD)
    if not t.net.backend.fuses(t.hyper()):
        pytest.skip(f"backend {backend!r} has no fast path for this network")
    h, ref_h = t.fit(X, y, epochs=2), ref_t.fit(X, y, epochs=2)
    net, ref_net = t.net, ref_t.net
    for layer, ref in zip(net.layers, ref_net.layers):
        assert rel_err(layer.W, ref.W) <= tol and rel_err(layer.b, ref.b) <= tol
    for (v, v0) in zip(t.state.arrays().values(), ref_t.state.arrays().values()):
        assert rel_err(v, v0) <= tol
    np.testing.assert_allclose(h.loss, ref_h.loss, rtol=max(tol, 1e-12))
