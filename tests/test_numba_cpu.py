"""backends/numba_cpu.py: the compiled epoch gives the trainer loop's numbers.

The reference is Nielsen's loop written with the base class's ops (the NumPy
formulas) and optim.SGD.step, in float64.  Both dtypes compile once per
session; every case after that reuses the compiled epoch.
"""
import concurrent.futures
import dataclasses
import time

import numpy as np
import pytest
from reference import rel_err

import gpubackprop as gb
from gpubackprop import activations, losses
from gpubackprop.backends.base import Backend, Hyper
from gpubackprop.backends import numba_cpu_blocks as blocks
from gpubackprop.backends import numba_cpu
from gpubackprop.backends.numba_cpu import NumbaCPUBackend
from gpubackprop.optim import SGD

CPU = gb.device("cpu")
TOL = {np.float64: 1e-12, np.float32: 1e-5}


def problem(sizes, n, seed, dtype=np.float64):
    """Random parameters (W, b), inputs X and one-hot targets Y, never zeros."""
    rng = np.random.default_rng(seed)
    params = [(rng.normal(0, 1 / np.sqrt(i), (o, i)), rng.normal(0, 0.5, o))
              for i, o in zip(sizes, sizes[1:])]
    X = rng.normal(size=(n, sizes[0]))
    Y = np.eye(sizes[-1])[rng.integers(0, sizes[-1], n)]
    order = rng.permutation(n)
    cast = [(W.astype(dtype), b.astype(dtype)) for W, b in params]
    return cast, X.astype(dtype), Y.astype(dtype), order


def reference(params, X, Y, order, hyper):
    """The trainer's loop on the float64 NumPy reference: (params, costs, n_correct)."""
    p = [(W.astype(np.float64), b.astype(np.float64)) for W, b in params]
    X, Y = X.astype(np.float64), Y.astype(np.float64)
    opt = SGD(hyper.lr, hyper.momentum, hyper.weight_decay)
    state, be, acts, bs = opt.init_state(p), Backend(CPU), hyper.activations, hyper.batch_size
    costs, correct = [], 0
    for s in range(0, len(order), bs):
        idx = order[s:s + bs]
        a = be.feedforward(p, acts, X[idx])
        costs.append(float(hyper.loss.total(a[-1], Y[idx], acts[-1], np)))
        correct += int((a[-1].argmax(1) == Y[idx].argmax(1)).sum())
        delta = be.backward(p, acts, a, Y[idx], hyper.loss)
        scale = hyper.scale(len(idx), Y.shape[1])
        opt.step(p, [be.weight_gradient(d, ap, scale) for d, ap in zip(delta, a)], state)
    return p, np.array(costs), correct


def fused(params, X, Y, order, hyper, backend=None):
    """train_epoch on copies: (params, step_costs, n_correct, bad_step)."""
    backend = backend or NumbaCPUBackend(CPU)
    p = [(W.copy(), b.copy()) for W, b in params]
    state = SGD(hyper.lr, hyper.momentum, hyper.weight_decay).init_state(p)
    assert backend.fuses(hyper)
    costs, correct, bad = backend.train_epoch(p, state, X, Y, order, hyper)
    return p, costs, correct, bad


def params_err(p, ref):
    return max(max(rel_err(W, W0), rel_err(b, b0)) for (W, b), (W0, b0) in zip(p, ref))


H = activations.HIDDEN_NAMES
# (sizes, hidden activation, loss, output activation): every hidden activation,
# every loss with each output it takes, depths 1 to 4, odd widths 1, 7, 33
CASES = [
    ([7, 3], None, "sse", "sigmoid"),
    ([33, 7], None, "cross_entropy", "softmax"),
    ([7, 1], None, "mse", "identity"),
    ([5, 33, 4], H[0], "cross_entropy", "identity"),
    ([5, 7, 4], H[1], "mse", "softmax"),
    ([1, 7, 33, 3], H[2], "sse", "tanh"),
    ([6, 33, 7, 4], H[3], "sse", "relu"),
    ([6, 7, 1, 7, 4], H[4], "cross_entropy", "softmax"),
    ([6, 9, 8, 7, 5], H[5], "sse", "softplus"),
    ([6, 7, 4], H[1], "mse", "leaky_relu"),
]


@pytest.mark.parametrize("momentum", [0.8, 0.0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("sizes,hidden,loss,out", CASES)
def test_train_epoch_matches_the_loop(sizes, hidden, loss, out, dtype, momentum):
    """Momentum (or none: the update folded into the gradient GEMMs), weight
    decay, a ragged last batch (23 rows, batch 4)."""
    params, X, Y, order = problem(sizes, 23, len(sizes) * 10 + len(str(hidden)), dtype)
    acts = (hidden,) * (len(sizes) - 2) + (out,)
    hyper = Hyper(acts, losses.get(loss), 4, lr=0.3, momentum=momentum, weight_decay=0.01)
    p, costs, correct, bad = fused(params, X, Y, order, hyper)
    ref, ref_costs, ref_correct = reference(params, X, Y, order, hyper)
    assert bad == -1 and correct == ref_correct
    assert all(W.dtype == dtype for W, _ in p)
    assert params_err(p, ref) <= TOL[dtype]
    assert rel_err(costs, ref_costs) <= TOL[dtype]


@pytest.mark.parametrize("momentum,weight_decay,reduction,bs", [
    (0.0, 0.0, "mean", 1), (0.9, 0.0, "sum", 5), (0.0, 0.05, "mean", 23)])
def test_update_variants(momentum, weight_decay, reduction, bs):
    """Plain SGD, momentum alone, weight decay alone; batch 1 and the whole set."""
    params, X, Y, order = problem([8, 6, 3], 23, 1)
    hyper = Hyper(("tanh", "sigmoid"), losses.get("sse", reduction), bs, 0.2,
                  momentum, weight_decay)
    p, costs, _, _ = fused(params, X, Y, order, hyper)
    ref, ref_costs, _ = reference(params, X, Y, order, hyper)
    assert params_err(p, ref) <= 1e-12 and rel_err(costs, ref_costs) <= 1e-12


def test_an_epoch_in_parts_has_the_same_bits():
    """The trainer may split an epoch into runs of steps (progress, checkpoints)."""
    params, X, Y, order = problem([9, 8, 4], 40, 2, np.float32)
    hyper = Hyper(("relu", "softmax"), losses.get("cross_entropy"), 6, 0.1, 0.9, 0.01)
    whole, costs, correct, _ = fused(params, X, Y, order, hyper)
    be = NumbaCPUBackend(CPU)
    p = [(W.copy(), b.copy()) for W, b in params]
    state = SGD(0.1, 0.9, 0.01).init_state(p)
    parts = [be.train_epoch(p, state, X, Y, order[a:b], hyper) for a, b in ((0, 12), (12, 40))]
    assert all(np.array_equal(W, W0) and np.array_equal(b, b0)
               for (W, b), (W0, b0) in zip(p, whole))
    assert np.array_equal(np.concatenate([c for c, _, _ in parts]), costs)
    assert sum(n for _, n, _ in parts) == correct


def test_divergence_stops_before_the_bad_step():
    params, X, Y, order = problem([4, 5, 3], 30, 3)
    hyper = Hyper(("identity", "identity"), losses.get("sse"), 3, 1e150)
    p, costs, _, bad = fused(params, X, Y, order, hyper)
    assert bad > 0 and np.isfinite(costs[:bad]).all() and not np.isfinite(costs[bad])
    ref, _, _ = reference(params, X, Y, order[:bad * 3], hyper)   # the steps before it
    assert params_err(p, ref) <= 1e-12


def test_threads_option_and_contract():
    params, X, Y, order = problem([7, 5, 3], 20, 4)
    hyper = Hyper(("sigmoid", "sigmoid"), losses.get("sse"), 4, 0.5)
    one = fused(params, X, Y, order, hyper, NumbaCPUBackend(CPU, threads=1))[0]
    ref = reference(params, X, Y, order, hyper)[0]
    assert params_err(one, ref) <= 1e-12
    with pytest.raises(ValueError, match="threads"):
        NumbaCPUBackend(CPU, threads=0)
    with pytest.raises(TypeError, match="threads"):
        NumbaCPUBackend(CPU, threads="2")
    be = NumbaCPUBackend(CPU)
    assert NumbaCPUBackend.unavailable_reason(CPU) is None
    assert be.name == "numba" and be.device_kinds == ("cpu",)
    with pytest.raises(ValueError, match="float32 or float64"):
        be.check_network([3, 2], ("sigmoid",), np.float16)
    with pytest.raises(ValueError, match="C-contiguous"):
        be.train_epoch([(np.asfortranarray(params[0][0]), params[0][1])], None, X, Y, order,
                       Hyper(("sigmoid",), losses.get("sse"), 4, 0.5))


def test_trainer_fit_runs_the_compiled_epoch_with_the_loop_numbers():
    """Public API: MLP(backend="numba") + Trainer.fit against backend="numpy"."""
    _, X, Y, _ = problem([10, 3], 50, 5)
    history = {}
    for backend in ("numpy", "numba"):
        net = gb.MLP.from_sizes([10, 12, 3], activation="tanh", output_activation="softmax",
                                backend=backend, seed=1)
        opt = gb.SGD(lr=0.2, momentum=0.9, weight_decay=1e-3)
        trainer = gb.Trainer(net, loss="cross_entropy", optimizer=opt, batch_size=7, seed=2)
        history[backend] = (trainer.fit(X, Y, epochs=2, progress=False), net)
    (h0, n0), (h1, n1) = history["numpy"], history["numba"]
    assert n1.backend.name == "numba"
    assert params_err(n1.params, n0.params) <= 1e-12
    assert rel_err(np.array(h1.loss), np.array(h0.loss)) <= 1e-12
    assert h1.accuracy == h0.accuracy


def test_fuses_says_where_the_epoch_can_run_not_where_it_wins():
    """fuses() is about what the epoch can run, at any size; which path is
    faster is measured by the trainer (autotune.py, tests/test_autotune.py)."""
    be = NumbaCPUBackend(CPU)

    def hyper(sizes, batch, loss="sse"):
        return Hyper(("relu",) * (len(sizes) - 1), losses.get(loss), batch, 0.1,
                     sizes=tuple(sizes))

    assert be.fuses(hyper([784, 30, 10], 10))
    assert be.fuses(hyper([64] * 6 + [10], 65536))
    assert not be.fuses(Hyper(("relu", "unknown"), losses.get("sse"), 10, 0.1, sizes=(3, 4, 2)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("hidden", H)
@pytest.mark.parametrize("loss,out", [("sse", "sigmoid"), ("cross_entropy", "identity"),
                                      ("cross_entropy", "softmax"), ("mse", "tanh")])
def test_the_loops_ops_match_the_numpy_reference(dtype, hidden, loss, out, monkeypatch):
    """The four ops as the trainer's loop calls them (into the workspace's
    buffers: the compiled passes between NumPy's GEMMs, here at every size)
    against the float64 NumPy formulas; 2,100 rows, so the column sums add
    three blocks."""
    monkeypatch.setattr(numba_cpu, "COMPILED_OPS_MIN", 0)
    sizes, B = [6, 9, 7, 4], 2 * blocks.COLUMN_BLOCK + 52
    params, X, Y, _ = problem(sizes, B, len(hidden) + len(out), dtype)
    acts, loss = (hidden, hidden, out), losses.get(loss)
    be, ref = NumbaCPUBackend(CPU), Backend(CPU)
    p64 = [(W.astype(np.float64), b.astype(np.float64)) for W, b in params]
    ws = be.workspace(sizes, B, dtype)
    x, y, a_out, delta_out = ws.rows(B)
    x[...], y[...] = X, Y
    a = be.feedforward(params, acts, x, out=a_out)
    a_ref = ref.feedforward(p64, acts, X.astype(np.float64))
    delta = be.backward(params, acts, a, y, loss, out=delta_out)
    delta_ref = ref.backward(p64, acts, a_ref, Y.astype(np.float64), loss)
    grads = [be.weight_gradient(d, ap, 1 / B, dW=dW, db=db)
             for d, ap, (dW, db) in zip(delta, a, ws.grads)]
    grads_ref = [ref.weight_gradient(d, ap, 1 / B) for d, ap in zip(delta_ref, a_ref)]
    tol = 10 * TOL[dtype]
    for got, want in zip(a[1:] + delta, a_ref[1:] + delta_ref):
        assert got.dtype == dtype and rel_err(got, want) <= tol
    for (dW, db), (dW0, db0) in zip(grads, grads_ref):
        assert rel_err(dW, dW0) <= tol and rel_err(db, db0) <= tol
    assert all(g is b for g, b in zip(a[1:], a_out))        # written where it was asked


@pytest.mark.parametrize("compiled_from", [0, 2 ** 30])
def test_the_ops_give_the_same_bits_with_or_without_buffers(compiled_from, monkeypatch):
    """net.forward, gradcheck and a reference written with the ops (no
    buffers) get the bits of the trainer's loop (into its buffers), with the
    compiled passes and with NumPy's (arrays under COMPILED_OPS_MIN)."""
    monkeypatch.setattr(numba_cpu, "COMPILED_OPS_MIN", compiled_from)
    params, X, Y, _ = problem([5, 7, 3], 11, 4, np.float32)
    be, acts, loss = NumbaCPUBackend(CPU), ("tanh", "softmax"), losses.get("cross_entropy")
    a = be.feedforward(params, acts, X)
    d = be.backward(params, acts, a, Y, loss)
    g = [be.weight_gradient(dl, ap, 0.5) for dl, ap in zip(d, a)]
    ws = be.workspace([5, 7, 3], 11, np.float32)
    x, y, a_out, d_out = ws.rows(11)
    x[...], y[...] = X, Y
    a2 = be.feedforward(params, acts, x, out=a_out)
    d2 = be.backward(params, acts, a2, y, loss, out=d_out)
    g2 = [be.weight_gradient(dl, ap, 0.5, dW=dW, db=db)
          for dl, ap, (dW, db) in zip(d2, a2, ws.grads)]
    for u, v in zip(a + d + [t for pair in g for t in pair], a2 + d2 + [t for p in g2 for t in p]):
        assert u.dtype == np.float32 and np.array_equal(u, v)
    if compiled_from:                # small arrays: the base class's NumPy ops, bit for bit
        a_ref = Backend(CPU).feedforward(params, acts, X)
        assert all(np.array_equal(u, v) for u, v in zip(a, a_ref))


def test_an_epoch_over_column_blocks_matches_the_loop():
    """A batch of more than COLUMN_BLOCK rows: the compiled epoch's blocked
    column sums against the float64 loop."""
    B = blocks.COLUMN_BLOCK + 77
    params, X, Y, order = problem([5, 6, 3], 2 * B + 9, 3, np.float32)
    hyper = Hyper(("relu", "softmax"), losses.get("cross_entropy"), B, 0.3, momentum=0.5)
    p, costs, _, _ = fused(params, X, Y, order, hyper)
    ref, ref_costs, _ = reference(params, X, Y, order, hyper)
    assert params_err(p, ref) <= 1e-5 and rel_err(costs, ref_costs) <= 1e-5


SPLIT_B = 3 * blocks.COLUMN_BLOCK + 77      # three parts of 1049-1050 rows, two blocks each


def split_problem(dtype, lr=0.3):
    params, X, Y, order = problem([5, 6, 3], 2 * SPLIT_B + 9, 3, dtype)
    hyper = Hyper(("tanh", "softmax"), losses.get("cross_entropy"), SPLIT_B, lr, momentum=0.5,
                  weight_decay=1e-3)
    return params, X, Y, order, hyper


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_step_split_over_threads_matches_the_loop(dtype):
    """threads=3: each full step's rows run as three parts on three threads,
    their gradient sums added in part order; the last, short step (9 rows)
    runs whole.  Against the float64 loop and one thread."""
    params, X, Y, order, hyper = split_problem(dtype)
    split = NumbaCPUBackend(CPU, threads=3)
    assert split._parts(SPLIT_B) == 3 and split._parts(2 * numba_cpu.PART_ROWS - 1) == 1
    p, costs, correct, bad = fused(params, X, Y, order, hyper, split)
    ref, ref_costs, ref_correct = reference(params, X, Y, order, hyper)
    assert bad == -1 and all(W.dtype == dtype for W, _ in p)
    assert params_err(p, ref) <= 10 * TOL[dtype] and rel_err(costs, ref_costs) <= 10 * TOL[dtype]
    assert abs(correct - ref_correct) <= (0 if dtype == np.float64 else 2)
    one, one_costs, _, _ = fused(params, X, Y, order, hyper, NumbaCPUBackend(CPU, threads=1))
    assert params_err(p, one) <= 10 * TOL[dtype] and rel_err(costs, one_costs) <= 10 * TOL[dtype]


def test_split_steps_have_the_same_bits_whichever_part_finishes_first(monkeypatch):
    """The parts' sums are added in part order: running the other parts to
    the end before part 0 starts gives the same bits as running them at once."""
    params, X, Y, order, hyper = split_problem(np.float32)
    first = fused(params, X, Y, order, hyper, NumbaCPUBackend(CPU, threads=3))

    class Before:                      # submit() runs the part at once, before part 0
        def submit(self, fn, *args):
            done = concurrent.futures.Future()
            done.set_result(fn(*args))
            return done

    monkeypatch.setattr(numba_cpu, "thread_pool", lambda workers: Before())
    again = fused(params, X, Y, order, hyper, NumbaCPUBackend(CPU, threads=3))
    assert all(np.array_equal(W, W0) and np.array_equal(b, b0)
               for (W, b), (W0, b0) in zip(first[0], again[0]))
    assert np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_split_steps_after_another_batch_size_use_this_runs_buffers():
    """The same backend trains batch 3,149 after batch 2,100 (another
    workspace, the same layer shapes): the bits of a fresh backend's run."""
    params, X, Y, order, hyper = split_problem(np.float32)
    split = NumbaCPUBackend(CPU, threads=3)
    fused(params, X, Y, order, dataclasses.replace(hyper, batch_size=2100), split)
    again = fused(params, X, Y, order, hyper, split)
    fresh = fused(params, X, Y, order, hyper, NumbaCPUBackend(CPU, threads=3))
    assert all(np.array_equal(W, W0) and np.array_equal(b, b0)
               for (W, b), (W0, b0) in zip(again[0], fresh[0]))


@pytest.mark.parametrize("threads", [1, 2])
def test_wide_layers_run_whole_parts_with_the_loop_numbers(threads):
    """A layer of 300 float32 inputs: a block of 1,024 rows would not fit
    BLOCK_BYTES, so each part runs whole (its column sums in blocks of
    COLUMN_BLOCK all the same); against the float64 loop."""
    assert 300 * blocks.COLUMN_BLOCK * 4 > numba_cpu.BLOCK_BYTES
    params, X, Y, order = problem([300, 7, 3], 2 * 1101 + 9, 5, np.float32)
    hyper = Hyper(("relu", "softmax"), losses.get("cross_entropy"), 1101, 0.2, momentum=0.5)
    p, costs, _, bad = fused(params, X, Y, order, hyper, NumbaCPUBackend(CPU, threads=threads))
    ref, ref_costs, _ = reference(params, X, Y, order, hyper)
    assert bad == -1 and params_err(p, ref) <= 1e-5 and rel_err(costs, ref_costs) <= 1e-5


def test_split_steps_stop_before_the_bad_step():
    """A non-finite cost in any part of the second step: no update from it."""
    params, X, Y, order, hyper = split_problem(np.float64)
    X[order[SPLIT_B + 2 * SPLIT_B // 3 + 5]] = np.inf     # the second step's third part
    split = NumbaCPUBackend(CPU, threads=3)
    p, costs, _, bad = fused(params, X, Y, order, hyper, split)
    assert bad == 1 and np.isfinite(costs[0]) and not np.isfinite(costs[1])
    one_step = fused(params, X, Y, order[:SPLIT_B], hyper, split)[0]
    assert all(np.array_equal(W, W0) for (W, _), (W0, _) in zip(p, one_step))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("B, K, N", [(1, 1, 1), (1, 784, 30), (10, 784, 30), (7, 33, 5),
                                     (2, 3, 1), (3, 1, 2), (11, 64, 9), (4, 8, 4), (5, 2, 6),
                                     (9, 16, 13)])
def test_the_small_step_gemm_matches_numpy(dtype, B, K, N):
    """_matmul_nt (the compiled epoch's forward GEMM below SMALL_GEMM
    multiply-adds) against NumPy in float64, odd shapes, every row and column."""
    rng = np.random.default_rng(B * K * N)
    x, W = rng.normal(size=(B, K)).astype(dtype), rng.normal(size=(N, K)).astype(dtype)
    z = np.full((B, N), np.nan, dtype)
    blocks._matmul_nt(x, W, z)
    assert B * K * N < blocks.SMALL_GEMM
    assert rel_err(z, x.astype(np.float64) @ W.T.astype(np.float64)) <= TOL[dtype]


def test_a_cached_epoch_knows_the_table_and_the_blocks_it_was_built_from():
    """The compiled code returns _TABLE_HASH; it names the activation table
    and numba_cpu_blocks.py's source, so an edit of either is recompiled."""
    from gpubackprop.backends import numba_cpu_kernels as kernels

    kernels.use_table()
    assert kernels._TABLE_HASH == activations.fingerprint() ^ blocks.SOURCE_HASH
    assert blocks.SOURCE_HASH and activations.fingerprint() != kernels._TABLE_HASH


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_split_steps_run_in_a_forked_child():
    """The parts' thread pool is made anew in a child forked after a split
    step (its threads are not copied by fork): the child's epoch finishes."""
    import os

    params, X, Y, order, hyper = split_problem(np.float64)
    before = fused(params, X, Y, order, hyper, NumbaCPUBackend(CPU, threads=2))
    pid = os.fork()
    if pid == 0:                                   # the child: exit 0 if the bits agree
        try:
            again = fused(params, X, Y, order, hyper, NumbaCPUBackend(CPU, threads=2))
            same = all(np.array_equal(W, W0) for (W, _), (W0, _) in zip(before[0], again[0]))
            os._exit(0 if same else 1)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + 60              # a child stuck on a dead pool: killed
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's split epoch did not finish in 60 s")
    assert os.waitstatus_to_exitcode(done[1]) == 0

