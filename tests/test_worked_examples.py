"""The seeds' worked examples through the public Python API."""
import numpy as np
import pytest

import gpubackprop as gb


def statquest_net(b3):
    return gb.MLP([gb.Dense(1, 2, activation="softplus", W=[[3.34], [-3.53]], b=[-1.43, 0.57]),
                   gb.Dense(2, 1, activation="identity", W=[[-1.22, -2.30]], b=[b3])],
                  device="cpu", dtype="float64")


X = np.array([[0.0], [0.5], [1.0]])
Y = np.array([0.0, 1.0, 0.0])


def test_statquest_ssr_and_its_derivative_at_b3_zero():
    net = statquest_net(0.0)
    assert round(net.loss(X, Y, loss="sse", reduction="sum"), 1) == 20.4
    (_, _), (_, db) = net.gradients(X, Y, loss="sse", reduction="sum")
    assert round(float(db[0]), 1) == -15.7
    # the same with the alias and the hand formula dSSR/db3 = sum -2 (observed - predicted)
    predicted = net.forward(X)[:, 0]
    assert float(db[0]) == pytest.approx(np.sum(-2 * (Y - predicted)), rel=1e-12)
    assert net.loss(X, Y, loss="quadratic", reduction="sum") == pytest.approx(
        np.sum((Y - predicted) ** 2), rel=1e-12)


def test_statquest_gradient_descent_on_b3_converges_to_2_61():
    net = statquest_net(0.0)
    for _ in range(1000):
        (_, _), (_, db) = net.gradients(X, Y, loss="sse", reduction="sum")
        step = 0.1 * float(db[0])
        if abs(step) < 1e-3:
            break
        net.layers[1].b[0] = net.layers[1].b[0] - step
    assert round(float(net.layers[1].b.numpy()[0]), 2) == 2.61


def test_statquest_helper_matches():
    r = gb.explain.statquest()
    assert (round(r["ssr"], 1), round(r["dssr_db3"], 1), round(r["b3"], 2)) == (20.4, -15.7, 2.61)


@pytest.mark.parametrize("L", [1, 2, 4])
def test_3blue1brown_chain_rule_factors_and_nudge(L):
    rng = np.random.default_rng(L)
    w, b = rng.normal(size=L), rng.normal(size=L)
    x, y = 0.6, 1.0
    net = gb.MLP([gb.Dense(1, 1, "sigmoid", W=[[wi]], b=[bi]) for wi, bi in zip(w, b)])
    a = [float(v[0, 0]) for v in net.feedforward(np.array([[x]]))]
    # dC0/dw_L = a_{L-1} * sigma'(z_L) * 2 (a_L - y)
    expected = a[-2] * a[-1] * (1 - a[-1]) * 2 * (a[-1] - y)
    grads = net.gradients([[x]], [[y]], loss="sse", reduction="sum")
    assert float(grads[-1][0][0, 0]) == pytest.approx(expected, rel=1e-12)
    # the ratio of a tiny nudge of w_L to the nudge of the cost agrees with it
    h = 1e-6
    W = net.layers[-1].W
    c0 = net.loss([[x]], [[y]], reduction="sum")
    W[0, 0] = W[0, 0] + h
    c1 = net.loss([[x]], [[y]], reduction="sum")
    assert (c1 - c0) / h == pytest.approx(expected, rel=1e-4)
    rows = gb.explain.chain(weights=tuple(w), biases=tuple(b), x=x, y=y)
    for r in rows:
        assert r["product"] == pytest.approx(r["backprop"], rel=1e-12)
        assert r["nudge_ratio"] == pytest.approx(r["backprop"], rel=1e-6, abs=1e-12)


def test_gradcheck_at_statquests_optimum_is_small_and_a_wrong_gradient_is_not():
    """At b3's optimum its gradient is rounding noise on both sides (backprop
    ~1e-15, finite differences ~1e-10): measured against the whole gradient,
    not against itself, that reads small; a bias gradient off by half reads
    large all the same."""
    net = statquest_net(2.609184730096291)
    (_, _), (_, db3) = net.gradients(X, Y, loss="sse", reduction="sum")
    assert abs(db3[0]) < 1e-9
    assert gb.gradcheck(net, X, Y, loss="sse", reduction="sum") < 1e-6
    real = net.gradients

    def wrong(*args, **kwargs):
        grads = real(*args, **kwargs)
        return [grads[0], (grads[1][0], grads[1][1] + 0.5 * np.abs(grads[0][1]).max())]

    net.gradients = wrong
    assert gb.gradcheck(net, X, Y, loss="sse", reduction="sum") > 0.1
