"""The GPU backends (cupy, cuda, fused, numba) against the float64 NumPy
reference, on a real GPU: odd shapes (1, 7, 33, 129, 1000) so every edge
tile runs, every activation, float32 and float64, random data; the four ops
of the contract.  Relative errors in the Frobenius norm: < 1e-5 float32
(5e-3 for the opt-in TF32 forward), < 1e-12 float64.

Skipped, with the reason, where CuPy or a usable GPU is missing.  The numba
backend's cases also skip when this process runs numba.cuda as the simulator
(tests/sim turns it on; run that folder as its own pytest invocation).
"""
import warnings

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import activations, backends
from gpubackprop.backends.numpy_backend import NumpyBackend
from gpubackprop.device import cuda_status
from gpubackprop.losses import Loss

from reference import rel_err

_N_GPUS, _WHY = cuda_status()
if not _N_GPUS:
    pytest.skip(f"no usable GPU: {_WHY}", allow_module_level=True)

GPU = gb.device("cuda")
REF = NumpyBackend(gb.device("cpu"))
DTYPES = (np.float32, np.float64)
TOL = {np.float32: 1e-5, np.float64: 1e-12}
BACKENDS = ("cupy", "cuda", "fused", "numba")
# (M, K, N) batch, inner, output: each of 1, 7, 33, 129, 1000 in every position
SHAPES = ((1, 1, 1), (7, 33, 129), (129, 1000, 7), (1000, 129, 33), (33, 7, 1000),
          (1000, 1, 129))


def make_backend(name, **options):
    reason = backends.unavailable_reason(name, GPU)
    if reason is not None:
        pytest.skip(f"backend {name!r} cannot run here: {reason}")
    return backends.create(name, GPU, options or None)


def dev(x):
    return GPU.asarray(x)


def host(x):
    return gb.device("cpu").asarray(x)

def rand(rng, shape, dtype, scale=1.0):
    x = rng.standard_normal(shape)
    x = np.where(np.abs(x) < 0.05, 0.05, x)
    return (scale * x).astype(dtype)


def act_values(rng, name, shape, dtype):
    return activations.apply(name, rand(rng, shape, np.float64), np).astype(dtype)


def f64(*xs):
    return [np.asarray(x, dtype=np.float64) for x in xs]


CASES = [(be, name, dt, SHAPES[(i + j + k) % len(SHAPES)])
         for i, be in enumerate(BACKENDS) for j, name in enumerate(activations.NAMES)
         for k, dt in enumerate(DTYPES)]
SHAPE_CASES = [(be, s, dt) for be in BACKENDS for s in SHAPES for dt in DTYPES]


def _id(v):
    if isinstance(v, tuple):
        return "x".join(map(str, v))
    return getattr(v, "__name__", str(v))


@pytest.mark.parametrize("backend,name,dtype,shape", CASES, ids=_id)
def test_dense_forward(backend, name, dtype, shape):
    be = make_backend(backend)
    M, K, N = shape
    rng = np.random.default_rng(1)
    a_prev, W, b = rand(rng, (M, K), dtype), rand(rng, (N, K), dtype, K ** -0.5), rand(rng, N, dtype)
    got = be.dense_forward(dev(a_prev), dev(W), dev(b), name)
    assert got.dtype == dtype and got.shape == (M, N)
    assert rel_err(got, REF.dense_forward(*f64(a_prev, W, b), name)) < TOL[dtype]


@pytest.mark.parametrize("backend,shape,dtype", SHAPE_CASES, ids=_id)
def test_dense_forward_shapes_and_out(backend, shape, dtype):
    be = make_backend(backend)
    M, K, N = shape
    rng = np.random.default_rng(2)
    a_prev, W, b = rand(rng, (M, K), dtype), rand(rng, (N, K), dtype, K ** -0.5), rand(rng, N, dtype)
    out = GPU.xp.full((M, N), np.nan, dtype=dtype)          # poisoned: every element written
    got = be.dense_forward(dev(a_prev), dev(W), dev(b), "sigmoid", out=out)
    assert got is out
    assert rel_err(out, REF.dense_forward(*f64(a_prev, W, b), "sigmoid")) < TOL[dtype]


@pytest.mark.parametrize("backend,name,dtype,shape", [c for c in CASES if c[1] != "softmax"],
                         ids=_id)
def test_delta_propagate(backend, name, dtype, shape):
    be = make_backend(backend)
    M, K, N = shape
    rng = np.random.default_rng(3)
    delta, W, a_prev = rand(rng, (M, K), dtype), rand(rng, (K, N), dtype), act_values(rng, name, (M, N), dtype)
    got = be.delta_propagate(dev(delta), dev(W), dev(a_prev), name)
    assert got.dtype == dtype and got.shape == (M, N)
    assert rel_err(got, REF.delta_propagate(*f64(delta, W, a_prev), name)) < TOL[dtype]


@pytest.mark.parametrize("backend,shape,dtype", SHAPE_CASES, ids=_id)
def test_weight_gradient(backend, shape, dtype):
    be = make_backend(backend)
    B, n_in, n_out = shape
    rng = np.random.default_rng(4)
    delta, a_prev = rand(rng, (B, n_out), dtype), rand(rng, (B, n_in), dtype)
    dW = GPU.xp.full((n_out, n_in), np.nan, dtype=dtype)
    db = GPU.xp.full((n_out,), np.nan, dtype=dtype)
    got = be.weight_gradient(dev(delta), dev(a_prev), 1.0 / B, dW=dW, db=db)
    assert got[0] is dW and got[1] is db
    dW_ref, db_ref = REF.weight_gradient(*f64(delta, a_prev), 1.0 / B)
    assert rel_err(dW, dW_ref) < TOL[dtype]
    assert rel_err(db, db_ref) < TOL[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B", [65536, 3000])
def test_weight_gradient_over_a_long_batch(backend, B):
    """Narrow layers over long batches: the regime where the cuda backend splits
    the batch into chunks whose partial sums are reduced in a fixed order.  A
    float32 sum over 65,536 rows taken in sequence (the base class's formula,
    which the fused backend's ops are) is good to ~3e-5 here, hence 2e-4."""
    be = make_backend(backend)
    rng = np.random.default_rng(5)
    delta, a_prev = rand(rng, (B, 64), np.float32), rand(rng, (B, 64), np.float32)
    dW, db = be.weight_gradient(dev(delta), dev(a_prev), 1.0 / B)
    dW_ref, db_ref = REF.weight_gradient(*f64(delta, a_prev), 1.0 / B)
    assert rel_err(dW, dW_ref) < 2e-4 and rel_err(db, db_ref) < 2e-4


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("loss,activation", [("sse", "sigmoid"), ("mse", "tanh"),
                                             ("sse", "softmax"), ("cross_entropy", "softmax"),
                                             ("cross_entropy", "identity")])
def test_output_delta(backend, loss, activation):
    be = make_backend(backend)
    rng = np.random.default_rng(6)
    dtype = np.float64
    a = act_values(rng, activation, (33, 7), dtype)
    y = rand(rng, (33, 7), dtype)
    L = Loss(loss)
    got = be.output_delta(dev(a), dev(y), L, activation)
    assert rel_err(got, REF.output_delta(a, y, L, activation)) < TOL[dtype]


@pytest.mark.parametrize("backend", ["cuda", "numba"])
def test_weight_gradient_is_deterministic(backend):
    be = make_backend(backend)
    rng = np.random.default_rng(7)
    delta, a_prev = dev(rand(rng, (65536, 129), np.float32)), dev(rand(rng, (65536, 33), np.float32))
    first = [host(x) for x in be.weight_gradient(delta, a_prev, 1e-3)]
    second = [host(x) for x in be.weight_gradient(delta, a_prev, 1e-3)]
    assert all(np.array_equal(x, y) for x, y in zip(first, second))


@pytest.mark.parametrize("shape", SHAPES, ids=_id)
def test_cuda_tf32_forward_builds_and_agrees(shape):
    """CudaBackend(device, tf32=True): the tensor-core kernel builds with NVRTC
    (the header folder with crt/mma.h found) -- no fallback warning -- and
    agrees with the float64 reference to TF32 precision."""
    if int(GPU.xp.cuda.Device(0).compute_capability) < 80:
        pytest.skip("TF32 tensor cores need sm_80+")
    be = make_backend("cuda", tf32=True)
    M, K, N = shape
    rng = np.random.default_rng(8)
    a_prev, W, b = rand(rng, (M, K), np.float32), rand(rng, (N, K), np.float32, K ** -0.5), \
        rand(rng, N, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # the FP32 fallback would warn
        got = be.dense_forward(dev(a_prev), dev(W), dev(b), "tanh")
    assert rel_err(got, REF.dense_forward(*f64(a_prev, W, b), "tanh")) < 5e-3
