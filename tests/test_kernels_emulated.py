"""Every CUDA C kernel of kernels/ run on the cuda-emulator (the .cu compiled
by g++ against kernels/cpu/cuda_on_cpu.h, launched through the seam with the
arguments a GPU launch gets) against the float64 NumPy reference: odd shapes
from (1, 7, 33, 65, 129), every activation, float32 and float64, TF32 against
TF32-rounded inputs; the weight update split over the batch; and the runtime's
own checks (argument types, sm_90 launch limits, barriers, unsupported CUDA).
"""
import numpy as np
import pytest

from emulated import KP, TOL, build_all, device, dsigma_ref, forward_ref, module, \
    needs_emulator
from reference import rel_err

pytestmark = needs_emulator

ACTS = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "softplus")
# (M, N, K) = (batch, outputs, reduction): every size of (1, 7, 33, 65, 129) in every role
SHAPES = [(1, 1, 1), (7, 33, 65), (129, 7, 33), (65, 129, 7), (33, 65, 129), (129, 1, 17)]
DTYPES = ("float32", "float64")
i32 = np.int32


@pytest.fixture(scope="module", autouse=True)
def builds():
    n = build_all()
    print(f"cuda-emulator: {n} builds")


def _data(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shape]


def _gemm_grid(M, N, dtype):
    t = KP.GEMM_TILES[dtype]
    return (-(-M // t["TILE_M"]), -(-N // t["TILE_N"])), (KP.gemm_threads(dtype),)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_dense_forward(M, N, K, dtype):
    fn = module("dense_forward.cu", dtype).get("dense_forward")
    a_prev, W, b = _data([(M, K), (N, K), (N,)], dtype, M + N + K)
    for act in ACTS:
        out = np.full((M, N), np.nan, dtype=dtype)
        fn(*_gemm_grid(M, N, dtype), (a_prev, W, b, out, i32(M), i32(N), i32(K),
                                      i32(KP.activation_defines()[f"GB_ACT_{act.upper()}"])))
        assert rel_err(out, forward_ref(a_prev, W, b, act)) <= TOL[dtype], act


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_delta_propagate(M, N, K, dtype):
    """delta_prev (M, N) = (delta (M, K) @ W (K, N)) * sigma'(a_prev)."""
    fn = module("delta_propagate.cu", dtype).get("delta_propagate")
    delta, W, z = _data([(M, K), (K, N), (M, N)], dtype, M * N + K)
    for act in ACTS:
        a_prev = forward_ref(z, np.eye(N), np.zeros(N), act).astype(dtype)
        out = np.full((M, N), np.nan, dtype=dtype)
        fn(*_gemm_grid(M, N, dtype), (delta, W, a_prev, out, i32(M), i32(N), i32(K),
                                      i32(KP.activation_defines()[f"GB_ACT_{act.upper()}"])))
        ref = (delta.astype(np.float64) @ W.astype(np.float64)) * dsigma_ref(act, a_prev)
        assert rel_err(out, ref) <= TOL[dtype], act


def _update(dtype, delta, a_prev, W, vW, b, vb, scale, lr, mu, wd, mode, chunks):
    """weight_update + bias_update (+ update_reduce) with the batch in `chunks`."""
    m = module("weight_update.cu", dtype)
    B, N = delta.shape
    K = a_prev.shape[1]
    rows = -(-B // chunks)
    chunks = -(-B // rows)
    s = np.dtype(dtype).type
    t = KP.GEMM_TILES[dtype]
    part = np.full(chunks * (N * K + N), np.nan, dtype=dtype)
    dW, db = np.full_like(W, np.nan), np.full_like(b, np.nan)
    hyper = (s(scale), s(lr), s(mu), s(wd), i32(mode))
    sizes = (i32(B), i32(N), i32(K), i32(rows))
    m.get("weight_update")((-(-N // t["TILE_M"]), -(-K // t["TILE_N"]), chunks),
                           (KP.gemm_threads(dtype),), (delta, a_prev, W, vW, dW, part, *sizes, *hyper))
    m.get("bias_update")((-(-N // 32), chunks), (32, KP.BIAS_ROWS),
                         (delta, b, vb, db, part, *sizes, *hyper))
    if chunks > 1:
        m.get("update_reduce")((4,), (256,), (part, i32(chunks), W, vW, dW, b, vb, db, i32(N),
                                              i32(K), *hyper))
    return dW, db


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,N,K,chunks", [(1, 1, 1, 1), (129, 7, 33, 1), (33, 65, 7, 3),
                                          (129, 33, 65, 5), (65, 129, 1, 2)])
def test_weight_gradient_and_sgd(B, N, K, chunks, dtype):
    delta, a_prev, W, b = _data([(B, N), (B, K), (N, K), (N,)], dtype, B + N + K)
    scale = 1.0 / B
    dW, db = _update(dtype, delta, a_prev, W, W, b, b, scale, 0.0, 0.0, 0.0, 0, chunks)
    gW = delta.astype(np.float64).T @ a_prev.astype(np.float64) * scale
    gb_ = delta.astype(np.float64).sum(0) * scale
    assert rel_err(dW, gW) <= TOL[dtype] and rel_err(db, gb_) <= TOL[dtype]
    # SGD with momentum and weight decay, PyTorch's convention, in place
    lr, mu, wd = 0.1, 0.9, 0.01
    vW, vb = _data([(N, K), (N,)], dtype, 7)
    refs = []
    for p, g, v in ((W, gW, vW), (b, gb_, vb)):
        v_new = mu * v.astype(np.float64) + g + wd * p.astype(np.float64)
        refs.append((p.astype(np.float64) - lr * v_new, v_new))
    _update(dtype, delta, a_prev, W, vW, b, vb, scale, lr, mu, wd, 1, chunks)
    for got, (p_ref, v_ref) in zip(((W, vW), (b, vb)), refs):
        assert rel_err(got[0], p_ref) <= TOL[dtype] and rel_err(got[1], v_ref) <= TOL[dtype]


def test_batch_split_is_bitwise_repeatable_and_fills_an_h200():
    assert KP.update_chunks(65536, 64, 64, "float32")[0] >= 2 * 132
    assert KP.update_chunks(4096, 4096, 4096, "float32") == (1, 4096)
    delta, a_prev, W, b = _data([(300, 9), (300, 20), (9, 20), (9,)], "float32", 3)
    first = _update("float32", delta, a_prev, W, W, b, b, 1 / 300, 0, 0, 0, 0, 5)
    again = _update("float32", delta, a_prev, W, W, b, b, 1 / 300, 0, 0, 0, 0, 5)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))


def _tf32(x):
    """cvt.rna.tf32.f32: nearest 10-bit mantissa, ties away from zero."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


@pytest.mark.parametrize("M,N,K", SHAPES[:5])
def test_dense_forward_tf32_against_tf32_rounded_inputs(M, N, K):
    fn = module("dense_forward_tf32.cu", "float32").get("dense_forward_tf32")
    a_prev, W, b = _data([(M, K), (N, K), (N,)], "float32", K)
    t = KP.TF32_TILES
    out = np.full((M, N), np.nan, dtype=np.float32)
    fn((-(-M // t["TC_TILE_M"]), -(-N // t["TC_TILE_N"])), (KP.TF32_THREADS,),
       (a_prev, W, b, out, i32(M), i32(N), i32(K), i32(2)))
    ref = forward_ref(_tf32(a_prev), _tf32(W), b, "tanh")
    assert rel_err(out, ref) <= 1e-5
    assert rel_err(out, forward_ref(a_prev, W, b, "tanh")) <= 2e-2   # TF32: ~1e-3 per product
    assert _tf32(np.float32(1 + 2**-11)) == np.float32(1 + 2**-10)    # a tie rounds away


# ---- the runtime's own checks ----------------------------------------------------------
def test_argument_types_are_checked_against_the_kernel():
    fn = module("dense_forward.cu", "float32").get("dense_forward")
    a, W, b, out = _data([(3, 2), (4, 2), (4,), (3, 4)], "float32", 0)
    good = [a, W, b, out, i32(3), i32(4), i32(2), i32(1)]
    for i, bad, says in [(1, W.astype(np.float64), "parameter 1 (W)"), (5, 4, "parameter 5 (N)"),
                         (7, np.int64(1), "parameter 7 (act)"), (3, out.T, "C-contiguous")]:
        args = list(good)
        args[i] = bad
        with pytest.raises(TypeError, match=rf"dense_forward: .*{says}".replace("(", r"\(")
                           .replace(")", r"\)")):
            fn((1, 1), (256,), args)
    with pytest.raises(TypeError, match="takes 8 arguments"):
        fn((1, 1), (256,), good[:7])
    frozen = out.copy()
    frozen.flags.writeable = False
    with pytest.raises(TypeError, match=r"parameter 3 \(out\) is written by the kernel"):
        fn((1, 1), (256,), good[:3] + [frozen] + good[4:])
    frozen_in = a.copy()
    frozen_in.flags.writeable = False                  # const REAL*: read-only is fine
    fn((1, 1), (256,), [frozen_in] + good[1:])
    assert fn.signature == ("Rf", "Rf", "Rf", "Pf", "i", "i", "i", "i")


def test_no_compiler_is_a_one_line_reason_naming_what_was_tried():
    from gpubackprop.device import find_cxx17

    with pytest.raises(RuntimeError, match="needs a C\\+\\+17 compiler; tried no-such-c\\+\\+: "
                                           "not found on PATH"):
        find_cxx17("no-such-c++")


def test_launch_limits_are_those_of_sm90():
    fused = module("fused_mlp.cu", "float32").get("fused_forward")
    fused.max_dynamic_shared_size_bytes = 0      # a fused backend test may have opted in
    with pytest.raises(KP.LaunchError, match="1536 threads; at most 1024"):
        fused((1,), (512, 3, 1), [])
    with pytest.raises(KP.LaunchError, match=r"grid.y = 65536"):
        fused((1, 65536), (256,), [])
    with pytest.raises(KP.LaunchError, match="max_dynamic_shared_size_bytes"):
        fused((1,), (256,), [], shared_mem=48 * 1024 + 1)
    with pytest.raises(KP.LaunchError, match="at most 232448"):
        fused.max_dynamic_shared_size_bytes = 227 * 1024 + 1
    assert fused.max_dynamic_shared_size_bytes == 0


def _custom(tmp_path, text, name="probe.cu"):
    path = tmp_path / name
    path.write_text(text)
    return KP.load(path, {}, "float32", device(), cache_dir=tmp_path / "cache")


PROBE = r"""
extern "C" __global__ void diverge(int* x)
{
    if (threadIdx.x < 5)
        __syncthreads();
    x[threadIdx.x] = 1;
}
extern "C" __global__ void unwritten(float* out)
{
    extern __shared__ float dyn[];
    __shared__ int counter;
    if (threadIdx.x == 0) counter = 0;
    __syncthreads();
    atomicAdd(&counter, 1);
    if (threadIdx.x == 1) dyn[1] = 2.0f;
    __syncthreads();
    out[threadIdx.x + blockDim.x * blockIdx.x] = dyn[threadIdx.x % 2] + counter;
}
extern "C" __global__ void unwritten_static(float* out)
{
    __shared__ float s[2];
    if (threadIdx.x == 1) s[1] = 3.0f + blockIdx.x;
    if (threadIdx.x == 0 && blockIdx.x == 0) s[0] = 1.0f;   // block 1 must not see it
    __syncthreads();
    out[threadIdx.x + blockDim.x * blockIdx.x] = s[threadIdx.x % 2];
}
"""


def test_barrier_skipped_by_some_threads_is_an_error_naming_the_kernel(tmp_path):
    m = _custom(tmp_path, PROBE)
    with pytest.raises(RuntimeError, match=r"kernel diverge: block \(0, 0, 0\).*5 of its 32"):
        m.get("diverge")((1,), (32,), [np.zeros(32, dtype=np.int32)])
    out = np.zeros(8, dtype=np.float32)                   # extern __shared__: NaN until written
    m.get("unwritten")((2,), (4,), [out], shared_mem=8)
    assert np.isnan(out[0::2]).all() and (out[1::2] == 6.0).all()
    out = np.zeros(8, dtype=np.float32)                   # static __shared__ too, every block
    m.get("unwritten_static")((2,), (4,), [out])
    assert list(out[:4:2]) == [1.0, 1.0] and np.isnan(out[4::2]).all()
    assert list(out[1::2]) == [3.0, 3.0, 4.0, 4.0]


@pytest.mark.parametrize("code,says", [
    ("int v = __shfl_down_sync(0xffffffff, 1, 1);", "warp shuffles"),
    ('asm volatile("trap;");', "inline PTX"),
    ("int v = 1 +;", "error"),
])
def test_what_cannot_be_emulated_fails_the_build(tmp_path, code, says):
    text = 'extern "C" __global__ void k(int* x)\n{\n    %s\n}\n' % code
    with pytest.raises(RuntimeError, match=says) as info:
        _custom(tmp_path, text, "bad.cu")
    assert "bad.cu" in str(info.value)


def test_builds_are_cached_per_key(tmp_path):
    src = tmp_path / "k.cu"
    src.write_text('extern "C" __global__ void k(REAL* x) { x[threadIdx.x] = (REAL)SCALE; }\n')
    libs = [KP.emulator.build(src, (("REAL", "float"), ("SCALE", s)), "float32",
                              cache_dir=tmp_path / "c")[0] for s in ("2", "3", "2")]
    assert libs[0] == libs[2] != libs[1] and libs[0].is_file()
    x = np.zeros(3, dtype=np.float32)
    KP.load(src, {"REAL": "float", "SCALE": 3}, "float32", device(),
            cache_dir=tmp_path / "c").get("k")(1, 3, [x])
    assert (x == 3).all()


def test_activation_codes_come_from_activations_py_only():
    """activations.cuh defines no code of its own: they are -D defines from CODES."""
    from gpubackprop import activations

    text = (KP.KERNEL_DIR / "activations.cuh").read_text()
    assert "#define GB_ACT_" not in text and "#define GB_LEAKY_SLOPE" not in text
    d = KP.activation_defines()
    assert {k[len("GB_ACT_"):].lower(): v for k, v in d.items() if k.startswith("GB_ACT_")} \
        == {n: c for n, c in activations.CODES.items() if n in KP.kernel_activations()}
    assert KP.kernel_activations() == {"identity", "sigmoid", "tanh", "relu", "leaky_relu",
                                       "softplus", "softmax"}


def test_gpu_side_of_the_seam_with_a_recording_cupy(monkeypatch):
    """kernels.load on a "cuda" device hands CuPy's RawModule the inlined source
    and the same -D defines (plus -I folders), and a launch goes through the
    same sm_90 checks before reaching the RawKernel.  CuPy is a recording fake
    here: nothing runs, the plumbing is what is checked."""
    import sys
    import types

    from gpubackprop.device import Device

    calls = []

    class RawKernel:
        def __call__(self, grid, block, args, shared_mem=0, stream=None):
            calls.append(("launch", grid, block, args, shared_mem))

    class RawModule:
        def __init__(self, code, options):
            calls.append(("module", code, options))

        def compile(self):
            pass

        def get_function(self, name):
            return RawKernel()

    class Dev:
        def __init__(self, index):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    cupy = types.SimpleNamespace(RawModule=RawModule, cuda=types.SimpleNamespace(Device=Dev))
    monkeypatch.setitem(sys.modules, "cupy", cupy)
    from gpubackprop.kernels import gpu

    gpu.load.cache_clear()
    m = KP.load("weight_update.cu", None, "float64", Device("cuda", 0), include_dirs=("/inc",))
    (_, code, options), = calls
    assert code == KP.source("weight_update.cu") and '#include "' not in code
    assert set(options) == set(KP.options("weight_update.cu", "float64")) | {"-I/inc"}
    fn = m.get("update_reduce")
    fn(3, (256,), (1, 2))
    assert calls[-1] == ("launch", (3, 1, 1), (256, 1, 1), (1, 2), 0)
    with pytest.raises(KP.LaunchError, match="1536 threads"):
        fn(1, (512, 3), ())
    with pytest.raises(KeyError, match="no kernel 'nope'"):
        m.get("nope")
    gpu.load.cache_clear()


def test_launches_from_several_python_threads_agree():
    """ctypes releases the GIL: launches from threads are serialized per library."""
    import threading

    fn = module("dense_forward.cu", "float64").get("dense_forward")
    a, W, b = _data([(130, 70), (50, 70), (50,)], "float64", 1)

    def run(out):
        fn(*_gemm_grid(130, 50, "float64"), (a, W, b, out, i32(130), i32(50), i32(70), i32(2)))

    ref = np.empty((130, 50))
    run(ref)
    outs = [np.empty((130, 50)) for _ in range(8)]
    threads = [threading.Thread(target=run, args=(o,)) for o in outs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(o, ref) for o in outs)
    assert rel_err(ref, forward_ref(a, W, b, "tanh")) <= TOL["float64"]
