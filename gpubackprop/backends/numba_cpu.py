"""backend="numba" on the CPU: a whole SGD epoch in one compiled call.

At Nielsen's recipe ([784, 30, 10] sigmoid, mini-batch 10) one SGD step is
about a million flops in a few tiny GEMMs, so a NumPy or PyTorch loop spends
most of its time in per-step Python and dispatch.  Here the epoch runs in
Numba-compiled code, each step exactly Nielsen's `update_mini_batch` with
optim.SGD's update (B rows, l = 1..L):

    x, y         the batch's rows of X and Y (gathered through `order`)
    a_l          sigma_l(a_{l-1} @ W_l.T + b_l)              forward, keep the a's
    delta_L      dC0/da * sigma'(z_L)     (p - y for cross entropy)
    delta_{l-1}  (delta_l @ W_l) * sigma'(z_{l-1})           backward, with the old W's
    g            scale * delta_l.T @ a_{l-1}  (+ wd W)       then v = mu v + g, W -= lr v

A large batch (a step of 65,536 rows of a narrow network) runs the same step
in blocks of rows that stay in the cache, shared by the cores: each thread
takes a part of the rows through forward and backward, then their gradient
sums are added in order and one update follows.

The trainer's loop, which runs when the epoch does not pay (autotune.py
measures which is faster per shape) or cannot run (another optimizer, data-
parallel training), gets this backend's four ops: the GEMMs on the epoch's
BLAS (matmul) and, between them, one compiled pass each (bias +
sigma, delta * sigma', the column sums) where NumPy makes a pass per ufunc.

The kernels, their compilation and caching: numba_cpu_kernels.py.
"""
import concurrent.futures
import contextlib
import functools
import math
import time

import numba
import numpy as np

from .. import activations, autotune
from ..checks import choice, positive_int
from ..threads import pool as thread_pool, usable_cores
from . import numba_cpu_blas as blas, numba_cpu_blocks as blocks, numba_cpu_kernels as kernels
from .base import Backend

NOTICE = kernels.NOTICE
#: the ops run their compiled passes on arrays of at least this many elements;
#: smaller ones (net.forward on a few rows, small steps of the loop) take
#: NumPy's, which need no compiling and cost microseconds there
COMPILED_OPS_MIN = 2 ** 16
#: a step of at least 2 x PART_ROWS rows is shared by the threads, a part of
#: PART_ROWS rows or more each: below that the handing over of a part costs
#: more than the thread saves (the measured crossover: bench/RESULTS.md)
PART_ROWS = 256
#: a step runs in blocks of COLUMN_BLOCK rows where a block of the widest
#: layer fits in BLOCK_BYTES (about a core's L2 cache), and its parts whole
#: where not: blocks of wide layers do not stay in the cache, and each
#: block's GEMM packs the weights again
BLOCK_BYTES = 2 ** 20
#: the shape (batch, n_in, n_out) a machine's small-GEMM kernel is timed at,
#: and how much faster than BLAS the epoch's own kernel must be to be chosen
SMALL_GEMM_PROBE, HAND_MARGIN = (10, 784, 30), 1.25
#: the hand kernel timed against BLAS: another name is another measurement
HAND_KERNEL = "4 x 4 blocks"


def _compilable(*arrays, gemm=()):
    """True if the compiled ops take these arrays: the first has at least
    COMPILED_OPS_MIN elements; all NumPy, 2-D, one float dtype, C-contiguous and
    writable but for the GEMM's operands `gemm` (matmul takes any).
    Anything else runs the NumPy ops: the choice depends on shapes alone, so a
    caller with or without output buffers gets the same bits."""
    every = (*gemm, *arrays)
    if not all(isinstance(a, np.ndarray) and a.ndim == 2 for a in every):
        return False
    return arrays[0].size >= COMPILED_OPS_MIN and every[0].dtype in (np.float32, np.float64) \
        and all(a.dtype == every[0].dtype for a in every) \
        and all(a.flags.c_contiguous and a.flags.writeable for a in arrays)


def _buffer(out, shape, like):
    """`out`, or a new array of `shape` with like's dtype (NumPy) when None."""
    if out is not None or not isinstance(like, np.ndarray):
        return out
    return np.empty(shape, like.dtype)


def _code(activation):
    return activations.CODES[activation]


def _run(name, *args):
    """Call the compiled op `name` on args (compiled or loaded first, on
    one-row scratch arrays of the same types)."""
    kernels.use_table()
    kernels.ready(name, args[0].dtype, lambda: [
        np.zeros((1,) + a.shape[1:], a.dtype) if isinstance(a, np.ndarray) else a
        for a in args])(*args)


class NumbaCPUBackend(Backend):
    """The NumPy reference ops plus train_epoch, the compiled SGD epoch.

    threads: threads during train_epoch (None: BLAS's own count for a step
    under 2 x PART_ROWS rows, every usable core for a larger one, whose rows
    are split into that many parts).  The count can change the last bits
    (the parts' sums, wide layers' GEMMs).

    small_gemm: who runs the epoch's forward GEMMs under SMALL_GEMM
    multiply-adds: "blas", "hand" (the epoch's own _matmul_nt) or "auto",
    the machine's choice (_hand_small_gemms).  The two round differently, so
    a run that must repeat bit for bit on other machines fixes threads and
    small_gemm."""

    name = "numba"
    device_kinds = ("cpu",)

    def __init__(self, device, threads=None, small_gemm="auto"):
        super().__init__(device)
        self.threads = None if threads is None else positive_int("threads", threads)
        self.small_gemm = choice("small_gemm", small_gemm, ("auto", "blas", "hand"))
        self._blas = None

    @classmethod
    def unavailable_reason(cls, device):
        try:
            blas.library()
        except ImportError as exc:
            return (f"backend 'numba' needs NumPy's OpenBLAS or SciPy for BLAS in compiled "
                    f"code ({exc})")
        return None

    def check_network(self, sizes, activations_, dtype):
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise ValueError(f"backend 'numba' trains float32 or float64 networks; got {dtype}")

    # -- the four ops (the trainer's loop): the epoch's BLAS, and the passes between them
    #    compiled, one sweep each where NumPy makes one per ufunc.  The same code runs
    #    with or without output buffers, so every caller gets the same bits.
    def matmul(self, a, b, out=None):
        """a @ b on the compiled epoch's BLAS (NumPy's where found): a second
        library's threads would spin on the cores the epoch needs
        (numba_cpu_blas.py)."""
        return blas.matmul(a, b, out)

    def dense_forward(self, a_prev, W, b, activation, out=None):
        b = b.reshape(1, -1)
        out = _buffer(out, (a_prev.shape[0], W.shape[0]), a_prev)
        if not _compilable(out, b, gemm=(a_prev, W)):
            return super().dense_forward(a_prev, W, b[0], activation, out)
        self.matmul(a_prev, W.T, out)                            # z = a_prev @ W.T
        _run("_bias_sigma_op", out, b, _code(activation))       # a = sigma(z + b)
        return out

    def output_delta(self, a, y, loss, activation, out=None):
        out = _buffer(out, a.shape, a)
        if not _compilable(out, a, y) or loss.name not in ("sse", "mse", "cross_entropy"):
            return super().output_delta(a, y, loss, activation, out)
        _run("_output_delta_op", a, y, loss.code, _code(activation), out)
        return out

    def delta_propagate(self, delta, W, a_prev, activation, out=None):
        out = _buffer(out, (delta.shape[0], W.shape[1]), delta)
        if not _compilable(out, a_prev, gemm=(delta, W)):
            return super().delta_propagate(delta, W, a_prev, activation, out)
        self.matmul(delta, W, out)                                 # delta @ W
        _run("_times_dsigma_op", out, a_prev, _code(activation))  # * sigma'(z_prev)
        return out

    def weight_gradient(self, delta, a_prev, scale, dW=None, db=None):
        dW = _buffer(dW, (delta.shape[1], a_prev.shape[1]), delta)
        db = _buffer(db, (delta.shape[1],), delta)
        if db is None or not _compilable(delta, dW, db.reshape(1, -1), gemm=(a_prev,)):
            return super().weight_gradient(delta, a_prev, scale, dW, db)
        self.matmul(delta.T, a_prev, dW)            # sum over the batch of outer products
        _run("_gradient_scale_op", delta, delta.dtype.type(scale), dW, db.reshape(1, -1))
        return dW, db

    def fuses(self, hyper):
        """The compiled epoch runs any table activation and the three costs.
        Whether it is faster than the trainer's loop depends on the shape and
        the machine: the trainer measures that (autotune.py)."""
        return hyper.loss.name in ("sse", "mse", "cross_entropy") and \
            all(a in activations.CODES for a in hyper.activations)

    def train_epoch(self, params, state, X, Y, order, hyper):
        dtype = params[0][0].dtype
        for W, b in params:
            if not (W.flags.c_contiguous and b.flags.c_contiguous) or W.dtype != dtype \
                    or b.dtype != dtype:
                raise ValueError(f"train_epoch needs C-contiguous {dtype} parameters")
        kernels.use_table()
        sizes = [params[0][0].shape[1]] + [W.shape[0] for W, _ in params]
        bs, n = hyper.batch_size, len(order)
        ws = self.workspace(sizes, bs, dtype)
        codes = np.array([activations.CODES[a] for a in hyper.activations], np.int64)
        order = np.ascontiguousarray(order, np.int64)
        X, Y, t = np.ascontiguousarray(X, dtype), np.ascontiguousarray(Y, dtype), dtype.type
        step_costs = np.full(-(-n // bs), np.nan)
        n_correct, full = 0, n // bs * bs
        # the full batches, then the last, smaller one (its own buffers and scale)
        for first, stop in ((0, full), (full, n)):
            if stop == first:
                continue
            rows = min(bs, stop - first)
            lists = self._lists(params, state, ws, rows)
            consts = (t(hyper.lr), t(hyper.momentum), t(hyper.weight_decay), hyper.loss.code,
                      t(hyper.scale(rows, sizes[-1])), t(np.finfo(dtype).tiny))
            parts = self._parts(rows)
            run = self._steps if parts == 1 else self._split_steps
            block = blocks.COLUMN_BLOCK if max(sizes) * blocks.COLUMN_BLOCK * dtype.itemsize \
                <= BLOCK_BYTES else rows
            # the machine's small-GEMM choice is timed (the first time) out here, with
            # BLAS's own thread count, whichever shape happens to ask for it first
            gemm_rows = min(block, -(-rows // parts))
            hand = np.array([gemm_rows * k * n < blocks.SMALL_GEMM and
                             self._hand_small_gemms(dtype) for k, n in zip(sizes, sizes[1:])],
                            np.uint8)
            with self._blas_threads(self.threads if parts == 1 else 1):
                correct, bad_step = run(lists, ws.grads, ws.y[:rows], codes, (hand, block), X, Y,
                                        order[first:stop], consts,
                                        step_costs[first // bs:-(-stop // bs)], parts)
            n_correct += correct
            if bad_step >= 0:
                return step_costs, n_correct, first // bs + bad_step
        return step_costs, n_correct, -1

    def _parts(self, rows):
        """Threads that share each step of `rows` rows: a part of at least
        PART_ROWS rows per thread (threads=, else every usable core)."""
        threads = self.threads or usable_cores()
        return max(1, min(threads, rows // PART_ROWS))

    def _hand_small_gemms(self, dtype):
        """True where the epoch's own kernel runs the small forward GEMMs: by
        small_gemm, or for "auto" the machine's choice, timed once per dtype
        at SMALL_GEMM_PROBE (Nielsen's forward GEMM) and recorded
        (autotune.kernel_choice).  One choice per machine, not per shape, and
        the hand kernel only where it wins by HAND_MARGIN: two processes that
        each time it (one reading another record file) choose the same, and
        so train to the same bits."""
        if self.small_gemm != "auto":
            return self.small_gemm == "hand"
        known = self.__dict__.setdefault("_hand", {})
        if dtype not in known:
            known[dtype] = autotune.kernel_choice(
                "small forward GEMM", {"backend": self.name, "shape": list(SMALL_GEMM_PROBE),
                                       "dtype": str(dtype), "hand": HAND_KERNEL,
                                       "blas": blas.library()[0]},
                functools.partial(_time_forward, *SMALL_GEMM_PROBE, dtype), ("BLAS", "hand"),
                margin=HAND_MARGIN) == "hand"
        return known[dtype]

    def _steps(self, lists, grads, y, codes, blocking, X, Y, order, consts, step_costs, parts):
        """The steps in one compiled call: (n_correct, bad step or -1);
        blocking = (hand, block) as _forward_cost takes them."""
        scratch = self._part_buffers(grads, lists[4:], 1)[0][2:]
        args = (*lists, *scratch, y, codes, *blocking, blas.gemm(y.dtype),
                blas.scratch(y.dtype), X, Y, order, *consts, step_costs)
        epoch = kernels.ready("_epoch", (numba.typeof(X), numba.typeof(Y)),
                              lambda: (*args[:-1], args[-1][:0]))       # zero steps
        correct, bad_step, _ = epoch(*args)
        return correct, bad_step

    def _split_steps(self, lists, grads, y, codes, blocking, X, Y, order, consts, step_costs,
                     parts):
        """The steps with each step's rows split into `parts` even runs, one
        per thread (the GIL released); their gradient sums are added in part
        order, so the bits do not depend on which finishes first."""
        params, velocities, a, delta, dW, db = lists
        lr, mu, wd, loss_code, scale, tiny = consts
        hand, block = blocking
        rows = y.shape[0]
        bounds = [p * rows // parts for p in range(parts + 1)]
        buffers = self._part_buffers(grads, (dW, db), parts)
        gemm = blas.gemm(y.dtype)
        scratch = [blas.scratch(y.dtype) for _ in range(parts)]     # one per thread
        run_part = kernels.ready("_part_op", (numba.typeof(X), numba.typeof(Y)), lambda: (
            params, a, delta, y, codes, hand, X, Y, order, 0, 0, 0, block, loss_code, tiny,
            *buffers[0][:4], gemm, scratch[0]))
        update = kernels.ready("_update_op", y.dtype, lambda: _scratch_update(y.dtype))
        pool = thread_pool(parts - 1)
        n_correct = 0
        for s in range(step_costs.shape[0]):
            def part(p, start=s * rows):
                return run_part(params, a, delta, y, codes, hand, X, Y, order, start, bounds[p],
                                bounds[p + 1], block, loss_code, tiny, *buffers[p][:4], gemm,
                                scratch[p])
            others = [pool.submit(part, p) for p in range(1, parts)]
            try:
                results = [part(0)] + [f.result() for f in others]
            finally:                 # on an error too: no part still writing the buffers
                concurrent.futures.wait(others)
            step_costs[s] = sum(cost for cost, _, _ in results)
            if not math.isfinite(step_costs[s]):
                return n_correct, s
            n_correct += sum(correct for _, correct, _ in results)
            update(params, velocities, dW, db, *buffers[-1], scale, lr, mu, wd)
        return n_correct, -1

    def _part_buffers(self, grads, sums, parts):
        """Per part (dW, db, block scratch dW, db) typed Lists, part 0 summing
        into `sums` (the workspace's dW, db Lists of this call), then the other
        parts' dW, db flattened for _update_op.  The other parts' arrays are
        made once per shape, like the workspace's grads [(dW, db), ...]."""
        key = (tuple(dW.shape for dW, _ in grads), grads[0][0].dtype, parts)
        made = self.__dict__.setdefault("_parts_own", {})
        if key not in made:
            if len(made) > 2:                    # another network shape: free the old
                made.clear()
            arrays = [([np.empty_like(dW) for dW, _ in grads],
                       [np.empty((1, db.size), db.dtype) for _, db in grads])
                      for _ in range(2 * parts - 1)]
            own = [(_typed(dWs), _typed(dbs)) for dWs, dbs in arrays]
            like = grads[0][0]
            more = (_typed([g for dWs, _ in arrays[parts:] for g in dWs], like),
                    _typed([g for _, dbs in arrays[parts:] for g in dbs], like))
            made[key] = own, more
        own, more = made[key]
        sums = [tuple(sums)] + own[parts:]
        return [(*sums[p], *own[p]) for p in range(parts)] + [more]

    @staticmethod
    def _lists(params, state, ws, rows):
        """Typed Lists (one compiled signature at every depth) of the 2-D arrays:
        [W_1, b_1 (1, n_1), ...], the velocities alike (or none), the first
        `rows` rows of a_0..a_L and of the deltas, and the dW and db (1, n) buffers."""
        groups = ([p for W, b in params for p in (W, b.reshape(1, -1))],
                  [v for vW, vb in state.velocities if vW is not None
                   for v in (vW, vb.reshape(1, -1))],
                  [a[:rows] for a in (ws.x, *ws.a)], [d[:rows] for d in ws.delta],
                  [dW for dW, _ in ws.grads], [db.reshape(1, -1) for _, db in ws.grads])
        return [_typed(group, ws.x) for group in groups]

    def _blas_threads(self, threads):
        """A context running BLAS on `threads` threads (no-op for None)."""
        if threads is None:
            return contextlib.nullcontext()
        if self._blas is None:
            from threadpoolctl import ThreadpoolController

            blas.library()            # the epoch's BLAS is loaded before the scan

            self._blas = ThreadpoolController()
        return self._blas.limit(limits=threads, user_api="blas")


def _typed(arrays, like=None):
    """A numba typed List of 2-D arrays (of like's type when it is empty)."""
    return kernels.list_of(tuple(arrays)) if len(arrays) else kernels.empty_list_of(like)


def _time_forward(rows, k, n, dtype, kernel, reps):
    """Seconds of `reps` forward GEMMs (rows, k) @ (n, k).T by `kernel`
    ("hand" or "BLAS") on random data (autotune.kernel_choice's run)."""
    rng = np.random.default_rng(0)
    x, W = rng.random((rows, k)).astype(dtype), rng.random((n, k)).astype(dtype)
    z = np.empty((rows, n), dtype)
    t0 = time.perf_counter()
    blocks._time_forward(x, W, z, kernel == "hand", blas.gemm(dtype), blas.scratch(dtype), reps)
    return time.perf_counter() - t0


def _scratch_update(dtype):
    """_update_op's arguments on one-element scratch arrays (a call changes nothing)."""
    one = [np.zeros((1, 1), dtype)]
    t = np.dtype(dtype).type
    return (_typed(one * 2), _typed([], one[0]), _typed(one), _typed(one), _typed([], one[0]),
            _typed([], one[0]), t(1), t(0), t(0), t(0))
