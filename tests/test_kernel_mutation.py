"""Mutation test of the cuda-emulator: every `__syncthreads()` of
dense_forward.cu, delta_propagate.cu, weight_update.cu, dense_forward_tf32.cu
and fused_mlp.cu is deleted in turn from a temporary copy,
and the copy must fail at least one check against the float64 NumPy
reference (run with the threads of each barrier phase in forward, then in
reverse order).  A barrier the emulator cannot catch would be listed in
UNCATCHABLE with the reason, and in kernels/README.md.

All mutants are built once, in parallel, into a temporary cache.
"""
import re

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import losses
from gpubackprop.backends.base import Hyper
from gpubackprop.backends.fused_backend import KERNEL_NAMES, FusedBackend
from gpubackprop.optim import SGD

from emulated import KP, forward_ref, needs_emulator, problem, reference_epoch
from reference import rel_err

pytestmark = needs_emulator
SOURCES = ("dense_forward.cu", "delta_propagate.cu", "weight_update.cu",
           "dense_forward_tf32.cu", "fused_mlp.cu")
BARRIER = re.compile(r"__syncthreads\(\);")
#: (file, line) -> why the emulator cannot catch its removal (none so far)
UNCATCHABLE = {}
TOL = 1e-10


def _mutants():
    """[(file, line, text with that barrier removed)] (None, 0, original) first per file."""
    out = []
    for name in SOURCES:
        text = (KP.KERNEL_DIR / name).read_text()
        out.append((name, 0, text))
        for m in BARRIER.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append((name, line, text[:m.start()] + "/* barrier removed */" + text[m.end():]))
    return out


MUTANTS = _mutants()


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    """{(file, line): emulated module} of every mutant (line 0: the original)."""
    folder = tmp_path_factory.mktemp("mutants")
    jobs = []
    for name, line, text in MUTANTS:
        path = folder / f"{name[:-3]}_L{line}.cu"
        path.write_text(text)
        dtype = KP.DTYPES[name][-1]                    # float64 where there is one
        jobs.append((path, KP.defines(name, dtype), dtype))
    KP.emulator.build_many(jobs, cache_dir=folder / "cache")
    dev = gb.device("cuda-emulator")
    return {(name, line): KP.load(path, d, dt, dev, cache_dir=folder / "cache")
            for (name, line, _), (path, d, dt) in zip(MUTANTS, jobs)}


def _dense_failures(module):
    """Checks of dense_forward that fail (names), over two thread orders."""
    fn, failed = module.get("dense_forward"), []
    for M, N, K in [(70, 40, 50), (129, 65, 33)]:
        rng = np.random.default_rng(M)
        a, W, b = rng.standard_normal((M, K)), rng.standard_normal((N, K)), rng.standard_normal(N)
        out = np.full((M, N), np.nan)
        t = KP.GEMM_TILES["float64"]
        fn((-(-M // t["TILE_M"]), -(-N // t["TILE_N"])), (KP.gemm_threads("float64"),),
           (a, W, b, out, np.int32(M), np.int32(N), np.int32(K), np.int32(2)))
        if not rel_err(out, forward_ref(a, W, b, "tanh")) <= TOL:
            failed.append(f"forward {M}x{N}x{K}")
    return failed


def _delta_failures(module):
    fn, failed = module.get("delta_propagate"), []
    for M, N, K in [(70, 40, 50), (129, 65, 33)]:
        rng = np.random.default_rng(M)
        d, W, a = rng.standard_normal((M, K)), rng.standard_normal((K, N)), rng.random((M, N))
        out = np.full((M, N), np.nan)
        t = KP.GEMM_TILES["float64"]
        fn((-(-M // t["TILE_M"]), -(-N // t["TILE_N"])), (KP.gemm_threads("float64"),),
           (d, W, a, out, np.int32(M), np.int32(N), np.int32(K), np.int32(1)))
        if not rel_err(out, (d @ W) * a * (1 - a)) <= TOL:
            failed.append(f"delta {M}x{N}x{K}")
    return failed


def _update_failures(module):
    """weight_update + bias_update (+ update_reduce) in GRADIENT mode, 1 and 3 chunks."""
    failed, t, i32 = [], KP.GEMM_TILES["float64"], np.int32
    for B, N, K, chunks in [(90, 40, 70, 1), (90, 70, 40, 3)]:
        rng = np.random.default_rng(B + N)
        d, a = rng.standard_normal((B, N)), rng.standard_normal((B, K))
        dW, db = np.full((N, K), np.nan), np.full(N, np.nan)
        rows = -(-B // chunks)
        part = np.full(chunks * (N * K + N), np.nan)
        hyper = (np.float64(1), np.float64(0), np.float64(0), np.float64(0), i32(0))
        sizes = (i32(B), i32(N), i32(K), i32(rows))
        module.get("weight_update")((-(-N // t["TILE_M"]), -(-K // t["TILE_N"]), chunks),
                                    (KP.gemm_threads("float64"),), (d, a, dW, dW, dW, part,
                                                                    *sizes, *hyper))
        module.get("bias_update")((-(-N // 32), chunks), (32, KP.BIAS_ROWS),
                                  (d, db, db, db, part, *sizes, *hyper))
        if chunks > 1:
            module.get("update_reduce")((4,), (256,), (part, i32(chunks), dW, dW, dW, db, db, db,
                                                       i32(N), i32(K), *hyper))
        if not (rel_err(dW, d.T @ a) <= TOL and rel_err(db, d.sum(0)) <= TOL):
            failed.append(f"update {B}x{N}x{K} in {chunks} chunk(s)")
    return failed


def _tf32_failures(module):
    """dense_forward_tf32 against float64 on inputs exact in TF32 (so only the
    float32 accumulation differs)."""
    fn, failed = module.get("dense_forward_tf32"), []
    for M, N, K in [(70, 40, 50), (129, 65, 33)]:
        rng = np.random.default_rng(M)
        a, W, b = (rng.integers(-8, 8, s).astype(np.float32) / 8 for s in ((M, K), (N, K), (N,)))
        out = np.full((M, N), np.nan, dtype=np.float32)
        fn((-(-M // 64), -(-N // 64)), (KP.TF32_THREADS,),
           (a, W, b, out, np.int32(M), np.int32(N), np.int32(K), np.int32(0)))
        if not rel_err(out, forward_ref(a, W, b, "identity")) <= 1e-6:
            failed.append(f"tf32 {M}x{N}x{K}")
    return failed


class _MutantFused(FusedBackend):
    """The fused backend on one mutant's module."""

    def __init__(self, module):
        super().__init__(gb.device("cuda-emulator"))
        self._module = module

    def _kernels(self, dtype):
        return {k: self._module.get(k) for k in KERNEL_NAMES}


FUSED_CASES = [  # sizes, activations, loss, batch size, rows
    ([40, 33, 17, 5], ("tanh", "sigmoid", "softmax"), "cross_entropy", 70, 100),
    ([35, 20, 48, 3], ("relu", "softplus", "sigmoid"), "sse", 64, 90),
]


def _fused_failures(module):
    failed = []
    for sizes, acts, loss, bs, n in FUSED_CASES:
        params, X, Y = problem(sizes, n, "float64", seed=n)
        hyper = Hyper(acts, losses.get(loss), bs, lr=0.1, momentum=0.5)
        order = np.random.default_rng(0).permutation(n)
        ref, ref_costs, _ = reference_epoch(params, X, Y, order, hyper)
        be = _MutantFused(module)
        p = [(W.copy(), b.copy()) for W, b in params]
        try:
            costs, _, _ = be.train_epoch(p, SGD(0.1, 0.5).init_state(p), X, Y, order, hyper)
        except RuntimeError as exc:            # a barrier mismatch the runtime reports
            failed.append(f"{sizes}: {exc}")
            continue
        errs = [rel_err(W, W0) for (W, _), (W0, _) in zip(p, ref)] + [rel_err(costs, ref_costs)]
        if not all(e <= TOL for e in errs):             # (max() would skip a NaN)
            finite = [e for e in errs if e == e]
            failed.append(f"{sizes}: train_epoch off by {max(finite, default=0):.1e}, "
                          f"NaN: {len(finite) < len(errs)}")
    return failed


def _failures(name, module):
    check = {"dense_forward.cu": _dense_failures, "delta_propagate.cu": _delta_failures,
             "weight_update.cu": _update_failures, "dense_forward_tf32.cu": _tf32_failures,
             "fused_mlp.cu": _fused_failures}[name]
    failed = []
    for order in ("forward", "reverse"):
        module.set_schedule(order)
        failed += [f"{order}: {f}" for f in check(module)]
    module.set_schedule("forward")
    return failed


@pytest.mark.parametrize("name,line", [(n, ln) for n, ln, _ in MUTANTS],
                         ids=[f"{n[:-3]}-{'original' if ln == 0 else f'L{ln}'}" for n, ln, _ in MUTANTS])
def test_each_barrier_removed_is_caught(modules, name, line):
    failed = _failures(name, modules[(name, line)])
    if line == 0:
        assert failed == [], f"the unmutated {name} fails its own checks: {failed}"
    elif (name, line) in UNCATCHABLE:
        assert failed == [], f"{name}:{line} is caught now; drop it from UNCATCHABLE"
    else:
        assert failed, f"removing the __syncthreads() at {name}:{line} goes unnoticed"
        print(f"{name}:{line} caught by {len(failed)} check(s): {failed[0][:120]}")


def test_catch_count():
    barriers = [(n, ln) for n, ln, _ in MUTANTS if ln]
    print(f"mutation: {len(barriers) - len(UNCATCHABLE)} of {len(barriers)} barriers caught")
    assert len(barriers) == 24
