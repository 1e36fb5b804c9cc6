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

The ops between steps (dense_forward, ...) are the base class's NumPy ones;
the trainer calls train_epoch whenever fuses(hyper) says yes.

GEMMs are `np.dot(a, b, out)`, which Numba runs on SciPy's BLAS.  Measured
on the 2-core CI machine against plain compiled loops (float32, us per call,
BLAS / loops): Nielsen's 784->30 layer at batch 10: forward 4.2 / 26, weight
gradient 3.7 / 21; its 30->10 layer 0.45 / 0.91; 784->256 at batch 128:
376 / 3746.  BLAS wins at every size, so there are no hand-written GEMMs;
the loops left are element-wise, written so LLVM vectorises them (2-D
indexing with loop invariants in locals: row views cost an atomic reference
count each) and inlined into the epoch.  BLAS-bound steps (784x256x256 at
batch 128, [64]*6 at batch 8192, 1024-wide) run as fast as the trainer's
NumPy loop; Nielsen's recipe about 3x faster than it, in the trainer.

Compilation: one signature per dtype, compiled on first use and cached on
disk (cache=True; ~0.3 s to load).  Activations come from activations.TABLE
through one generated dispatch function; the compiled epoch returns the
fingerprint of the table it was built from, and a cache entry built from
another table (activations.py edited) is recompiled.  A table changed at run
time (activations.register) gets its own uncached kernels.

Bits: a seed gives the same bits every run, compiled or loaded from the
cache (tests/test_numba_cache.py), with the same BLAS thread count: wide
layers use several BLAS threads, and another count (`threads=`) can change
the last bit of a GEMM.
"""
import contextlib
import math
import threading

import numba
import numpy as np
from numba import njit
from numba.typed import List

from .. import activations
from ..checks import positive_int
from ..losses import Loss
from .base import Backend

_SOFTMAX, _IDENTITY = activations.CODES["softmax"], activations.CODES["identity"]
_CROSS_ENTROPY = Loss.CODES["cross_entropy"]     # the other costs are squared errors
NOTICE = "compiling the CPU kernels, first run only ..."
#: steps with more activations than this (batch x sum of layer widths) run the
#: trainer's NumPy loop instead of the compiled epoch (see fuses)
FUSED_MAX_ELEMENTS = 2 ** 20

# Set by _use_table for the activation table in use: its scalar dispatchers
# (code, x) -> sigma(x) / sigma'(a) and fingerprint.  The kernels that call
# them read these globals when they compile.
_sigma = _dsigma = None
_TABLE_HASH = 0


# -- the compiled epoch ------------------------------------------------------------
@njit(inline="always")
def _gather(X, order, start, out):
    """out[i] = X[order[start + i]]: the batch's rows."""
    for i in range(out.shape[0]):
        r = order[start + i]                     # (loop invariants in locals: the
        for k in range(out.shape[1]):            #  inner loops vectorise)
            out[i, k] = X[r, k]


@njit(inline="always")
def _softmax_rows(z, a):
    """a = e^(z - max) / sum e^(z - max), row by row (a may be z)."""
    for i in range(z.shape[0]):
        m = z[i, 0]
        for j in range(z.shape[1]):
            m = max(m, z[i, j])
        total = 0.0
        for j in range(z.shape[1]):
            a[i, j] = math.exp(z[i, j] - m)
            total += a[i, j]
        for j in range(z.shape[1]):
            a[i, j] /= total


def _dense_forward(a_prev, W, b, code, a):
    """a = sigma(a_prev @ W.T + b)."""
    np.dot(a_prev, W.T, a)                       # z = a_prev @ W.T
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            a[i, j] += b[j]                      #     + b
    if code == _SOFTMAX:
        _softmax_rows(a, a)
    else:
        _sigma(code, a)


def _times_dsigma(g, a, code):
    """g *= sigma'(z), taken from a = sigma(z)."""
    _dsigma(code, (g, a))


def _sigma_loop(sigma):
    """a = sigma(a) element by element, a loop per activation (the code is
    looked up once per array, and the loop can vectorise)."""
    @njit
    def loop(a):
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                a[i, j] = sigma(a[i, j])
        return a
    return loop


def _dsigma_loop(dsigma):
    """g *= dsigma(a) element by element, for x = (g, a)."""
    @njit
    def loop(x):
        g, a = x
        for i in range(g.shape[0]):
            for j in range(g.shape[1]):
                g[i, j] = g[i, j] * dsigma(a[i, j])
        return x
    return loop


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


@njit(inline="always")
def _cost(a, y, loss_code, code, tiny):
    """(sum over the rows of C0, rows with argmax a == argmax y), as losses.Loss."""
    total, correct = 0.0, 0
    for i in range(a.shape[0]):
        ia = iy = 0                              # argmax, first maximum wins
        for j in range(a.shape[1]):
            ia = j if a[i, j] > a[i, ia] else ia
            iy = j if y[i, j] > y[i, iy] else iy
        correct += ia == iy
        if loss_code != _CROSS_ENTROPY:
            for j in range(a.shape[1]):
                total += (a[i, j] - y[i, j]) ** 2
        elif code == _SOFTMAX:
            for j in range(a.shape[1]):
                total -= y[i, j] * math.log(max(a[i, j], tiny))
        else:                                    # identity logits: stable log softmax
            m, lse = a[i, ia], 0.0
            for j in range(a.shape[1]):
                lse += math.exp(a[i, j] - m)
            for j in range(a.shape[1]):
                total -= y[i, j] * (a[i, j] - m - math.log(lse))
    return total, correct


@njit(inline="always")
def _sgd_update(W, b, vW, vb, delta, a_prev, dW, scale, lr, mu, wd, momentum):
    """optim.SGD.step with (dW, db) = scale (delta.T @ a_prev, delta.sum(0)),
    on W, b and their velocities vW, vb (not used without momentum):
    g = grad + wd p;  v = mu v + g;  p = p - lr v   (p = p - lr g without momentum).
    wd p is added even for wd = 0: g + 0 is g, the same arithmetic as SGD.step."""
    np.dot(delta.T, a_prev, dW)                  # sum over the batch of outer products
    for j in range(W.shape[0]):
        if momentum:
            for k in range(W.shape[1]):
                vW[j, k] = mu * vW[j, k] + (dW[j, k] * scale + wd * W[j, k])
                W[j, k] = W[j, k] - lr * vW[j, k]
        else:
            for k in range(W.shape[1]):
                W[j, k] = W[j, k] - lr * (dW[j, k] * scale + wd * W[j, k])
        db = delta[0, j]
        for i in range(1, delta.shape[0]):
            db += delta[i, j]
        gb = db * scale + wd * b[j]
        if momentum:
            vb[j] = mu * vb[j] + gb
            gb = vb[j]
        b[j] = b[j] - lr * gb


def _epoch(params, velocities, a, delta, dW, y, codes, X, Y, order, lr, mu, wd, loss_code,
           scale, tiny, step_costs):
    """The SGD steps over the batches order[0:B], order[B:2B], ... with B =
    len(y) rows each (len(order) is a multiple of B; `scale` is for B rows).
    params = [W_1, b_1 (1, n_1), W_2, ...] and velocities (the same, or
    empty) are updated in place; a (a_0..a_L), delta, dW and y are the (B, n)
    buffers.  step_costs[s] = step s's sum of C0; stops before the update of
    the first step whose cost is not finite.  Returns (n_correct, bad_step,
    _TABLE_HASH)."""
    L, B = len(codes), y.shape[0]
    momentum = len(velocities) > 0
    n_correct, bad_step = 0, -1
    for s in range(step_costs.shape[0]):
        _gather(X, order, s * B, a[0])
        _gather(Y, order, s * B, y)
        for l in range(L):                           # forward
            _dense_forward(a[l], params[2 * l], params[2 * l + 1][0], codes[l], a[l + 1])
        cost, correct = _cost(a[L], y, loss_code, codes[L - 1], tiny)
        step_costs[s] = cost
        if not math.isfinite(cost):
            bad_step = s
            break
        n_correct += correct
        _output_delta(a[L], y, loss_code, codes[L - 1], delta[L - 1])
        for l in range(L - 1, -1, -1):               # backward, layer by layer:
            W, b = params[2 * l], params[2 * l + 1][0]
            if l > 0:                                # delta through the old W_l, then
                np.dot(delta[l], W, delta[l - 1])    # W_l's gradient and update
                _times_dsigma(delta[l - 1], a[l], codes[l - 1])
            vW, vb = (velocities[2 * l], velocities[2 * l + 1][0]) if momentum else (W, b)
            _sgd_update(W, b, vW, vb, delta[l], a[l], dW[l], scale, lr, mu, wd, momentum)
    return n_correct, bad_step, _TABLE_HASH


# -- one set of kernels per activation table ------------------------------------------
_TABLE_KERNELS = {f.__name__: f for f in (_dense_forward, _times_dsigma, _output_delta,
                                           _epoch)}
_KERNEL_SETS = {}            # table key -> the globals of its kernels
_table_key = None
_checked = set()             # (table key, X and Y types): compiled epochs checked here


def _use_table():
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
                   "_TABLE_HASH": activations.fingerprint()}
        for name, fn in _TABLE_KERNELS.items():     # helpers inlined into the epoch
            options = {"cache": not _KERNEL_SETS} if name == "_epoch" else {"inline": "always"}
            kernels[name] = njit(**options)(fn)
        _KERNEL_SETS[key] = kernels
    globals().update(_KERNEL_SETS[key])
    _table_key = key


_use_table()


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


def _ready(args):
    """Compile or load the epoch for these arguments' types (zero steps), and
    recompile it if the cached code was built from another activation table."""
    key = (_table_key, numba.typeof(args[7]), numba.typeof(args[8]))   # X, Y
    if key in _checked:
        return
    with _notice_if_slow():          # zero steps: compiles, or loads from the cache
        if _epoch(*args[:-1], args[-1][:0])[2] != _TABLE_HASH:
            _epoch.recompile()
    _checked.add(key)


class NumbaCPUBackend(Backend):
    """The NumPy reference ops plus train_epoch, the compiled SGD epoch.

    threads: BLAS threads during train_epoch (None: BLAS's own count).  The
    count can change the last bits of wide layers' GEMMs; a run that must
    repeat bit for bit on other machines fixes it."""

    name = "numba"
    device_kinds = ("cpu",)

    def __init__(self, device, threads=None):
        super().__init__(device)
        self.threads = None if threads is None else positive_int("threads", threads)
        self._blas = None

    @classmethod
    def unavailable_reason(cls, device):
        try:
            import scipy.linalg.cython_blas  # noqa: F401 - numba's np.dot calls SciPy's BLAS
        except ImportError as exc:
            return f"backend 'numba' needs SciPy for BLAS in compiled code ({exc})"
        return None

    def check_network(self, sizes, activations_, dtype):
        if np.dtype(dtype) not in (np.float32, np.float64):
            raise ValueError(f"backend 'numba' trains float32 or float64 networks; got {dtype}")

    def fuses(self, hyper):
        """The compiled epoch runs when a step is small enough that the NumPy
        loop's per-op overhead dominates: batch x sum(n_1..n_L) below
        FUSED_MAX_ELEMENTS.  Above it both are BLAS-bound and NumPy's
        element-wise passes beat the compiled ones (measured crossover on the
        2-core CI machine, float32: [784, 256, 256, 10] at batch 2048 (1.07M
        elements) 0.98x, [64]*6 + [10] at batch 8192 (2.7M) 0.92x, at 1024
        (0.34M) 1.22x: bench/RESULTS.md)."""
        small = not hyper.sizes or hyper.batch_size * sum(hyper.sizes[1:]) < FUSED_MAX_ELEMENTS
        return small and hyper.loss.name in ("sse", "mse", "cross_entropy") and \
            all(a in activations.CODES for a in hyper.activations)

    def train_epoch(self, params, state, X, Y, order, hyper):
        dtype = params[0][0].dtype
        for W, b in params:
            if not (W.flags.c_contiguous and b.flags.c_contiguous) or W.dtype != dtype \
                    or b.dtype != dtype:
                raise ValueError(f"train_epoch needs C-contiguous {dtype} parameters")
        _use_table()
        sizes = [params[0][0].shape[1]] + [W.shape[0] for W, _ in params]
        bs, n = hyper.batch_size, len(order)
        ws = self.workspace(sizes, bs, dtype)
        codes = np.array([activations.CODES[a] for a in hyper.activations], np.int64)
        order = np.ascontiguousarray(order, np.int64)
        X, Y, t = np.ascontiguousarray(X, dtype), np.ascontiguousarray(Y, dtype), dtype.type
        step_costs = np.full(-(-n // bs), np.nan)
        n_correct, full = 0, n // bs * bs
        with self._blas_threads():
            # the full batches, then the last, smaller one (its own buffers and scale)
            for first, stop in ((0, full), (full, n)):
                if stop == first:
                    continue
                rows = min(bs, stop - first)
                args = (*self._lists(params, state, ws, rows), ws.y[:rows], codes, X, Y,
                        order[first:stop], t(hyper.lr), t(hyper.momentum),
                        t(hyper.weight_decay), hyper.loss.code,
                        t(hyper.scale(rows, sizes[-1])), t(np.finfo(dtype).tiny),
                        step_costs[first // bs:-(-stop // bs)])
                _ready(args)
                correct, bad_step, _ = _epoch(*args)
                n_correct += correct
                if bad_step >= 0:
                    return step_costs, n_correct, first // bs + bad_step
        return step_costs, n_correct, -1

    @staticmethod
    def _lists(params, state, ws, rows):
        """Typed Lists (one compiled signature at every depth) of the 2-D arrays:
        [W_1, b_1 (1, n_1), ...], the velocities alike (or none), the first
        `rows` rows of a_0..a_L and of the deltas, and the dW buffers."""
        groups = ([p for W, b in params for p in (W, b.reshape(1, -1))],
                  [v for vW, vb in state.velocities if vW is not None
                   for v in (vW, vb.reshape(1, -1))],
                  [a[:rows] for a in (ws.x, *ws.a)], [d[:rows] for d in ws.delta],
                  [dW for dW, _ in ws.grads])
        lists = []
        for group in groups:
            lists.append(List.empty_list(numba.typeof(ws.x)))
            for array in group:
                lists[-1].append(array)
        return lists

    def _blas_threads(self):
        """A context running BLAS on self.threads threads (no-op for None)."""
        if self.threads is None:
            return contextlib.nullcontext()
        if self._blas is None:
            import scipy.linalg.cython_blas  # noqa: F401 - load SciPy's BLAS before the scan
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController()
        return self._blas.limit(limits=self.threads, user_api="blas")
