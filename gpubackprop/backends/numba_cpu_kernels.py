"""The compiled kernels of backend="numba" on the CPU (numba_cpu.py): the
epoch, a part of a split step, and the loop's passes, built from the
activation table and from the table-free blocks in numba_cpu_blocks.py.

GEMMs in compiled code are calls of the backend's BLAS gemm (passed in as
an argument: numba_cpu_blas.py), not Numba's `np.dot`, which runs SciPy's
BLAS whatever NumPy's is.  A small forward GEMM (under SMALL_GEMM
multiply-adds) may run `_matmul_nt` instead: where BLAS's per-call set-up
dominates (the AMD EPYC VM of bench/RESULTS.md) it wins, where BLAS has
kernels for small shapes (the AVX-512 Xeon VM) it loses, so the backend
times both once per machine and dtype (autotune.kernel_choice) and passes
the choice in (`hand`, one flag per layer).  Hand-written weight gradients lost to BLAS at every size
measured (RESULTS.md).  A step of one block without momentum folds each
layer's update into its weight-gradient GEMM (W = (1 - lr wd) W - lr scale
delta.T @ a_prev: _backward's fold, gemm's alpha and beta).
The element-wise loops are written so LLVM vectorises them (2-D indexing with
loop invariants in locals: row views cost an atomic reference count each)
and inlined into a step's forward and backward (_forward_cost, _backward:
compiled once, called by the epoch and by _part_op).  A step runs block by
block of rows (numba_cpu.py picks the size), so a narrow network's blocks
stay in the cache between layers.  Threads share a large step by runs of
rows (_part_op on each part, the GIL released, BLAS on one thread each;
numba_cpu.py runs them), not by a parallel pass per array: prange passes were
2-3x slower between BLAS calls, whose spinning threads take the cores.

Compilation: one signature per dtype, compiled on first use and cached on
disk (cache=True; ~0.3 s to load).  Activations come from activations.TABLE
through one generated dispatch function; the compiled epoch returns the
fingerprint of the table and of numba_cpu_blocks.py it was built from, and a
cache entry built from others (activations.py or the blocks edited) is
recompiled.  A table changed at run time (activations.register) gets its own
uncached kernels.

Bits: a seed gives the same bits every run, compiled or loaded from the
cache (tests/test_numba_cache.py), with the same thread count: wide layers
use several BLAS threads, a large step's parts add their gradients in part
order, and another count (`threads=`) can change the last bits.
"""
import contextlib
import hashlib
import math
import threading

from numba import njit
from numba.typed import List

from .. import activations
from . import numba_cpu_blocks as blocks
from .numba_cpu_blocks import (CROSS_ENTROPY as _CROSS_ENTROPY,
                               IDENTITY as _IDENTITY, SOFTMAX as _SOFTMAX, _add_gradient,
                               _add_into, _column_sum, _cost, _gather, _gemm,
                               _matmul_nt, _softmax_rows, _update)

NOTICE = "compiling the CPU kernels, first run only ..."

# Set by use_table for the activation table in use: its scalar dispatchers
# (code, x) -> sigma(x) / sigma'(a) and fingerprint.  The kernels that call
# them read these globals when they compile.
_sigma = _dsigma = None
_TABLE_HASH = 0


# -- the compiled epoch ------------------------------------------------------------
def _dense_forward(a_prev, W, b, code, a, hand, gemm, blas):
    """a = sigma(a_prev @ W.T + b); z = a_prev @ W.T by _matmul_nt if hand."""
    if hand:
        _matmul_nt(a_prev, W, a)
    else:
        _gemm(gemm, blas, a_prev, W.T, a, 1, 0)
    _bias_sigma(a, b, code)


def _bias_sigma(a, b, code):
    """a = sigma(a + b), in place, one sweep (softmax: + b, then row by row)."""
    if code == _SOFTMAX:
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                a[i, j] += b[j]
        _softmax_rows(a, a)
    else:
        _sigma(code, (a, b))


def _times_dsigma(g, a, code):
    """g *= sigma'(z), taken from a = sigma(z)."""
    _dsigma(code, (g, a))


def _sigma_loop(sigma):
    """a = sigma(a + b) element by element for x = (a, b), a loop per
    activation (the code is looked up once per array: the loop can vectorise)."""
    def loop(x):
        a, b = x
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                a[i, j] = sigma(a[i, j] + b[j])
        return x
    return _named_loop(loop, sigma)


def _dsigma_loop(dsigma):
    """g *= dsigma(a) element by element, for x = (g, a)."""
    def loop(x):
        g, a = x
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                g[i, j] = g[i, j] * dsigma(a[i, j])
        return x
    return _named_loop(loop, dsigma)


def _named_loop(loop, scalar):
    """loop compiled under a name of its own: its scalar function's name and
    a hash of its math (`_sigma_loop._relu_1f2e3d4c`).  Numba names compiled
    code by qualified name, argument types and a counter that restarts in
    every process, so with one name for every activation's loop two kernels
    compiled in different processes and loaded from the disk cache could hold
    different loops under one symbol, and one kernel then ran the other's
    activation (a relu network trained with tanh after another network's
    epoch had run in the same process)."""
    fn = getattr(scalar, "py_func", scalar)
    math_hash = hashlib.sha256(activations.code_key(fn).encode()).hexdigest()[:8]
    loop.__qualname__ = f"{loop.__qualname__.split('.')[0]}.{fn.__name__}_{math_hash}"
    return njit(loop)


def _output_delta(a, y, loss_code, code, delta):
    """delta_L: p - y for cross entropy (p = a, or softmax(a) for identity
    logits); else g = 2 (a - y) times sigma'(z_L) (softmax: a * (g - sum g a))."""
    if loss_code == _CROSS_ENTROPY:
        if code != _SOFTMAX:
            _softmax_rows(a, delta)
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                delta[i, j] = (a[i, j] if code == _SOFTMAX else delta[i, j]) - y[i, j]
        return
    for i in range(a.shape[0]):
        ga = 0.0
        for j in range(a.shape[1]):
            delta[i, j] = 2.0 * (a[i, j] - y[i, j])
            ga += delta[i, j] * a[i, j]
        if code == _SOFTMAX:
            for j in range(a.shape[1]):
                delta[i, j] = a[i, j] * (delta[i, j] - ga)
    if code != _SOFTMAX and code != _IDENTITY:   # identity: sigma' = 1
        _times_dsigma(delta, a, code)


# A step's rows run in blocks of `block` rows, each block through every layer
# before the next block (forward, then backward): a block's activations and
# deltas stay in the cache from one layer's GEMM to the next, where a
# layer-by-layer pass over a large batch streams each array through memory
# three times (GEMM out, bias + sigma in and out, next GEMM in).
def _forward_cost(params, a, y, codes, hand, X, Y, order, start, r_begin, r_end, block,
                  loss_code, tiny, gemm, blas):
    """Rows r_begin:r_end of the batch order[start:]: gathered into a_0 and
    y, then forward through every layer (hand[l]: layer l's GEMM by
    _matmul_nt).  Returns (sum of their C0, rows with argmax a == argmax y)."""
    L = len(codes)
    cost, correct = 0.0, 0
    for r0 in range(r_begin, r_end, block):
        r1 = min(r_end, r0 + block)
        _gather(X, order, start + r0, a[0][r0:r1])
        _gather(Y, order, start + r0, y[r0:r1])
        for l in range(L):
            _dense_forward(a[l][r0:r1], params[2 * l], params[2 * l + 1][0], codes[l],
                           a[l + 1][r0:r1], hand[l], gemm, blas)
        block_cost, block_correct = _cost(a[L][r0:r1], y[r0:r1], loss_code, codes[L - 1], tiny)
        cost += block_cost
        correct += block_correct
    return cost, correct


def _backward(params, a, delta, y, codes, r_begin, r_end, block, loss_code, dW, db, part_W,
              part_b, fold, gemm, blas, scale, lr, wd):
    """The gradient sums of rows r_begin:r_end, dW_l = delta_l.T @ a_{l-1}
    and db_l = delta_l.sum(0), block by block; a block's deltas go to rows
    r_begin.. of the delta buffers (scratch, reused by the next block).
    fold (a step of one block without momentum): each layer's update instead,
    folded into its gradient GEMM once the delta has gone back through W,
    W = (1 - lr wd) W - lr scale delta.T @ a_prev (_gemm: gemm, blas),
    so dW is never written."""
    L = len(codes)
    for r0 in range(r_begin, r_end, block):
        r1 = min(r_end, r0 + block)
        d = delta[L - 1][r_begin:r_begin + r1 - r0]
        _output_delta(a[L][r0:r1], y[r0:r1], loss_code, codes[L - 1], d)
        for l in range(L - 1, -1, -1):
            if not fold:
                _add_gradient(d, a[l][r0:r1], dW[l], db[l][0], part_W[l], part_b[l][0],
                              r0 == r_begin, gemm, blas)
            d_prev = delta[max(l - 1, 0)][r_begin:r_begin + r1 - r0]
            if l > 0:                                # delta through W_l, before its update
                _gemm(gemm, blas, d, params[2 * l], d_prev, 1, 0)
                _times_dsigma(d_prev, a[l][r0:r1], codes[l - 1])
            if fold:
                W, b, g = params[2 * l], params[2 * l + 1][0], db[l][0]
                _column_sum(d, g)
                _gemm(gemm, blas, d.T, a[l][r0:r1], W, -lr * scale, 1 - lr * wd)
                for j in range(b.shape[0]):
                    b[j] = b[j] - lr * (g[j] * scale + wd * b[j])
            d = d_prev


def _epoch(params, velocities, a, delta, dW, db, part_W, part_b, y, codes, hand, block, gemm,
           blas, X, Y, order, lr, mu, wd, loss_code, scale, tiny, step_costs):
    """The SGD steps over the batches order[0:B], order[B:2B], ... with B =
    len(y) rows each (len(order) is a multiple of B; `scale` is for B rows).
    params = [W_1, b_1 (1, n_1), W_2, ...] and velocities (the same, or
    empty) are updated in place; a (a_0..a_L), delta, dW, db (1, n), their
    block scratch part_W, part_b and y are the buffers; hand and block as
    _forward_cost's; a step of one block without momentum folds its update
    into the gradient GEMMs (_backward's fold: gemm, blas).  step_costs[s] =
    step s's sum of C0;
    stops before the update of the first step whose cost was not finite.
    Returns (n_correct, bad_step, _TABLE_HASH)."""
    B = y.shape[0]
    n_correct, bad_step = 0, -1
    for s in range(step_costs.shape[0]):
        cost, correct = _forward_cost(params, a, y, codes, hand, X, Y, order, s * B, 0, B,
                                      block, loss_code, tiny, gemm, blas)
        step_costs[s] = cost
        if not math.isfinite(cost):
            bad_step = s
            break
        n_correct += correct
        fold = B <= block and len(velocities) == 0
        _backward(params, a, delta, y, codes, 0, B, block, loss_code, dW, db, part_W, part_b,
                  fold, gemm, blas, scale, lr, wd)
        if not fold:
            _update(params, velocities, dW, db, scale, lr, mu, wd)
    return n_correct, bad_step, _TABLE_HASH


# -- one step split over threads: each runs a part of the rows (_part_op, the
#    GIL released), then one adds the parts' gradients and updates ------------------
def _part_op(params, a, delta, y, codes, hand, X, Y, order, start, r_begin, r_end, block,
             loss_code, tiny, dW, db, part_W, part_b, gemm, blas):
    """Rows r_begin:r_end of the step whose batch is order[start:]: forward,
    cost and (if the cost is finite) their gradient sums into dW, db."""
    cost, correct = _forward_cost(params, a, y, codes, hand, X, Y, order, start, r_begin,
                                  r_end, block, loss_code, tiny, gemm, blas)
    if math.isfinite(cost):
        _backward(params, a, delta, y, codes, r_begin, r_end, block, loss_code, dW, db, part_W,
                  part_b, False, gemm, blas, tiny, tiny, tiny)
    return cost, correct, _TABLE_HASH


def _update_op(params, velocities, dW, db, more_dW, more_db, scale, lr, mu, wd):
    """dW += more_dW[0] + more_dW[1] ... (db alike, in order), then the update."""
    for p in range(len(more_dW) // len(dW)):
        for l in range(len(dW)):
            q = p * len(dW) + l
            _add_into(dW[l], db[l][0], more_dW[q], more_db[q][0])
    _update(params, velocities, dW, db, scale, lr, mu, wd)
    return _TABLE_HASH


# -- typed Lists for the kernels' array arguments, made by compiled code cached
#    on disk: List's own Python-side constructor and append (and len, getitem
#    from Python) compile in every process, a few tenths of a second each run --
@njit(cache=True)
def list_of(arrays):
    """A typed List of a tuple's arrays (all of one type)."""
    out = List()
    for x in arrays:
        out.append(x)
    return out


@njit(cache=True)
def empty_list_of(like):
    """An empty typed List for arrays of like's type."""
    out = List()
    out.append(like)
    out.pop()
    return out


# -- the passes between the trainer loop's GEMMs (NumbaCPUBackend.matmul runs those) ---
def _bias_sigma_op(z, b, code):
    """z = sigma(z + b) in place, b (1, n)."""
    _bias_sigma(z, b[0], code)
    return _TABLE_HASH


def _output_delta_op(a, y, loss_code, code, delta):
    """delta_L, as _output_delta."""
    _output_delta(a, y, loss_code, code, delta)
    return _TABLE_HASH


def _times_dsigma_op(g, a, code):
    """g *= sigma'(z), from a = sigma(z)."""
    if code != _IDENTITY:
        _times_dsigma(g, a, code)
    return _TABLE_HASH


def _gradient_scale_op(delta, scale, dW, db):
    """dW *= scale; db = scale * delta.sum(0), db (1, n)."""
    for j in range(dW.shape[0]):
        for k in range(dW.shape[1]):
            dW[j, k] *= scale
    _column_sum(delta, db[0])
    for j in range(db.shape[1]):
        db[0, j] *= scale
    return _TABLE_HASH


# -- one set of kernels per activation table ------------------------------------------
_ENTRY_POINTS = (_epoch, _part_op, _update_op, _bias_sigma_op, _output_delta_op,
                 _times_dsigma_op, _gradient_scale_op)
_TABLE_KERNELS = {f.__name__: f for f in (_dense_forward, _bias_sigma, _times_dsigma,
                                           _output_delta, _forward_cost, _backward,
                                           *_ENTRY_POINTS)}
#: compiled once and called (by the epoch and _part_op), not inlined into each
_CALLED = (_forward_cost, _backward)
_KERNEL_SETS = {}            # table key -> the globals of its kernels
_table_key = None
_checked = set()             # (table key, X and Y types): compiled epochs checked here


def use_table():
    """Point the table-dependent kernels at activations.TABLE as it is now.
    The table the module was imported with is cached on disk; one registered
    later (a test, an experiment) compiles in-process, uncached."""
    global _table_key
    key = tuple((n, r.code, r.sigma, r.dsigma) for n, r in activations.TABLE.items())
    if key == _table_key:
        return
    if key not in _KERNEL_SETS:
        kernels = {"_sigma": activations.dispatcher(
                       "sigma", njit, lambda f: _sigma_loop(njit(f))),
                   "_dsigma": activations.dispatcher(
                       "dsigma", njit, lambda f: _dsigma_loop(njit(f))),
                   "_TABLE_HASH": activations.fingerprint() ^ blocks.SOURCE_HASH}
        for name, fn in _TABLE_KERNELS.items():     # helpers inlined into the epoch
            options = {"cache": not _KERNEL_SETS, "nogil": True} if fn in _ENTRY_POINTS \
                else {} if fn in _CALLED else {"inline": "always"}
            kernels[name] = njit(**options)(fn)
        _KERNEL_SETS[key] = kernels
    globals().update(_KERNEL_SETS[key])
    _table_key = key


use_table()


@contextlib.contextmanager
def _notice_if_slow(seconds=0.5):
    """Print NOTICE to stderr if the block takes longer than `seconds` (a
    compile; loading from the cache takes less)."""
    from ..progress import notice     # above a progress bar, and shown in it

    timer = threading.Timer(seconds, lambda: notice(NOTICE))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def ready(name, key, empty):
    """The compiled entry point `name` (the epoch or an op), compiled or loaded
    from the cache by a call on `empty()` (arguments of the real call's types
    whose work changes nothing that matters: zero steps, scratch arrays), once
    per `key`, and recompiled if the cached code was built from another
    activation table."""
    kernel = globals()[name]
    key = (_table_key, name, key)
    if key not in _checked:
        with _notice_if_slow():      # compiles, or loads from the cache
            out = kernel(*empty())
            if (out[-1] if isinstance(out, tuple) else out) != _TABLE_HASH:
                kernel.recompile()
        _checked.add(key)
    return kernel
