"""Trainer: mini-batch SGD over a data set, epoch after epoch.

Each epoch shuffles the examples with a seeded generator and runs SGD steps
over the mini-batches: the one loop of this project, Nielsen's `SGD` and
`update_mini_batch` (see `_steps`): gather the batch, feedforward, backward,
the gradients, then `optimizer.step(params, grads, state)`.  A backend with a
fused fast path (`backend.fuses(hyper)`) can run a whole run of steps in
`train_epoch` instead, with the same numbers; whether it does is `fast_path`
("auto": the faster, measured once per shape and machine, autotune.py).  The
data set is moved to the network's device once; the host reads back a few
numbers per epoch.
"""
import math
import time

import numpy as np

from . import autotune, distributed, inputs, losses, memory
from .divergence import Snapshot, check_marks, check_params, params_finite
from .checks import boolean, positive_int
from .backends.base import Hyper
from .checkpoint import Checkpoint, checkpoint_options
from .device import is_cupy_array, to_host
from .guards import deferred_interrupt, exclusive, interrupted_message
from .history import History, TrainingDiverged
from .optim import SGD
from .progress import ProgressBar
from .tensor import unwrap


class Trainer:
    """trainer = Trainer(net, loss="sse", optimizer=SGD(lr=3.0), batch_size=10, seed=0)

    comm: a communicator from gpubackprop.distributed.init() for data-parallel
    training (batch_size is then the GLOBAL batch, split over the ranks);
    None is the one-rank world.  fast_path: "auto" (the faster of the
    backend's fast path and the loop, measured once per shape and machine:
    autotune.py), True (the fast path; an error where the backend has none
    for the run) or False (the loop).  After a fit, `path_choice` says which
    ran and why."""

    def __init__(self, net, loss="sse", optimizer=None, batch_size=10, seed=0, reduction="mean",
                 comm=None, fast_path="auto"):
        from .network import MLP

        if not isinstance(net, MLP):
            raise TypeError(f"net must be a gpubackprop.MLP; got {type(net).__name__}")
        self.net = net
        self.loss = losses.get(loss, reduction)
        self.loss.check_output(net.layers[-1].activation)
        if optimizer is None:
            optimizer = SGD()
        if not isinstance(optimizer, SGD):
            raise TypeError(f"optimizer must be a gpubackprop.SGD; got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.batch_size = positive_int("batch_size", batch_size)
        self.seed = positive_int("seed", seed, minimum=0)
        self.rng = np.random.default_rng(self.seed)
        if comm is None:
            comm = distributed.local()
        if not isinstance(comm, distributed.Communicator):
            raise TypeError(f"comm must come from gpubackprop.distributed.init(); "
                            f"got {type(comm).__name__}")
        self.comm = comm
        self.fast_path = fast_path
        #: the autotune.Choice of the last fit: fast path or loop, and why
        self.path_choice = None
        self.history = History()
        self._interrupted = False       # set by Ctrl-C during fit (see guards.deferred_interrupt)
        #: the optimizer's state (optim.SGDState), made on the first fit
        self.state = None
        self._last_good = None   # divergence.Snapshot, copied into again (kept between CPU fits)

    @property
    def batch_size(self):
        """Examples per SGD step; checked where it is set (and again at fit)."""
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value):
        self._batch_size = positive_int("batch_size", value)

    @property
    def fast_path(self):
        """"auto", True or False: see the class docstring."""
        return self._fast_path

    @fast_path.setter
    def fast_path(self, value):
        if not (value == "auto" if isinstance(value, str) else isinstance(value, bool)):
            raise ValueError(f"fast_path must be 'auto', True or False; got {value!r}")
        self._fast_path = value

    # -- data ---------------------------------------------------------------
    def _data(self, X, Y, name):
        net = self.net
        X = inputs.features(X, net.n_in, net.device, net.dtype, argument=f"{name} X")
        Y = inputs.targets(Y, net.n_out, X.shape[0], net.device, net.dtype, argument=f"{name} Y",
                           loss=self.loss)
        return X, Y

    def evaluate(self, X, Y, chunk=8192):
        """{"loss": mean cost per example, "accuracy": fraction correct} on (X, Y)."""
        chunk = positive_int("chunk", chunk)
        X, Y = self._data(X, Y, "evaluate")
        total, correct = self._evaluate(X, Y, chunk)
        return self.loss.metrics(total, correct, X.shape[0], self.net.n_out)

    def _evaluate(self, X, Y, chunk=8192):
        """(sum of C0, number correct) over (X, Y), in chunks; one read-back."""
        xp, net = self.net.device.xp, self.net
        out_act = net.layers[-1].activation
        total = xp.zeros((), dtype=X.dtype)
        correct = xp.zeros((), dtype=xp.int64)
        for start in range(0, X.shape[0], chunk):
            x, y = X[start:start + chunk], Y[start:start + chunk]
            a = net.feedforward(x)[-1]
            total += self.loss.total(a, y, out_act, xp)
            correct += (a.argmax(axis=1) == y.argmax(axis=1)).sum()
        total, correct = to_host(xp.stack([total.astype(xp.float64), correct.astype(xp.float64)]))
        return float(total), float(correct)

    # -- training -------------------------------------------------------------
    def fit(self, X, Y, epochs=1, validation=None, checkpoint=None, checkpoint_every=None,
            resume=False, progress=None, callback=None):
        """Train for `epochs` epochs; returns this fit's History (also
        self.history): a new one each fit, its epochs counted from 1, and for
        a resumed run the checkpoint's, continued.

        validation: (X_val, Y_val) evaluated after each epoch.
        checkpoint: path of a checkpoint written atomically after every epoch
            (and every `checkpoint_every` steps); with resume=True the
            checkpoint there is loaded and training continues where it stopped
            (FileNotFoundError if there is none: a mistyped path must not
            start over); resume="auto" continues if there is one, else starts.
            The path is locked for the run (RuntimeError naming the pid of
            another run using it) and proven writable before the first step.
        progress: a progress bar on stderr (None: only when it is a terminal).
        callback: called as callback(record) after each epoch.

        Every argument is checked before any work (ValueError/TypeError naming
        it).  A NaN/inf cost or parameter raises TrainingDiverged(epoch, step)
        with the parameters and momentum buffers of the epoch start or of the
        last checkpoint restored (checked after every run of steps on the CPU;
        on a GPU only at checkpoints and at the epoch's one read-back).  On a
        CUDA device the run's memory (memory.estimate) is compared with the
        free memory first, and an out-of-memory error during training is
        raised as memory.DeviceOutOfMemory with the estimate.  On the CPU the
        same seed gives bitwise the same parameters, resumed or not.

        One fit at a time per network: a second fit on it (another thread,
        Trainer or a callback) raises RuntimeError at once.  Ctrl-C lets the
        step under way finish and raises KeyboardInterrupt there, saying
        where the last good checkpoint is.
        """
        net = self.net
        # -- every argument is checked before any work ---------------------------
        epochs = positive_int("epochs", epochs)
        self.batch_size = positive_int("batch_size", self.batch_size)   # a user may have set it
        self.optimizer.check()
        checkpoint_every, resume = checkpoint_options(checkpoint, checkpoint_every, resume)
        progress = boolean("progress", progress, allow_none=True)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable; got {type(callback).__name__}")
        if validation is not None:
            if not isinstance(validation, (tuple, list)) or len(validation) != 2:
                raise TypeError("validation must be a pair (X_val, Y_val); got "
                                + (f"{len(validation)} items" if isinstance(validation, (
                                    tuple, list)) else type(validation).__name__))
        ckpt = Checkpoint(checkpoint, self, 0) if checkpoint is not None else None
        oom = memory.oom_types(net.device)
        if net.device.kind == "cuda":
            self._check_memory(X, validation)
        try:
            with exclusive(net), deferred_interrupt(self):    # one fit per network; Ctrl-C
                return self._fit(X, Y, epochs, validation, ckpt, checkpoint_every, resume,
                                 progress, callback)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(interrupted_message(ckpt)) from None
        except oom as exc:
            n = inputs.rows(X)
            raise memory.out_of_memory_error(
                exc, net, min(self.batch_size, n or 1), n or 1,
                inputs.rows(validation[0]) if validation is not None else 0,
                momentum=self.optimizer.momentum > 0) from exc
        finally:
            if ckpt is not None:
                ckpt.release()           # the checkpoint's lock, if this fit took it
            if getattr(self, "_bar", None) is not None:
                self._bar.close()        # an error or Ctrl-C leaves no bar half drawn
                self._bar = None
            if net.device.kind == "cuda":
                self._last_good = None   # device memory back (the next fit's estimate counts it)

    def _check_memory(self, X, validation):
        """Before moving data to a CUDA device: does the run fit?"""
        n = inputs.rows(X)
        if not n:
            return   # the data checks will say what is wrong with X
        n_val = (inputs.rows(validation[0]) or 0) if validation is not None else 0
        memory.check_device(self.net, min(self.batch_size, n), n, n_val,
                            momentum=self.optimizer.momentum > 0,
                            data_on_device=is_cupy_array(unwrap(X)))

    def _fit(self, X, Y, epochs, validation, ckpt, checkpoint_every, resume, progress,
             callback):
        net = self.net
        X, Y = self._data(X, Y, "training")
        if self.batch_size > X.shape[0]:
            raise ValueError(f"batch_size ({self.batch_size}) is larger than the number of "
                             f"training examples ({X.shape[0]})")
        val = None
        if validation is not None:
            val = self._data(*validation, "validation")

        if not (resume and ckpt is not None and ckpt.exists()) \
                and not bool(to_host(params_finite(net))):
            raise ValueError("the network's parameters contain NaN or infinite values; "
                             "set finite ones (layer.set_params) before training")
        n, bs = X.shape[0], self.batch_size
        n_steps = math.ceil(n / bs)
        comm = self.comm
        if comm.communicates:      # before the first collective: do all ranks run this job?
            distributed.agree_on_run(self, X, Y, epochs=epochs, checkpoint=ckpt is not None,
                                     checkpoint_every=checkpoint_every, resume=resume)
        start_epoch, start_step, partial = 0, 0, _NO_PARTIAL
        self.history = History()         # this fit's (a resumed one: the checkpoint's)
        if not self.optimizer.state_fits(self.state, net.params):
            self.state = self.optimizer.init_state(net.params)
        if ckpt is not None:       # only rank 0 touches the file; the others follow it
            ckpt.n_samples = n
            comm.on_root(ckpt.claim, resume)   # lock it, prove it writable, stale temps
            if resume and comm.on_root(ckpt.exists):
                start_epoch, start_step, partial = comm.on_root(ckpt.restore)
        if comm.communicates:      # rank 0's parameters, momentum, shuffle and history
            distributed.broadcast_start(self)
        self.path_choice = self._choose_path(X, Y)
        bar = ProgressBar(epochs * n_steps, enabled=progress if comm.rank == 0 else False,
                          epochs=epochs)
        self._bar = bar                # closed by fit, however _fit ends
        bar.update(start_epoch * n_steps + start_step)
        chunk = min(checkpoint_every or n_steps, bar.chunk_steps(n_steps))

        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            rng_state = self.rng.bit_generator.state       # to replay this epoch's shuffle
            order = self._order(n)
            snapshot = self._snapshot()
            done_costs, n_correct = partial      # steps before a resumed checkpoint
            step, marks, costs = start_step, [], []
            while step < n_steps:
                stop = min(step + chunk, n_steps)
                if checkpoint_every:                       # land on every checkpoint step
                    stop = min(stop, (step // checkpoint_every + 1) * checkpoint_every)
                part = order[step * bs:stop * bs]
                with np.errstate(all="ignore"):   # overflow is reported as TrainingDiverged
                    out = self._steps(X, Y, part)
                costs.append(out[0])
                n_correct = n_correct + out[1]
                marks.append((step, out[2]))
                bar.update(epoch * n_steps + stop)
                if net.device.kind == "cpu":               # free to look on the CPU
                    check_marks(marks, epoch, snapshot)
                if ckpt is not None and checkpoint_every and stop % checkpoint_every == 0 \
                        and stop < n_steps:
                    check_marks(marks, epoch, snapshot)
                    check_params(net, epoch, stop, snapshot)
                    done_costs = np.concatenate([done_costs, *map(_host64, costs)])
                    costs, n_correct = [], int(to_host(n_correct))
                    comm.on_root(ckpt.save, epoch, stop, rng_state, (done_costs, n_correct))
                    snapshot = self._snapshot()
                step = stop
            start_step, partial = 0, _NO_PARTIAL
            loss_sum, n_correct, ok = self._epoch_sums(done_costs, costs, n_correct)  # one sync
            if not (math.isfinite(loss_sum) and ok):
                check_marks(marks, epoch, snapshot)
                snapshot.restore()
                raise TrainingDiverged(epoch, n_steps - 1)
            record = {"epoch": epoch + 1,
                      **self.loss.metrics(loss_sum, n_correct, n, net.n_out, prefix="")}
            if val is not None:
                record.update(self.loss.metrics(*self._evaluate(*val), val[0].shape[0],
                                       net.n_out, prefix="val_"))
            record["time"] = time.perf_counter() - t0
            self.history.append(record)
            if comm.communicates:  # bitwise the same parameters on every rank, or DesyncError
                distributed.check_in_sync(self, epoch)
            if ckpt is not None:
                comm.on_root(ckpt.save, epoch + 1, 0, self.rng.bit_generator.state, _NO_PARTIAL)
            bar.epoch_done(record)
            if callback is not None:
                callback(record)
        bar.close()
        return self.history

    def _snapshot(self):
        """The parameters and optimizer state now, copied into the last snapshot's arrays."""
        if self._last_good is None or self._last_good.net is not self.net:
            self._last_good = Snapshot(self.net, self.state)      # copies them
            return self._last_good
        return self._last_good.take(self.state)

    # -- the mini-batch loop ------------------------------------------------------
    def hyper(self):
        """The frozen record of what one SGD step does (for a fused fast path)."""
        opt = self.optimizer
        return Hyper(activations=tuple(self.net.activations),
                     loss=self.loss, batch_size=self.batch_size, lr=opt.lr,
                     momentum=opt.momentum, weight_decay=opt.weight_decay,
                     sizes=tuple(self.net.sizes))

    def _choose_path(self, X, Y):
        """The autotune.Choice of this fit: the backend's fast path or the loop."""
        backend, hyper = self.net.backend, self.hyper()
        applies = self.optimizer.fused_record() is not None and backend.fuses(hyper)
        if self.fast_path is True and not applies:
            raise ValueError(f"fast_path=True, but backend {backend.name!r} has no fast path "
                             f"for this run ({hyper.loss.name}, {self.optimizer!r}); use "
                             "fast_path='auto' or False")
        if not applies:
            return autotune.Choice(False, f"backend {backend.name!r} has no fast path for this "
                                   "run", {}, "rule")
        if self.comm.communicates:
            self.comm.say_once("fused", f"backend {backend.name!r} fuses the gradient with the "
                               "update, so data-parallel training runs the trainer's loop instead")
            return autotune.Choice(False, "data-parallel training all-reduces the gradients "
                                   "between steps: the loop", {}, "rule")
        if self.fast_path != "auto":
            return autotune.Choice(self.fast_path, f"fast_path={self.fast_path} was asked for",
                                   {}, "argument")
        xp = backend.xp

        def run(fast_path, steps):     # on the first rows, then back to the snapshot
            order = xp.arange(steps * self.batch_size) % X.shape[0]
            snapshot = self._snapshot()     # only when autotune measures
            try:
                with np.errstate(all="ignore"):
                    t0 = time.perf_counter()
                    self._steps(X, Y, order, fast_path)
                    return time.perf_counter() - t0
            finally:
                snapshot.restore()

        return autotune.choose(backend, hyper, X.dtype, run, self.net.backend_options)

    def _steps(self, X, Y, order, fast_path=None):
        """SGD steps over the batches order[0:bs], order[bs:2bs], ... (the last
        may be smaller) on the path of path_choice (or `fast_path`).  Returns
        device values (step_costs, n_correct, bad_step): each step's sum of C0
        before its update, the rows with argmax(a) == argmax(y), the first step
        whose cost was not finite (-1 if none).  Nothing here waits on the
        device."""
        net, hyper, comm = self.net, self.hyper(), self.comm
        backend = net.backend
        if self.path_choice.fast_path if fast_path is None else fast_path:
            out = backend.train_epoch(net.params, self.state, X, Y, order, hyper)
            if self._interrupted:       # Ctrl-C: stop after this run of steps
                raise KeyboardInterrupt
            return out
        xp, bs = backend.xp, self.batch_size
        n_steps = -(-len(order) // bs)
        step_costs = xp.empty(n_steps, dtype=X.dtype)
        n_correct = xp.zeros((), dtype=xp.int64)
        for s in range(n_steps):
            cost, correct = self._update_mini_batch(X, Y, order[s * bs:(s + 1) * bs], hyper)
            step_costs[s] = cost
            n_correct += correct
            if self._interrupted:           # Ctrl-C: stop at this step boundary
                raise KeyboardInterrupt
        if comm.communicates:      # each rank saw its shard: add them up, as float64
            step_costs, n_correct = distributed.sum_over_ranks(comm, step_costs, n_correct)
        finite = xp.isfinite(step_costs)
        bad_step = xp.where(finite.all(), -1, xp.argmin(finite))
        return step_costs, n_correct, bad_step

    def _update_mini_batch(self, X, Y, idx, hyper):
        """One SGD step on the rows `idx` of (X, Y), as Nielsen's
        update_mini_batch: forward, backward, gradients, update.  Returns
        (sum of the batch's C0 before the update, rows classified right)."""
        net, backend, comm = self.net, self.net.backend, self.comm
        xp, params, acts = backend.xp, net.params, hyper.activations
        B = len(idx)                          # the global batch
        idx = comm.shard(idx)                 # this rank's contiguous part of it (maybe empty)
        ws = backend.workspace(net.sizes, comm.shard_rows(self.batch_size), X.dtype)
        x, y, a_out, delta_out = ws.rows(len(idx))
        xp.take(X, idx, axis=0, out=x)
        xp.take(Y, idx, axis=0, out=y)
        a = backend.feedforward(params, acts, x, out=a_out)        # a_0 .. a_L
        cost = self.loss.total(a[-1], y, acts[-1], xp)
        correct = (a[-1].argmax(axis=1) == y.argmax(axis=1)).sum()
        delta = backend.backward(params, acts, a, y, self.loss, out=delta_out)
        scale = hyper.scale(B, net.n_out)     # 1/B of the GLOBAL batch: the ranks' parts add up
        nabla = [backend.weight_gradient(d, a_prev, scale, dW=dW, db=db)   # dC/dW, dC/db
                 for d, a_prev, (dW, db) in zip(delta, a[:-1], ws.grads)]
        comm.allreduce(ws.grad_buffer)        # sum over ranks: one flat buffer (one rank: no-op)
        self.optimizer.step(params, nabla, self.state)
        return cost, correct

    def _order(self, n):
        """This epoch's shuffle of 0..n-1, on the network's device."""
        order = self.rng.permutation(n)
        return self.net.device.asarray(order)

    def _epoch_sums(self, done_costs, costs, n_correct):
        """(cost sum, n_correct, parameters finite) with one read-back.

        The cost sum is math.fsum of every step's cost: exactly rounded, so it
        does not depend on how the epoch was split into runs of steps
        (checkpoints, progress bar, a resumed run)."""
        xp = self.net.device.xp
        tail = xp.stack([xp.asarray(n_correct, dtype=xp.float64),
                         params_finite(self.net).astype(xp.float64)])
        packed = to_host(xp.concatenate([c.astype(xp.float64).ravel() for c in costs] + [tail]))
        loss_sum = math.fsum(np.concatenate([done_costs, packed[:-2]]))
        return loss_sum, float(packed[-2]), bool(packed[-1])


_NO_PARTIAL = (np.empty(0), 0)      # (costs of the steps done in this epoch, n_correct)


def _host64(costs):
    """A run's per-step costs as a float64 NumPy array."""
    return np.asarray(to_host(costs), dtype=np.float64).ravel()
