"""Data-parallel training over processes: MPI on CPUs, NCCL on GPUs.

    comm = gb.distributed.init()          # rank, size, local_rank
    net = gb.MLP.from_sizes([784, 256, 10], device=comm.device, seed=0)
    trainer = gb.Trainer(net, loss="cross_entropy", optimizer=gb.SGD(lr=0.1),
                         batch_size=512, seed=0, comm=comm)   # the GLOBAL batch
    trainer.fit(X, Y, epochs=5)           # every rank ends with the same parameters

run with `gpubackprop launch -n 4 python train.py` (or srun / mpiexec).

The semantics (SPEC section 2): each step's global batch is split into
contiguous, as-even-as-possible shards by rank (comm.shard); every rank
computes its shard's gradient scaled by 1/(global batch), the ranks sum them
with one all-reduce of one flat buffer, and every rank takes the same SGD
step.  So the learning rate does not depend on the number of ranks, and N
ranks equal one rank with the same global batch up to float reordering.

Without a launcher (mpi4py missing, or a one-process world) `init()` returns
the one-rank communicator, which needs nothing and changes nothing.
"""
import sys
import time

from .comm import (MPI_HINT, CollectiveMismatchError, Communicator, ConfigMismatchError,
                   DesyncError, MPIComm, max_shard_rows, shard_bounds)
from .scaling import bench_scaling
from .training import agree_on_run, broadcast_start, check_in_sync, sum_over_ranks

BACKENDS = (None, "local", "mpi", "nccl")

__all__ = ["BACKENDS", "MPI_HINT", "CollectiveMismatchError", "Communicator",
           "ConfigMismatchError", "DesyncError", "MPIComm", "agree_on_run", "bench_scaling",
           "broadcast_start", "check_in_sync", "init", "local", "max_shard_rows",
           "shard_bounds", "sum_over_ranks"]


def init(backend=None, deterministic=False, debug=False, timeout=600.0):
    """The communicator of this process.

    backend: None picks by the network's device when training starts (MPI
        for CPU arrays, NCCL for CUDA arrays); "mpi" sends everything
        through MPI (CUDA arrays through host memory); "nccl" requires CuPy's
        NCCL (one GPU per rank, on GPU local_rank); "local" is the one-rank
        world whatever the launcher says.
    deterministic: all-reduce by gathering every rank's gradient and adding
        them in rank order: bitwise the same for any MPI/NCCL algorithm.
    debug: before every collective, gather a (count, operation, bytes,
        dtype) fingerprint so ranks out of step raise instead of hanging.
    timeout: seconds an NCCL wait may take before it aborts.

    Under a launcher with more than one process, an uncaught exception on
    any rank ends the whole job (MPI Abort) instead of leaving the other
    ranks waiting in a collective."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    for name, value in (("deterministic", deterministic), ("debug", debug)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False; got {value!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds; got {timeout!r}")
    options = {"deterministic": deterministic, "debug": debug, "timeout": float(timeout)}
    if backend == "local":
        return Communicator(**options)
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as exc:     # RuntimeError: mpi4py without libmpi
        if backend == "mpi":
            raise RuntimeError(f"backend='mpi' needs mpi4py and an MPI library ({exc}); "
                               + MPI_HINT) from None
        return Communicator(requested=backend, **options)
    world = MPI.COMM_WORLD
    if world.Get_size() == 1 and backend is None:
        return Communicator(**options)
    comm = MPIComm(world, MPI, requested=backend, **options)
    if comm.size > 1:
        _abort_on_uncaught_exception(world)
    return comm


#: seconds a failing rank waits, after printing its error, before it aborts the job
ABORT_GRACE_S = 0.5


def local(deterministic=False, debug=False):
    """The one-rank communicator (what Trainer uses without comm=)."""
    return Communicator(deterministic=deterministic, debug=debug)


def _abort_on_uncaught_exception(world):
    """An exception that ends one rank ends every rank (else the others wait
    in their next collective forever); `python -m mpi4py` does the same."""
    previous = sys.excepthook
    if getattr(previous, "_gpubackprop_abort", False):
        return

    def hook(kind, value, traceback):
        previous(kind, value, traceback)
        sys.stderr.flush()
        # the launcher forwards a rank's output asynchronously and drops what
        # it has not forwarded when the job aborts: give every failing rank's
        # traceback time to arrive before ending them all
        time.sleep(ABORT_GRACE_S)
        world.Abort(1)

    hook._gpubackprop_abort = True
    sys.excepthook = hook
