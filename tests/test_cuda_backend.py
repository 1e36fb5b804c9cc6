"""The `cuda` backend (the CUDA C kernels through the launch seam) on the
cuda-emulator, and on a GPU when there is one, against the float64 NumPy
reference: the four ops, and training (train_epoch, the loop with the update
fused into weight_update.cu) with momentum, weight decay, a ragged last batch,
sse / mse / cross entropy, depths 1 to 4.
"""
import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import losses
from gpubackprop.backends.base import Hyper
from gpubackprop.backends.cuda_backend import CudaBackend
from gpubackprop.optim import SGD

from emulated import TOL, forward_ref, host as _host, needs_emulator, problem, reference_epoch, \
    run_train_epoch
from emulated import dev  # noqa: F401  (the device fixture)
from reference import rel_err



# sizes, activations, loss, batch size, rows (a ragged last batch in every case)
CASES = [
    ([7, 5], ("sigmoid",), "sse", 4, 10),
    ([33, 17, 4], ("tanh", "softmax"), "cross_entropy", 16, 70),
    ([20, 9, 65, 3], ("relu", "softplus", "identity"), "mse", 32, 100),
    ([13, 8, 7, 6, 5], ("leaky_relu", "tanh", "sigmoid", "identity"), "cross_entropy", 300, 301),
    ([129, 65, 1], ("tanh", "sigmoid"), "sse", 1, 7),
]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", CASES, ids=[f"depth{len(c[0]) - 1}-{c[2]}" for c in CASES])
def test_train_epoch_matches_the_numpy_loop(dev, case, dtype):
    sizes, acts, loss, bs, n = case
    params, X, Y = problem(sizes, n, dtype, seed=len(sizes))
    hyper = Hyper(acts, losses.get(loss), bs, lr=0.2, momentum=0.9, weight_decay=1e-3)
    order = np.random.default_rng(1).permutation(n)
    ref, ref_costs, ref_correct = reference_epoch(params, X, Y, order, hyper)
    p, (costs, correct, bad) = run_train_epoch(CudaBackend(dev), dev, params, X, Y, order, hyper)
    for (W, b), (W0, b0) in zip(p, ref):
        assert rel_err(W, W0) <= TOL[dtype] and rel_err(b, b0) <= TOL[dtype]
    assert rel_err(costs, ref_costs) <= TOL[dtype]
    assert int(bad) == -1
    if dtype == "float64":
        assert int(correct) == ref_correct


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ops_match_the_reference(dev, dtype):
    be = CudaBackend(dev)
    params, X, Y = problem([65, 33, 7], 129, dtype, seed=3)
    (W, b), (W2, b2) = params
    a1 = be.dense_forward(dev.asarray(X), dev.asarray(W), dev.asarray(b), "softplus")
    assert rel_err(_host(a1), forward_ref(X, W, b, "softplus")) <= TOL[dtype]
    a2 = be.dense_forward(a1, dev.asarray(W2), dev.asarray(b2), "softmax")
    ref2 = forward_ref(forward_ref(X, W, b, "softplus"), W2, b2, "softmax")
    assert rel_err(_host(a2), ref2) <= TOL[dtype]
    out = dev.asarray(np.empty((129, 7), dtype=dtype)).T.copy().T      # not C-contiguous
    assert be.dense_forward(a1, dev.asarray(W2), dev.asarray(b2), "softmax", out=out) is out
    assert rel_err(_host(out), ref2) <= TOL[dtype]
    cost = losses.get("sse")
    delta = be.output_delta(a2, dev.asarray(Y), cost, "sigmoid")
    a2h = _host(a2).astype(np.float64)
    assert rel_err(_host(delta), 2 * (a2h - Y) * a2h * (1 - a2h)) <= TOL[dtype]
    dW, db = be.weight_gradient(delta, a1, 0.5)
    a1h = _host(a1).astype(np.float64)
    dh = _host(delta).astype(np.float64)
    assert rel_err(_host(dW), 0.5 * dh.T @ a1h) <= TOL[dtype]
    assert rel_err(_host(db), 0.5 * dh.sum(0)) <= TOL[dtype]


def test_tf32_option_runs_the_tensor_core_kernel(dev):
    be = CudaBackend(dev, tf32=True)
    params, X, _ = problem([65, 33], 40, "float32", seed=4)
    (W, b), = params
    a = _host(be.dense_forward(dev.asarray(X), dev.asarray(W), dev.asarray(b), "identity"))
    exact = forward_ref(X, W, b, "identity")
    assert 1e-6 < rel_err(a, exact) <= 2e-2       # rounded to TF32, not the FP32 kernel
    with pytest.raises(TypeError, match="tf32 must be True or False"):
        CudaBackend(dev, tf32="yes")


def test_refuses_other_devices():
    with pytest.raises(ValueError, match="cuda or cuda-emulator"):
        CudaBackend(gb.device("cpu"))
    assert "cuda or cuda-emulator" in CudaBackend.unavailable_reason(gb.device("cpu"))


@pytest.mark.parametrize("backend", ["cuda", "fused"])
@pytest.mark.parametrize("sizes", [[20, 6], [20, 17, 6], [20, 9, 8, 7, 6]],
                         ids=["depth1", "depth2", "depth4"])
@pytest.mark.parametrize("dtype,loss,momentum", [("float64", "sse", 0.9),
                                                 ("float32", "cross_entropy", 0.0)])
def test_trainer_fit_matches_the_numpy_backend(dev, backend, sizes, dtype, loss, momentum):
    """gb.Trainer(...).fit on the device vs the numpy backend on the CPU, same seed:
    the whole path (MLP, Trainer, the backend's fused train_epoch) for 2 epochs
    of 75 rows in batches of 16 (a ragged last batch), weight decay 1e-3."""
    out_act = "softmax" if loss == "cross_entropy" else "sigmoid"
    _, X, Y = problem(sizes, 75, dtype, seed=11)
    nets = [gb.MLP.from_sizes(sizes, activation="tanh", output_activation=out_act, dtype=dtype,
                              seed=3, device=d, backend=b)
            for d, b in ((dev, backend), ("cpu", "numpy"))]
    be, calls = nets[0].backend, []
    fast = be.train_epoch
    be.train_epoch = lambda *args: calls.append(len(args[4])) or fast(*args)
    hists = [gb.Trainer(net, loss=loss, optimizer=gb.SGD(lr=0.3, momentum=momentum,
                                                         weight_decay=1e-3),
                        batch_size=16, seed=5).fit(X, Y, epochs=2) for net in nets]
    assert nets[0].backend.name == backend and calls == [75, 75]    # the fused path ran
    for got, ref in zip(nets[0].params, nets[1].params):
        for g, r in zip(got, ref):
            assert rel_err(_host(g), np.asarray(r, dtype=np.float64)) <= TOL[dtype]
    assert len(hists[0].records) == len(hists[1].records) == 2


@pytest.mark.parametrize("backend", ["cuda", "fused"])
def test_cli_gradcheck_on_the_emulator(backend, capsys):
    from gpubackprop.cli import main

    if needs_emulator.args[0]:
        pytest.skip(needs_emulator.kwargs["reason"])
    assert main(["gradcheck", "--device", "cuda-emulator", "--backend", backend,
                 "--layers", "6,5,3"]) == 0
    out = capsys.readouterr().out
    assert f"{backend} backend on cuda-emulator" in out and "PASS" in out


def test_tf32_build_failure_falls_back_to_fp32_with_one_warning(dev, monkeypatch):
    be = CudaBackend(dev, tf32=True)
    real = be._kernel

    def refuse_tf32(file, dtype, name, include_dirs=()):
        if "tf32" in file:
            raise RuntimeError('catastrophic error: cannot open source file "crt/mma.h"')
        return real(file, dtype, name, include_dirs)

    monkeypatch.setattr(be, "_kernel", refuse_tf32)
    params, X, _ = problem([65, 33], 40, "float32", seed=4)
    (W, b), = params
    with pytest.warns(RuntimeWarning, match="crt/mma.h.*FP32 kernel"):
        a = be.dense_forward(dev.asarray(X), dev.asarray(W), dev.asarray(b), "identity")
    assert rel_err(_host(a), forward_ref(X, W, b, "identity")) <= TOL["float32"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # the warning comes once
        be.dense_forward(dev.asarray(X), dev.asarray(W), dev.asarray(b), "identity")


def test_info_names_the_emulators_compiler(capsys):
    from gpubackprop.cli import main
    from gpubackprop.device import emulator_status

    assert main(["info"]) == 0
    compiler, why_not = emulator_status()
    line = [ln for ln in capsys.readouterr().out.splitlines() if "cuda-emulator:" in ln]
    assert line == [f"  cuda-emulator: {f'builds with {compiler}' if compiler else why_not}"]


def test_a_registered_activation_without_cuda_c_takes_the_xp_formulas(dev):
    """activations.register adds rows the kernels do not know: the cuda backend
    runs them with the xp formulas (never as the kernels' default branch), the
    fused backend refuses them."""
    from gpubackprop import activations
    from gpubackprop.activations import Activation
    from gpubackprop.backends.fused_backend import FusedBackend

    activations.register(Activation("softsign", 99, lambda z: z / (1 + abs(z)),
                                    lambda a: (1 - abs(a)) ** 2))
    try:
        sizes, acts = [9, 7, 3], ("softsign", "sigmoid")
        params, X, Y = problem(sizes, 40, "float64", seed=8)
        hyper = Hyper(acts, losses.get("sse"), 16, lr=0.3, momentum=0.5)
        order = np.random.default_rng(0).permutation(40)
        ref, _, _ = reference_epoch(params, X, Y, order, hyper)
        p = [(dev.asarray(W), dev.asarray(b)) for W, b in params]
        CudaBackend(dev).train_epoch(p, SGD(0.3, 0.5).init_state(p), dev.asarray(X),
                                     dev.asarray(Y), dev.asarray(order), hyper)
        for (W, b), (W0, b0) in zip(p, ref):
            assert rel_err(_host(W), W0) <= TOL["float64"] and rel_err(_host(b), b0) <= 1e-12
        with pytest.raises(ValueError, match="activation 'softsign'"):
            FusedBackend(dev).check_network(sizes, acts, "float64")
    finally:
        activations.unregister("softsign")
