"""Training checkpoints: everything needed to continue a run bit for bit.

A checkpoint is a plain safetensors file (see io.py).  Its tensors are the
parameters W0, b0, W1, b1, ..., the optimizer state's arrays (vW0, vb0, ...
with momentum, as `trainer.state.arrays()` names them) and `step_costs`, the
costs of the epoch's steps done so far.  Its metadata holds, as JSON
strings, the run's configuration, the optimizer's hyperparameters, the epoch
and step reached, the shuffling generator's state at the start of that
epoch, the examples classified right so far in it, and the history.  It is
written atomically, so a run killed at any moment leaves the previous good
checkpoint in place.

Resuming refuses, with a ValueError naming the file and what differs, a
checkpoint that is truncated or corrupted, of another format version, or
written by a run with another configuration (architecture, dtype, loss,
batch size, seed, number of training examples, momentum on/off).  Nothing in
the trainer changes until the whole file has been checked.
"""
import json
import math
import os

import numpy as np

from . import __version__, paths
from .checks import positive_int
from .device import to_host
from .history import History
from .io import check_network, is_int, is_real, load_file, remove_stale_temps, save_file

FORMAT = "gpubackprop.checkpoint"
#: the one version of the checkpoint format (2: safetensors; 1 was .npz)
FORMAT_VERSION = 2
#: the metadata entries stored as JSON strings
_JSON_KEYS = ("config", "optimizer", "epoch", "step", "rng_state", "n_correct", "history")


def checkpoint_options(checkpoint, checkpoint_every, resume):
    """Trainer.fit's checkpoint arguments checked: (checkpoint_every, resume)
    as the run uses them (TypeError/ValueError naming the argument)."""
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path (str or os.PathLike) or None; "
                        f"got {type(checkpoint).__name__}")
    if checkpoint_every is not None:
        checkpoint_every = positive_int("checkpoint_every", checkpoint_every)
        if checkpoint is None:
            raise ValueError("checkpoint_every needs checkpoint=PATH, the file to write")
    if not (isinstance(resume, str) and resume == "auto"):
        if not isinstance(resume, (bool, np.bool_)):
            raise TypeError(f"resume must be True, False or 'auto'; got {resume!r}")
        resume = bool(resume)
    if resume and checkpoint is None:
        raise ValueError(f"resume={resume!r} needs the checkpoint path to resume from")
    return checkpoint_every, resume


class Checkpoint:
    def __init__(self, path, trainer, n_samples):
        # a file path in a folder that exists; a symlink resolved once, a loop refused
        self.path = paths.output_path(path, "checkpoint")
        self.n_samples = int(n_samples)
        self.trainer = trainer
        self._lock = None
        self.saved = None       # (epoch, step) of the checkpoint this run wrote or resumed

    @property
    def n_steps(self):
        return -(-self.n_samples // self.trainer.batch_size)

    def exists(self):
        return os.path.exists(self.path)

    def remove_stale_temps(self):
        """Temporary files left by a writer killed mid-save (never the checkpoint)."""
        return remove_stale_temps(self.path)

    def claim(self, resume):
        """Before the first step: lock the path for this run (RuntimeError
        naming the pid of another run holding it), require the file when
        resume is True (FileNotFoundError), prove the folder takes a file of
        the checkpoint's size (OSError naming the path), and, as the lock's
        holder, remove dead writers' temporary files."""
        self._lock = paths.PathLock(self.path, "checkpoint").acquire()
        try:
            if resume is True and not self.exists():
                raise FileNotFoundError(f"nothing to resume at {self.path!r}: no checkpoint "
                                        "there; pass resume=False to start a new run (or "
                                        "resume='auto' to continue one only if it exists)")
            n_bytes = sum(W.nbytes + b.nbytes for W, b in self.trainer.net.params)
            factor = 2 if self.trainer.optimizer.momentum > 0 else 1
            paths.check_writable(self.path, "checkpoint", factor * n_bytes + (64 << 10))
            self.remove_stale_temps()
        except BaseException:
            self.release()
            raise

    def release(self):
        """Give up the lock taken by claim (nothing if none)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _config(self):
        """What must be equal for a resumed run to continue this one exactly."""
        t = self.trainer
        return {"network": t.net.metadata(), "loss": t.loss.name, "reduction": t.loss.reduction,
                "batch_size": t.batch_size, "seed": t.seed, "n_samples": self.n_samples,
                "momentum": t.optimizer.momentum > 0}

    def save(self, epoch, step, rng_state, partial):
        """Write the state at (epoch, step) of the run; rng_state is the
        generator's state before this epoch's shuffle, partial the (step
        costs, examples right) of the epoch's steps done."""
        t = self.trainer
        arrays = t.net.state_arrays()
        arrays.update({name: to_host(v) for name, v in t.state.arrays().items()})
        step_costs, n_correct = partial
        arrays["step_costs"] = np.asarray(step_costs, dtype=np.float64)
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "gpubackprop": __version__,
                "config": self._config(), "optimizer": t.optimizer.config(),
                "epoch": int(epoch), "step": int(step), "rng_state": rng_state,
                "n_correct": int(n_correct), "history": t.history.records}
        save_file(self.path, arrays, meta, what="checkpoint")
        self.saved = (int(epoch), int(step))

    # -- reading ----------------------------------------------------------------
    def restore(self):
        """Load the checkpoint into the trainer; returns (epoch, step, partial).

        Raises ValueError (and changes nothing) if the file is unreadable,
        corrupted, of another version or from a run configured differently."""
        t = self.trainer
        arrays, meta = load_file(self.path, FORMAT, FORMAT_VERSION, json_keys=_JSON_KEYS)
        self._check_config(meta, arrays)
        state = t.state
        if not t.optimizer.state_fits(state, t.net.params):
            state = t.optimizer.init_state(t.net.params)
        saved_state = self._check_arrays(arrays, state)
        epoch, step, rng_state, partial, history = self._check_progress(meta, arrays)
        # everything checked: now apply
        xp = t.net.device.xp
        for i, (W, b) in enumerate(t.net.params):
            W[...] = xp.asarray(arrays[f"W{i}"])
            b[...] = xp.asarray(arrays[f"b{i}"])
        state.load(saved_state)
        t.state = state
        t.rng.bit_generator.state = rng_state
        t.history = History(history)
        self.saved = (epoch, step)
        return epoch, step, partial

    def _bad(self, problem):
        return ValueError(f"{self.path}: corrupted checkpoint ({problem})")

    def _check_config(self, meta, arrays):
        """The run in the file is this run: same network, loss, batch, seed, data size."""
        expected, saved = self._config(), meta.get("config")
        if not isinstance(saved, dict):
            raise self._bad(f"'config' must be a JSON object; got {type(saved).__name__}")
        check_network(self.path, saved.get("network"), arrays, prefix="checkpoint network")
        diff = [f"{k}: checkpoint has {saved.get(k)!r}, this run has {expected.get(k)!r}"
                for k in sorted(set(expected) | set(saved))
                if _canonical(saved.get(k)) != _canonical(expected.get(k))]
        if diff:
            raise ValueError(f"{self.path}: the checkpoint does not match this run "
                             f"(differs in {'; '.join(diff)}); use another checkpoint path "
                             "or start a new run (without resuming)")

    def _check_arrays(self, arrays, state):
        """The optimizer state's arrays, with the names, shapes and dtypes of
        `state`'s, finite; nothing else but parameters and step_costs."""
        n_layers = len(self.trainer.net.layers)
        names = {f"{c}{i}" for i in range(n_layers) for c in "Wb"} | {"step_costs"}
        saved = {}
        for name, like in state.arrays().items():
            v = arrays.get(name)
            if v is None:
                raise self._bad(f"optimizer state {name!r} is missing")
            if v.shape != like.shape or v.dtype != like.dtype:
                raise self._bad(f"optimizer state {name!r} is {v.dtype} {v.shape}; "
                                f"expected {like.dtype} {like.shape}")
            if not np.isfinite(v).all():
                raise self._bad(f"optimizer state {name!r} contains NaN or infinite values")
            saved[name] = v
        extra = sorted(set(arrays) - names - set(saved))
        if extra:
            raise self._bad(f"unexpected arrays {extra}")
        return saved

    def _check_progress(self, meta, arrays):
        """(epoch, step, rng_state, partial, history), each checked."""
        t, bad = self.trainer, self._bad
        if not isinstance(meta.get("gpubackprop"), str):
            raise bad("'gpubackprop' must be a version string")
        opt = meta.get("optimizer")
        if not isinstance(opt, dict) or not all(is_real(opt.get(k)) and math.isfinite(opt[k])
                                                for k in ("lr", "momentum", "weight_decay")):
            raise bad(f"'optimizer' must hold finite lr, momentum, weight_decay; got {opt!r}")
        epoch, step = meta.get("epoch"), meta.get("step")
        if not is_int(epoch) or epoch < 0:
            raise bad(f"'epoch' must be an integer >= 0; got {epoch!r}")
        if not is_int(step) or not 0 <= step < self.n_steps:
            raise bad(f"'step' must be an integer in [0, {self.n_steps}); got {step!r}")
        rng_state = meta.get("rng_state")
        try:
            type(t.rng.bit_generator)().state = rng_state
        except Exception as exc:
            raise bad(f"'rng_state' is not a state of {type(t.rng.bit_generator).__name__}: "
                      f"{exc}") from None
        n_correct = meta.get("n_correct")
        if not is_int(n_correct) or not 0 <= n_correct <= self.n_samples:
            raise bad(f"'n_correct' must be an integer in [0, {self.n_samples}]; "
                      f"got {n_correct!r}")
        costs = arrays.get("step_costs")
        if costs is None or costs.dtype != np.float64 or costs.shape != (step,) \
                or not np.isfinite(costs).all():
            got = "missing" if costs is None else f"{costs.dtype} {costs.shape}"
            raise bad(f"'step_costs' must be {step} finite float64 costs, one per step done "
                      f"in this epoch; got {got}")
        history = meta.get("history")
        keys = set(History.KEYS)
        if not isinstance(history, list) or not all(
                isinstance(r, dict) and set(r) <= keys
                and all(v is None or is_real(v) for v in r.values()) for r in history):
            raise bad(f"'history' must be a list of records with keys from {sorted(keys)}")
        return epoch, step, rng_state, (costs, int(n_correct)), history


def _canonical(value):
    """A strict comparison key for JSON values (1 != 1.0 != True)."""
    return json.dumps(value, sort_keys=True)


def read_progress(path):
    """(epoch, step) a checkpoint file reached, read without a trainer (for
    messages such as the CLI's 'already trained N epochs'); ValueError if it
    is not a readable checkpoint."""
    _, meta = load_file(path, FORMAT, FORMAT_VERSION, json_keys=("epoch", "step"))
    epoch, step = meta.get("epoch"), meta.get("step")
    if not (is_int(epoch) and is_int(step)):
        raise ValueError(f"{path}: corrupted checkpoint ('epoch' and 'step' must be integers)")
    return epoch, step
