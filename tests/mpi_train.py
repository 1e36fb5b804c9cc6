"""One rank of the data-parallel tests (tests/test_distributed.py runs it
under mpiexec):  python -m mpi4py mpi_train.py CONFIG_JSON OUT_DIR

Trains a small random MLP with Trainer(comm=gb.distributed.init(...)) and
writes OUT_DIR/rank<r>.npz: the parameters after every epoch, the history,
the rows each step's shard took.  With "reference": true, rank 0 also
writes OUT_DIR/reference.npz: the same run computed in this one process
with the ranks' shards added in rank order (the bitwise oracle), and a
one-rank Trainer run with the same global batch (unless "single": false).
Fault injection: "kill" (rank 1 SIGKILLs itself after that epoch),
"batch_size_rank1" (rank 1 asks for another batch size), "perturb" (rank 1
nudges a weight after that epoch), "extra_collective" (rank 1 calls one
collective more than rank 0).
"""
import json
import os
import signal
import sys

import numpy as np

import gpubackprop as gb
from gpubackprop.distributed import shard_bounds


def data(cfg):
    rng = np.random.default_rng(123)
    X = rng.normal(size=(cfg["n"], cfg["sizes"][0])).astype(cfg["dtype"])
    y = rng.integers(0, cfg["sizes"][-1], cfg["n"])
    return X, y


def network(cfg):
    return gb.MLP.from_sizes(cfg["sizes"], activation="sigmoid", dtype=cfg["dtype"],
                             backend=cfg.get("backend", "numpy"), seed=7)


def optimizer(cfg):
    return gb.SGD(lr=cfg.get("lr", 0.5), momentum=cfg.get("momentum", 0.0))


def params_of(net):
    """Every parameter, as one flat float64 vector (W0, b0, W1, ...)."""
    return np.concatenate([np.concatenate([np.ravel(W), b]) for W, b in net.params])


def reference(cfg, size):
    """The run with `size` ranks, in one process: each step adds the shards'
    gradients (each already scaled by 1/global batch) in rank order."""
    X, y = data(cfg)
    net, opt = network(cfg), optimizer(cfg)
    Y = np.eye(cfg["sizes"][-1], dtype=cfg["dtype"])[y]
    loss = gb.losses.get(cfg.get("loss", "sse"), "mean")
    backend, acts = net.backend, net.activations
    params, state = net.params, opt.init_state(net.params)
    rng, bs, out = np.random.default_rng(cfg.get("seed", 0)), cfg["batch_size"], []
    for _ in range(cfg["epochs"]):
        order = rng.permutation(len(X))
        for start in range(0, len(X), bs):
            idx = order[start:start + bs]
            total = None
            for rank in range(size):
                lo, hi = shard_bounds(len(idx), rank, size)
                x, t = X[idx[lo:hi]], Y[idx[lo:hi]]
                a = backend.feedforward(params, acts, x)
                delta = backend.backward(params, acts, a, t, loss)
                scale = loss.scale(len(idx), net.n_out)
                g = [backend.weight_gradient(d, a_prev, scale) for d, a_prev in zip(delta, a[:-1])]
                if total is None:
                    total = [(dW.copy(), db.copy()) for dW, db in g]
                else:
                    for (tW, tb), (dW, db) in zip(total, g):
                        tW += dW
                        tb += db
            opt.step(params, total, state)
        out.append(params_of(net))
    return out


def one_rank(cfg):
    X, y = data(cfg)
    net = network(cfg)
    trainer = gb.Trainer(net, optimizer=optimizer(cfg), batch_size=cfg["batch_size"],
                         seed=cfg.get("seed", 0), loss=cfg.get("loss", "sse"))
    out = []
    trainer.fit(X, y, epochs=cfg["epochs"], callback=lambda r: out.append(params_of(net)))
    return out, trainer.history.loss


def main():
    cfg, outdir = json.loads(sys.argv[1]), sys.argv[2]
    comm = gb.distributed.init(backend=cfg.get("comm_backend"),
                               deterministic=cfg.get("deterministic", False),
                               debug=cfg.get("debug", False))
    rank = comm.rank
    X, y = data(cfg)
    net = network(cfg)
    batch_size = cfg["batch_size"]
    if rank == 1 and "batch_size_rank1" in cfg:
        batch_size = cfg["batch_size_rank1"]
    trainer = gb.Trainer(net, optimizer=optimizer(cfg), batch_size=batch_size,
                         seed=cfg.get("seed", 0), loss=cfg.get("loss", "sse"), comm=comm)
    shards, epochs = [], []
    shard = comm.shard
    comm.shard = lambda idx: shards.append(np.asarray(shard(idx))) or shards[-1]

    def callback(record):
        epochs.append(params_of(net))
        np.savez(os.path.join(outdir, f"rank{rank}.npz"), *epochs)   # what was reached
        e = record["epoch"]
        if rank == 1 and cfg.get("kill") == e:
            os.kill(os.getpid(), signal.SIGKILL)
        if rank == 1 and cfg.get("perturb") == e:
            net.params[0][0][0, 0] += 1e-3

    if rank == 1 and cfg.get("extra_collective"):     # out of step with rank 0
        comm.allreduce(np.zeros(3))
    trainer.fit(X, y, epochs=cfg["epochs"], callback=callback,
                checkpoint=cfg.get("checkpoint"), resume=cfg.get("resume", False))
    used = np.concatenate(shards) if shards else np.empty(0, dtype=np.int64)
    np.savez(os.path.join(outdir, f"rank{rank}.npz"), *epochs, used=used,
             shard_sizes=np.array([len(s) for s in shards]), loss=np.array(trainer.history.loss),
             size=comm.size, backend=comm.backend)
    if rank == 0 and cfg.get("reference"):
        ref = reference(cfg, comm.size)
        single, single_loss = one_rank(cfg) if cfg.get("single", True) else ([], [])
        np.savez(os.path.join(outdir, "reference.npz"),
                 ref=np.array(ref), single=np.array(single),
                 single_loss=np.array(single_loss))


if __name__ == "__main__":
    main()
