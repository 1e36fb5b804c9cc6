"""What Trainer.fit does differently with a communicator of more than one rank.

Before the first collective every rank checks that it runs the same job
(`agree_on_run`); then every rank takes rank 0's parameters, optimizer state,
shuffling generator and history (`broadcast_start`), at the start and after
a resume (rank 0 reads the checkpoint); after every epoch the ranks compare
a digest of their parameters and velocities (`check_in_sync`); the loop's
per-step costs and hits are summed over the ranks (`sum_over_ranks`).
"""
from ..device import array_module
from .comm import digest


def sum_over_ranks(comm, step_costs, n_correct):
    """Every rank's per-step costs and hits summed over the ranks, as float64
    (one all-reduce): (step_costs, n_correct)."""
    xp = array_module(step_costs)
    totals = xp.concatenate([step_costs.astype(xp.float64),
                             xp.asarray(n_correct, dtype=xp.float64).reshape(1)])
    comm.allreduce(totals)
    return totals[:-1], totals[-1]


def agree_on_run(trainer, X, Y, **options):
    """Raise ConfigMismatchError (every rank) naming the first difference in
    network, dtype, device kind, backend, loss, optimizer, batch size, seed,
    data size and data contents, or in the fit `options` (epochs, ...)."""
    net, comm = trainer.net, trainer.comm
    config = {"network sizes": list(net.sizes), "activations": list(net.activations),
              "dtype": net.dtype, "device kind": net.device.kind, "backend": net.backend.name,
              "loss": [trainer.loss.name, trainer.loss.reduction],
              "optimizer": [type(trainer.optimizer).__name__, trainer.optimizer.config()],
              "batch_size": trainer.batch_size, "seed": trainer.seed,
              "data size": [int(X.shape[0]), int(Y.shape[0])],
              "collective mode": [comm.deterministic, comm.debug], **options,
              "data contents": digest([X, Y])}
    comm.agree(config)
    comm.prepare(net.device)


def broadcast_start(trainer):
    """Every rank takes rank 0's parameters, velocities, generator state and
    history (in place)."""
    from ..history import History

    comm = trainer.comm
    for W, b in trainer.net.params:
        comm.bcast(W)
        comm.bcast(b)
    for v in trainer.state.arrays().values():
        comm.bcast(v)
    rng_state, records = comm.bcast_object((trainer.rng.bit_generator.state,
                                            trainer.history.records))
    trainer.rng.bit_generator.state = rng_state
    trainer.history = History(records)


def check_in_sync(trainer, epoch):
    """DesyncError (every rank) if the parameters or velocities differ."""
    comm = trainer.comm
    comm.synchronize()
    arrays = [p for pair in trainer.net.params for p in pair]
    arrays += list(trainer.state.arrays().values())
    comm.check_in_sync(arrays, f"after epoch {epoch + 1}")
