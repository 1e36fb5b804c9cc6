"""Communicators: one rank of a data-parallel job, and its collectives.

`Communicator` is the one-rank world (every collective is the identity, no
dependency); `MPIComm` is one rank of an MPI job (mpi4py).  Both offer what
the trainer needs:

    allreduce(x)          sum of a flat float array over ranks, in place
    bcast(x)              rank 0's array into x, in place
    bcast_object(obj), allgather_object(obj)   small host values (pickled)
    on_root(fn, *args)    fn on rank 0 only; its error raised on every rank
    agree(config)         every rank has the same run configuration
    check_in_sync(arrays) every rank has bitwise the same arrays
    shard(idx)            this rank's contiguous part of a global batch

Device (CuPy) arrays go through NCCL when the communicator has it (nccl.py),
else through host copies.  With `deterministic=True` an all-reduce gathers
every rank's array and adds them in rank order, so the result does not
depend on the MPI or NCCL reduction algorithm.  With `debug=True` every
collective first gathers a (count, operation, bytes, dtype) fingerprint, so
ranks that call different collectives get an error instead of a hang.
"""
import numpy as np

from ..device import array_module, is_cupy_array, to_host

FLOAT_DTYPES = ("float32", "float64")
MPI_HINT = ('install MPI for Python: pip install "gpubackprop[mpi]" (mpi4py and the mpich '
            "wheel), or load your site's MPI and pip install mpi4py")


class ConfigMismatchError(ValueError):
    """Ranks were started with different run configurations."""


class DesyncError(RuntimeError):
    """Ranks that should hold bitwise the same parameters do not."""

    def __init__(self, message, ranks):
        super().__init__(message)
        self.ranks = ranks


class CollectiveMismatchError(RuntimeError):
    """Ranks called different collectives (debug mode caught it before a hang)."""


def shard_bounds(B, rank, size):
    """[lo, hi): rank's contiguous, as-even-as-possible part of B rows (sizes
    differ by at most one; a rank's part is empty when B < size)."""
    return B * rank // size, B * (rank + 1) // size


def max_shard_rows(B, size):
    """The most rows any rank gets of a global batch of B rows."""
    return -(-B // size)


class Communicator:
    """The one-rank world: rank 0 of 1; every collective returns its input.

    backend: "local" here; "mpi" or "nccl" in a real job.
    deterministic: all-reduce by gathering and summing in rank order.
    debug: fingerprint every collective first (see the module docstring)."""

    backend = "local"

    def __init__(self, deterministic=False, debug=False, requested=None, timeout=600.0):
        self.rank, self.size, self.local_rank = 0, 1, 0
        self.deterministic = bool(deterministic)
        self.debug = bool(debug)
        self.requested = requested   # the backend asked for: None (by device), "mpi", "nccl"
        self.timeout = timeout
        self.n_collectives = 0
        self._nccl = None            # an nccl.NcclOps for device arrays, made by prepare
        self._said = set()
        if requested == "nccl":
            self.backend = "nccl"

    @property
    def communicates(self):
        """True when training must run the all-reducing loop (more than one
        rank, or one rank over an explicitly chosen backend such as NCCL)."""
        return self.size > 1 or self.backend != "local"

    def __repr__(self):
        flags = "".join(f", {k}=True" for k in ("deterministic", "debug") if getattr(self, k))
        return (f"<{type(self).__name__} backend={self.backend!r} rank={self.rank} "
                f"size={self.size} local_rank={self.local_rank}{flags}>")

    @property
    def device(self):
        """The device this rank should train on: "cuda:<local_rank mod GPUs>"
        when CUDA is usable, else "cpu" (pass it as MLP(device=...))."""
        from ..device import cuda_status

        n, _ = cuda_status()
        return f"cuda:{self.local_rank % n}" if n else "cpu"

    def prepare(self, device):
        """Ready the collectives for arrays on `device` (a gpubackprop Device):
        NCCL on a CUDA device unless backend="mpi" was asked for.  Every rank
        calls it at the same point (NCCL's set-up is itself collective)."""
        from . import nccl

        if device.kind != "cuda":
            if self.requested == "nccl":
                raise ValueError(f"backend='nccl' needs a network on a CUDA device; got {device}")
            return
        if self._nccl is not None or self.requested == "mpi" or not self.communicates:
            return
        reason = nccl.unavailable_reason()
        if reason is not None:
            if self.requested == "nccl":
                raise RuntimeError(reason)
            self.say_once("nccl", f"{reason}; the gradients travel through host memory and MPI")
            return
        clash = nccl.shared_gpu(self.allgather_object(nccl.gpu_identity(device.index)))
        if clash is not None:        # NCCL refuses two ranks on one GPU: say why, here
            a, b, (host, bus) = clash
            raise ValueError(f"ranks {a} and {b} both train on GPU {bus} of {host}; NCCL needs "
                             "one GPU per rank: build the network on comm.device "
                             "(cuda:<local_rank>)")
        self._nccl = nccl.create(self._uid_comm(), self.rank, self.size, device.index,
                                 self.timeout)
        self.backend = "nccl"

    def _uid_comm(self):
        """The mpi4py communicator NCCL's unique id is sent over (None: one rank)."""
        return None

    # -- what training calls ------------------------------------------------------
    def shard(self, idx):
        """This rank's contiguous part of the global batch `idx`."""
        lo, hi = shard_bounds(len(idx), self.rank, self.size)
        return idx[lo:hi]

    def shard_rows(self, B):
        return max_shard_rows(B, self.size)

    def allreduce(self, x):
        """Sum of `x` (a contiguous float32/float64 NumPy or CuPy array) over
        ranks, in place; returns x."""
        _check_float(x, "allreduce")
        self._fingerprint("allreduce", x)
        if self._nccl is not None and is_cupy_array(x):
            if self.deterministic:             # every rank's part, added in rank order
                sum_in_rank_order(self._nccl.allgather(x, self.size), out=x)
            else:
                self._nccl.allreduce(x)
        elif self.size > 1:
            _through_host(x, self._allreduce_host)
        self.n_collectives += 1
        return x

    def bcast(self, x):
        """Rank 0's values of `x` on every rank, in place; returns x."""
        _check_float(x, "bcast")
        self._fingerprint("bcast", x)
        if self._nccl is not None and is_cupy_array(x):
            self._nccl.bcast(x)
        elif self.size > 1:
            _through_host(x, self._bcast_host)
        self.n_collectives += 1
        return x

    def bcast_object(self, obj):
        self._fingerprint("bcast_object", None)
        self.n_collectives += 1
        return self._bcast_object(obj)

    def allgather_object(self, obj):
        self._fingerprint("allgather_object", None)
        self.n_collectives += 1
        return self._allgather_object(obj)

    def on_root(self, fn, *args):
        """fn(*args) on rank 0 only (say, writing a checkpoint); its result on
        every rank.  If it raises on rank 0, every rank raises (no rank is
        left waiting in the next collective)."""
        if self.size == 1:
            return fn(*args)
        outcome = None
        if self.rank == 0:
            try:
                outcome = ("ok", fn(*args))
            except Exception as exc:
                outcome = ("error", (type(exc).__name__, str(exc)))
                self.bcast_object(outcome)
                raise
        outcome = self.bcast_object(outcome)
        if outcome[0] == "ok":
            return outcome[1]
        name, message = outcome[1]
        cls = _ERRORS.get(name, RuntimeError)
        raise cls(f"on rank 0: {name}: {message}")

    def agree(self, config):
        """Raise ConfigMismatchError naming the first entry of `config` (a dict
        of plain values) where a rank differs from rank 0.  One allgather."""
        configs = self.allgather_object(config)
        for key in configs[0]:
            values = [c.get(key, "<missing>") for c in configs]
            for r, value in enumerate(values):
                if repr(value) != repr(values[0]):
                    raise ConfigMismatchError(
                        f"ranks disagree on {key}: rank 0 has {values[0]!r}, rank {r} has "
                        f"{value!r}; every rank must build the same network and call fit "
                        "with the same data and options")

    def check_in_sync(self, arrays, where):
        """Raise DesyncError if `arrays` (parameters, velocities) are not
        bitwise equal on every rank; compares a digest, one small allgather."""
        if self.size == 1:
            return
        digests = self.allgather_object(digest(arrays))
        ranks = [r for r, d in enumerate(digests) if d != digests[0]]
        if ranks:
            raise DesyncError(f"ranks {ranks} hold different parameters from rank 0 {where}; "
                              "were they given different data or backends, or did a rank "
                              "change its network outside fit?", ranks)

    def say_once(self, key, message):
        """A warning printed once per communicator (by rank 0)."""
        if key not in self._said and self.rank == 0:
            import warnings

            warnings.warn(message, RuntimeWarning, stacklevel=3)
        self._said.add(key)

    def synchronize(self):
        """Wait for this rank's pending device collectives (NCCL errors and
        timeouts raise here)."""
        if self._nccl is not None:
            self._nccl.synchronize()

    def abort(self, code=1):
        """End every rank of the job now."""
        raise SystemExit(code)

    # -- the primitives a real job overrides -------------------------------------------
    def _allreduce_host(self, x):
        pass

    def _bcast_host(self, x):
        pass

    def _bcast_object(self, obj):
        return obj

    def _allgather_object(self, obj):
        return [obj]

    def _fingerprint(self, operation, x):
        """Debug mode: every rank must be about to run the same collective."""
        if not self.debug or self.size == 1:
            return
        mine = (self.n_collectives, operation, -1 if x is None else int(x.nbytes),
                "object" if x is None else str(x.dtype))
        prints = self._allgather_object(mine)
        for r, theirs in enumerate(prints):
            if theirs != mine:
                raise CollectiveMismatchError(
                    f"rank {self.rank} is at collective #{mine[0]}, {mine[1]} of {mine[2]} "
                    f"bytes {mine[3]}, but rank {r} is at #{theirs[0]}, {theirs[1]} of "
                    f"{theirs[2]} bytes {theirs[3]}")


_ERRORS = {c.__name__: c for c in (ValueError, TypeError, RuntimeError, OSError,
                                   FileNotFoundError, PermissionError, ConfigMismatchError)}


class MPIComm(Communicator):
    """One rank of an MPI job (mpi4py); host arrays are reduced with
    Allreduce(IN_PLACE), device arrays by NCCL when given, else via the host."""

    backend = "mpi"

    def __init__(self, comm, MPI, deterministic=False, debug=False, requested=None,
                 timeout=600.0):
        super().__init__(deterministic, debug, requested, timeout)
        self.backend = "mpi"
        self.comm, self.MPI = comm, MPI
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_rank = node.Get_rank()
        node.Free()

    def _uid_comm(self):
        return self.comm

    def _allreduce_host(self, x):
        if self.deterministic:
            gathered = np.empty((self.size,) + x.shape, dtype=x.dtype)
            self.comm.Allgather(x, gathered)
            sum_in_rank_order(gathered, out=x)
        else:
            self.comm.Allreduce(self.MPI.IN_PLACE, x, op=self.MPI.SUM)

    def _bcast_host(self, x):
        self.comm.Bcast(x, root=0)

    def _bcast_object(self, obj):
        return self.comm.bcast(obj, root=0)

    def _allgather_object(self, obj):
        return self.comm.allgather(obj)

    def abort(self, code=1):
        self.comm.Abort(code)


def sum_in_rank_order(gathered, out):
    """out = gathered[0] + gathered[1] + ... , added left to right."""
    out[...] = gathered[0]
    for part in gathered[1:]:
        out += part
    return out


def digest(arrays, chunk=1 << 20):
    """A short bitwise fingerprint of float arrays (NumPy or CuPy), reduced
    where they live: per array the wrapping uint64 sums of its bit patterns,
    plain and weighted by position (so moved values change it too), taken
    `chunk` elements at a time to bound the scratch memory.  One read-back."""
    sums = []
    for a in arrays:
        xp = array_module(a)
        bits = xp.ascontiguousarray(a).ravel().view(f"uint{8 * a.dtype.itemsize}")
        total = xp.zeros(2, dtype=xp.uint64)       # arrays wrap around silently
        for start in range(0, bits.size, chunk):
            part = bits[start:start + chunk].astype(xp.uint64)
            position = xp.arange(start + 1, start + 1 + part.size, dtype=xp.uint64)
            total += xp.stack([part.sum(dtype=xp.uint64), (part * position).sum(dtype=xp.uint64)])
        sums.append(total)
    if not sums:
        return ()
    return tuple(int(v) for v in to_host(array_module(arrays[0]).concatenate(sums)))


def _check_float(x, operation):
    """Collectives take contiguous float32/float64 arrays (the same dtype on
    every rank is checked by agree: a mismatch there would be garbage)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None or str(dtype) not in FLOAT_DTYPES:
        raise TypeError(f"{operation} needs a float32 or float64 array; got "
                        f"{type(x).__name__} of dtype {dtype}")
    if not x.flags.c_contiguous:
        raise ValueError(f"{operation} needs a C-contiguous array (it is sent as one buffer)")


def _through_host(x, operation):
    """Run a host collective on a device array through a host copy."""
    if not is_cupy_array(x):
        operation(x)
        return
    host = np.ascontiguousarray(to_host(x))
    operation(host)
    x.set(host)
