"""The numba.cuda kernels (kernels/numba_kernels.py) and the numba backend,
run under the CUDA simulator on NumPy arrays, against the float64 NumPy
reference backend.

Tiny odd shapes (1, 3, 7, 17, 33) so every edge-tile path (zero-filled
loads, guarded stores) runs; every activation code; float32 and float64;
random data, never zeros.  Errors are relative, in the Frobenius norm:
< 1e-5 for float32, < 1e-12 for float64.

The simulator executes the same Python source that numba compiles for the
GPU, so this checks the kernels' indexing and math, not their speed, and not
the compiled code (see tests/test_gpu_backends.py for that, on a GPU).
"""
import functools

import numpy as np
import pytest

from gpubackprop import activations
from gpubackprop.backends.numba_cuda import NumbaCudaBackend, numba_kernels, simulator_active
from gpubackprop.backends.numpy_backend import NumpyBackend
from gpubackprop.device import Device
from gpubackprop.losses import Loss
from gpubackprop.optim import SGD
from reference import rel_err

if not simulator_active():
    pytest.skip("numba.cuda runs the real CUDA target in this process (imported before "
                "tests/sim/conftest.py could turn on the simulator, or left on for the GPU "
                "tests of this run); run `pytest tests/sim` as its own invocation",
                allow_module_level=True)

from numba import cuda  # noqa: E402  (the simulator, checked above)

nk = numba_kernels()

DTYPES = (np.float32, np.float64)
TOL = {np.float32: 1e-5, np.float64: 1e-12}
ACTS = activations.HIDDEN_NAMES          # every element-wise activation
# (M, K, N): batch, inner, output; each of 1, 3, 7, 17, 33 in every position
SHAPES = ((1, 1, 1), (3, 7, 17), (17, 33, 3), (33, 17, 7), (7, 3, 33))

CPU = Device("cpu")
REF = NumpyBackend(CPU)

def rand(rng, shape, dtype, scale=1.0):
    """Random normal entries, bounded away from zero."""
    x = rng.standard_normal(shape)
    x = np.where(np.abs(x) < 0.05, 0.05 * np.sign(x) + (x == 0) * 0.05, x)
    return (scale * x).astype(dtype)


def activations_of(rng, name, shape, dtype):
    """A plausible stored activation a = sigma(z) of layer `name`."""
    z = rand(rng, shape, np.float64)
    return activations.apply(name, z, np).astype(dtype)


def test_running_in_the_simulator():
    assert simulator_active()
    assert cuda.is_available()


@pytest.mark.parametrize("dtype", DTYPES)
def test_launch_shapes_follow_the_tile_table(dtype):
    from gpubackprop.kernels import BIAS_ROWS, GEMM_TILES

    k, t = nk.kernels(dtype), GEMM_TILES[np.dtype(dtype).name]
    assert k.threads == (t["TILE_M"] // t["THREAD_M"]) * (t["TILE_N"] // t["THREAD_N"])
    assert k.gemm_grid(t["TILE_M"] + 1, 1) == (2, 1)
    assert k.bias_block == (32, BIAS_ROWS)


# ---- the activation device functions ------------------------------------------

@functools.lru_cache(maxsize=None)
def _act_kernel(dtype):
    k = nk.kernels(dtype)
    sigma, dsigma = k.sigma, k.dsigma_from_a

    @cuda.jit
    def apply(z, code, a, d):
        i = cuda.grid(1)
        if i < z.shape[0]:
            a[i] = sigma(code, z[i])
            d[i] = dsigma(code, a[i])

    return apply


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ACTS)
def test_activation_device_functions(name, dtype):
    rng = np.random.default_rng(activations.CODES[name])
    extremes = np.array([-80.0, -30.0, -12.0, -1e-3, 1e-3, 12.0, 30.0, 80.0])
    z = np.concatenate([extremes, rand(rng, 56, np.float64, 3.0)]).astype(dtype)
    a = np.empty_like(z)
    d = np.empty_like(z)
    _act_kernel(np.dtype(dtype))[1, z.size](z, activations.CODES[name], a, d)
    z64 = z.astype(np.float64)
    a_ref = activations.apply(name, z64[None, :], np)[0]
    if name == "sigmoid":
        # activations.apply's tanh form is exact only in absolute terms: for
        # z < -20 it loses relative precision (0 at z = -80); compare with
        # the exact value, which the kernel's e^-|z| form attains
        e = np.exp(-np.abs(z64))
        a_ref = np.where(z64 >= 0, 1 / (1 + e), e / (1 + e))
    np.testing.assert_allclose(a, a_ref, rtol=TOL[dtype], atol=1e-300)
    # sigma' from the kernel's own a (from a saturated a, 1 - a^2 has no digits
    # left); sigma' is O(1) and 1 - a*a cancels in the kernel's precision, so
    # the check is relative plus a few ulps of 1
    d_ref = activations.derivative(name, a.astype(np.float64), np)
    np.testing.assert_allclose(d, d_ref, rtol=TOL[dtype], atol=8 * np.finfo(dtype).eps)


# ---- the three kernels --------------------------------------------------------------

def _case(i):
    return SHAPES[i % len(SHAPES)]


FORWARD_CASES = [(name, dt, _case(i + j)) for i, name in enumerate(ACTS)
                 for j, dt in enumerate(DTYPES)]
SHAPE_CASES = [(s, dt) for s in SHAPES for dt in DTYPES]


def _ids(case):
    return "x".join(map(str, case)) if isinstance(case, tuple) else getattr(case, "__name__", str(case))


def check_forward(name, dtype, shape, seed):
    M, K, N = shape
    rng = np.random.default_rng(seed)
    a_prev = rand(rng, (M, K), dtype)
    W = rand(rng, (N, K), dtype, 0.5)
    b = rand(rng, (N,), dtype)
    out = np.full((M, N), np.nan, dtype)
    k = nk.kernels(dtype)
    k.dense_forward[k.gemm_grid(M, N), k.threads](a_prev, W, b, out, activations.CODES[name])
    ref = REF.dense_forward(a_prev.astype(np.float64), W.astype(np.float64),
                            b.astype(np.float64), name)
    assert np.isfinite(out).all(), "an output element was not written"
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("name,dtype,shape", FORWARD_CASES, ids=_ids)
def test_dense_forward_every_activation(name, dtype, shape):
    check_forward(name, dtype, shape, seed=1)


@pytest.mark.parametrize("shape,dtype", SHAPE_CASES, ids=_ids)
def test_dense_forward_odd_shapes(shape, dtype):
    check_forward("sigmoid", dtype, shape, seed=2)


def check_delta(name, dtype, shape, seed):
    M, K, N = shape          # delta (M, K=n_out), W (K, N=n_in), a_prev (M, N)
    rng = np.random.default_rng(seed)
    delta = rand(rng, (M, K), dtype)
    W = rand(rng, (K, N), dtype, 0.5)
    a_prev = activations_of(rng, name, (M, N), dtype)
    out = np.full((M, N), np.nan, dtype)
    k = nk.kernels(dtype)
    k.delta_propagate[k.gemm_grid(M, N), k.threads](delta, W, a_prev, out,
                                                    activations.CODES[name])
    ref = REF.delta_propagate(delta.astype(np.float64), W.astype(np.float64),
                              a_prev.astype(np.float64), name)
    assert np.isfinite(out).all(), "an output element was not written"
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("name,dtype,shape", FORWARD_CASES, ids=_ids)
def test_delta_propagate_every_activation(name, dtype, shape):
    check_delta(name, dtype, shape, seed=3)


@pytest.mark.parametrize("shape,dtype", SHAPE_CASES, ids=_ids)
def test_delta_propagate_odd_shapes(shape, dtype):
    check_delta("tanh", dtype, shape, seed=4)


def run_update(k, delta, a_prev, W, vW, dW, b, vb, db, scale, lr, momentum, weight_decay,
               mode, chunks):
    """weight_update + bias_update (+ update_reduce) as weight_update.cu's
    launcher runs them, with the batch split into `chunks` ranges.  Arrays a
    mode does not touch are placeholders, never aliases of used ones (the
    simulator copies NumPy arguments back one by one)."""
    B, N, K = delta.shape[0], delta.shape[1], a_prev.shape[1]
    rows = -(-B // chunks)
    chunks = -(-B // rows)
    s = np.dtype(delta.dtype).type
    hyper = (s(scale), s(lr), s(momentum), s(weight_decay), mode)
    part = np.full((chunks, N * K + N), np.nan, delta.dtype) if chunks > 1 \
        else np.empty((1, 1), delta.dtype)
    k.weight_update[k.update_grid(N, K, chunks), k.threads](
        delta, a_prev, W, vW, dW, part, np.int32(rows), *hyper)
    k.bias_update[k.bias_grid(N, chunks), k.bias_block](
        delta, b, vb, db, part, np.int32(rows), *hyper)
    if chunks > 1:
        k.update_reduce[k.reduce_grid(N * K + N), k.reduce_threads](
            part, W, vW, dW, b, vb, db, np.int32(N), np.int32(K), *hyper)
    return chunks


# every shape in one chunk; two of them split in three (the simulator runs a
# block of 256 threads in about a second: few cases)
UPDATE_CASES = [(s, dt, 1) for s, dt in SHAPE_CASES] + [
    ((17, 33, 3), np.float32, 3), ((33, 17, 7), np.float64, 3)]


@pytest.mark.parametrize("shape,dtype,chunks", UPDATE_CASES, ids=_ids)
def test_weight_gradient_kernels(shape, dtype, chunks):
    """Mode GRADIENT, the whole batch in one block row (chunks=1) or split in
    three ranges reduced by update_reduce."""
    B, n_in, n_out = shape
    rng = np.random.default_rng(5)
    delta = rand(rng, (B, n_out), dtype)
    a_prev = rand(rng, (B, n_in), dtype)
    scale = 1.0 / B
    dW = np.full((n_out, n_in), np.nan, dtype)
    db = np.full((n_out,), np.nan, dtype)
    u2, u1 = np.empty((1, 1), dtype), np.empty((1,), dtype)    # W, vW, b, vb
    run_update(nk.kernels(dtype), delta, a_prev, u2, u2, dW, u1, u1, db, scale, 0, 0, 0,
               nk.GRADIENT, chunks)
    dW_ref, db_ref = REF.weight_gradient(delta.astype(np.float64), a_prev.astype(np.float64),
                                         scale)
    assert rel_err(dW, dW_ref) < TOL[dtype]
    assert rel_err(db, db_ref) < TOL[dtype]


SGD_CASES = [  # (shape, dtype, momentum, weight_decay, chunks)
    ((17, 33, 3), np.float32, 0.9, 1e-2, 1),
    ((33, 7, 17), np.float64, 0.9, 1e-2, 2),
    ((3, 17, 33), np.float32, 0.0, 0.0, 1),
    ((7, 3, 1), np.float64, 0.0, 5e-2, 2),
    ((1, 1, 7), np.float64, 0.5, 0.0, 1),
]


@pytest.mark.parametrize("shape,dtype,momentum,weight_decay,chunks", SGD_CASES,
                         ids=lambda v: _ids(v) if isinstance(v, tuple) else str(v))
def test_fused_sgd_update_kernels(shape, dtype, momentum, weight_decay, chunks):
    """Mode SGD of weight_update/bias_update (the twin of weight_update.cu's
    fused update): two steps, so the velocity is read back, against the
    gradient of the reference backend and optim.SGD.step in float64."""
    B, n_in, n_out = shape
    rng = np.random.default_rng(6)
    k = nk.kernels(dtype)
    W, b = rand(rng, (n_out, n_in), dtype), rand(rng, (n_out,), dtype)
    vW = rand(rng, (n_out, n_in), dtype, 0.1) if momentum else np.empty((1, 1), dtype)
    vb = rand(rng, (n_out,), dtype, 0.1) if momentum else np.empty((1,), dtype)
    params64 = [(W.astype(np.float64), b.astype(np.float64))]
    opt = SGD(lr=0.1, momentum=momentum, weight_decay=weight_decay)
    state = opt.init_state(params64)
    if momentum:
        state.velocities = [(vW.astype(np.float64), vb.astype(np.float64))]
    scale = 1.0 / B
    u2, u1 = np.empty((1, 1), dtype), np.empty((1,), dtype)   # dW, db: not written
    for _ in range(2):
        delta, a_prev = rand(rng, (B, n_out), dtype), rand(rng, (B, n_in), dtype)
        run_update(k, delta, a_prev, W, vW, u2, b, vb, u1, scale, opt.lr, momentum,
                   weight_decay, nk.SGD, chunks)
        grads = [REF.weight_gradient(delta.astype(np.float64), a_prev.astype(np.float64),
                                     scale)]
        opt.step(params64, grads, state)
    (W64, b64), = params64
    assert rel_err(W, W64) < TOL[dtype] and rel_err(b, b64) < TOL[dtype]
    if momentum:
        (vW64, vb64), = state.velocities
        assert rel_err(vW, vW64) < TOL[dtype] and rel_err(vb, vb64) < TOL[dtype]


# ---- the backend object in simulator mode ------------------------------------------

def test_backend_simulator_mode_uses_numpy():
    be = NumbaCudaBackend(CPU)
    assert be.simulator and be.xp is np
    assert be.name == "numba" and be.device_kinds == ("cuda",)


def test_backend_refuses_a_cuda_device_in_the_simulator():
    with pytest.raises(RuntimeError, match="simulator"):
        NumbaCudaBackend(Device("cuda", 0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_backend_forward_softmax_and_out(dtype):
    rng = np.random.default_rng(7)
    be = NumbaCudaBackend(CPU)
    a_prev, W, b = rand(rng, (7, 17), dtype), rand(rng, (3, 17), dtype), rand(rng, (3,), dtype)
    f64 = [x.astype(np.float64) for x in (a_prev, W, b)]
    out = np.empty((7, 3), dtype)
    got = be.dense_forward(a_prev, W, b, "softmax", out=out)
    assert got is out
    assert rel_err(out, REF.dense_forward(*f64, "softmax")) < TOL[dtype]
    got = be.dense_forward(a_prev, W, b, "relu")
    assert got.dtype == dtype
    assert rel_err(got, REF.dense_forward(*f64, "relu")) < TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_backend_output_delta_and_gradients(dtype):
    rng = np.random.default_rng(8)
    be = NumbaCudaBackend(CPU)
    B, n_in, n_out = 7, 3, 17
    a = activations_of(rng, "sigmoid", (B, n_out), dtype)
    y = rand(rng, (B, n_out), dtype)
    loss = Loss("sse")
    d = be.output_delta(a, y, loss, "sigmoid")
    d_ref = REF.output_delta(a.astype(np.float64), y.astype(np.float64), loss, "sigmoid")
    assert rel_err(d, d_ref) < TOL[dtype]
    a_prev = rand(rng, (B, n_in), dtype)
    dW = np.empty((n_out, n_in), dtype)
    db = np.empty((n_out,), dtype)
    got = be.weight_gradient(d, a_prev, loss.scale(B, n_out), dW=dW, db=db)
    assert got[0] is dW and got[1] is db
    ref = REF.weight_gradient(d.astype(np.float64), a_prev.astype(np.float64),
                              loss.scale(B, n_out))
    assert rel_err(dW, ref[0]) < TOL[dtype] and rel_err(db, ref[1]) < TOL[dtype]
    W = rand(rng, (n_out, n_in), dtype)
    prev = be.delta_propagate(d, W, a_prev, "identity")
    assert rel_err(prev, d.astype(np.float64) @ W.astype(np.float64)) < TOL[dtype]


def test_backend_splits_a_long_batch_deterministically():
    """256 rows of a 3 -> 7 layer: kernels.update_chunks splits the batch (as
    for weight_update.cu); the result matches the reference and repeats bitwise."""
    from gpubackprop.kernels import update_chunks

    assert update_chunks(256, 7, 3, "float32")[0] == 2
    rng = np.random.default_rng(9)
    be = NumbaCudaBackend(CPU)
    delta, a_prev = rand(rng, (256, 7), np.float32), rand(rng, (256, 3), np.float32)
    first = be.weight_gradient(delta, a_prev, 1 / 256)
    second = be.weight_gradient(delta, a_prev, 1 / 256)
    assert all(np.array_equal(x, y) for x, y in zip(first, second))
    ref = REF.weight_gradient(delta.astype(np.float64), a_prev.astype(np.float64), 1 / 256)
    assert all(rel_err(x, r) < TOL[np.float32] for x, r in zip(first, ref))


def test_backend_composes_a_whole_backward_pass():
    """feedforward + backward + weight_gradient of the base class, run on
    the numba ops, give the reference gradients of a 3-layer network."""
    rng = np.random.default_rng(10)
    be = NumbaCudaBackend(CPU)
    sizes, acts = [7, 17, 5, 3], ("tanh", "softplus", "softmax")
    params = [(rand(rng, (o, i), np.float64, i ** -0.5), rand(rng, (o,), np.float64))
              for i, o in zip(sizes, sizes[1:])]
    x = rand(rng, (9, 7), np.float64)
    y = np.eye(3)[rng.integers(0, 3, 9)]
    loss = Loss("cross_entropy")
    grads = []
    for backend in (be, REF):
        a = backend.feedforward(params, acts, x)
        delta = backend.backward(params, acts, a, y, loss)
        grads.append([backend.weight_gradient(d, a_prev, loss.scale(9, 3))
                      for d, a_prev in zip(delta, a[:-1])])
    for (dW, db), (rW, rb) in zip(*grads):
        assert rel_err(dW, rW) < TOL[np.float64] and rel_err(db, rb) < TOL[np.float64]


def test_backend_takes_non_contiguous_inputs():
    rng = np.random.default_rng(11)
    be = NumbaCudaBackend(CPU)
    a_prev = rand(rng, (17, 7), np.float32).T          # (7, 17), column-major
    W, b = rand(rng, (3, 17), np.float32), rand(rng, (3,), np.float32)
    out = np.empty((3, 7), np.float32).T               # a non-contiguous out
    got = be.dense_forward(a_prev, W, b, "sigmoid", out=out)
    assert got is out
    ref = REF.dense_forward(*(v.astype(np.float64) for v in (a_prev, W, b)), "sigmoid")
    assert rel_err(out, ref) < TOL[np.float32]


def test_unavailable_reason_names_the_device():
    assert "CUDA devices" in NumbaCudaBackend.unavailable_reason(CPU)


def test_a_launch_a_gpu_would_refuse_is_refused_naming_the_kernel():
    """grid.y = ceil(n_out / TILE_N) over 65,535 (an sm_90 GPU's limit)."""
    from gpubackprop.kernels import LaunchError

    be = NumbaCudaBackend(CPU)
    n_out = 65536 * nk.kernels(np.float32).tiles["TILE_N"]      # 16 MiB of float32 weights
    W, b = np.ones((n_out, 1), np.float32), np.ones(n_out, np.float32)
    with pytest.raises(LaunchError, match=r"dense_forward \(numba\).*grid\.y"):
        be.dense_forward(np.ones((1, 1), np.float32), W, b, "identity")
