"""A small training run that can kill itself with SIGKILL at a chosen point.

Used by tests/test_checkpoint.py: it runs this script in a subprocess that
dies mid-epoch (no cleanup, no atexit, no flush: as if the machine lost
power), then runs it again with --resume, and compares the final parameters
with an uninterrupted run (train() called in-process) bit for bit.

    python tests/killme_train.py CHECKPOINT OUT [--backend numpy] [--resume]
        [--kill-after-step K]   SIGKILL once K SGD steps have run in this process
                                (right after they ran, before the trainer could
                                write the checkpoint that follows them)
        [--kill-in-save N]      SIGKILL in the middle of writing the N-th
                                checkpoint of this process (half the bytes written)

The kill points are counted in steps and saves, never in time, so the run is
deterministic.  OUT receives the final parameters, momentum buffers and the
per-epoch training losses (a safetensors file).
"""
import argparse
import os
import signal
import sys

import numpy as np

# the same run whatever the test passes
SIZES = [5, 8, 6, 3]
N_SAMPLES, BATCH_SIZE, EPOCHS, EVERY = 61, 7, 3, 2      # 9 steps per epoch, last one of 5


def data():
    rng = np.random.default_rng(1234)
    X = rng.normal(size=(N_SAMPLES, SIZES[0]))
    y = rng.integers(0, SIZES[-1], N_SAMPLES)
    return X, y


def make_trainer(backend):
    import gpubackprop as gb

    net = gb.MLP.from_sizes(SIZES, activation="tanh", output_activation="softmax",
                            backend=backend, seed=7)
    opt = gb.SGD(lr=0.2, momentum=0.9, weight_decay=1e-3)
    return gb.Trainer(net, loss="cross_entropy", optimizer=opt, batch_size=BATCH_SIZE, seed=11)


def train(checkpoint=None, backend="numpy", resume=False, kill_after_step=None,
          kill_in_save=None):
    """Run the training; returns {name: array} of the final state."""
    trainer = make_trainer(backend)
    net = trainer.net
    if kill_after_step is not None:
        steps_done = [0]
        inner = trainer._steps

        def steps(X, Y, order):
            out = inner(X, Y, order)
            steps_done[0] += -(-len(order) // trainer.batch_size)
            if steps_done[0] >= kill_after_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        trainer._steps = steps
    if kill_in_save is not None:
        _kill_in_save(kill_in_save)
    X, y = data()
    history = trainer.fit(X, y, epochs=EPOCHS, checkpoint=checkpoint,
                          checkpoint_every=EVERY if checkpoint else None, resume=resume)
    state = net.state_arrays()
    for i, (vW, vb) in enumerate(trainer.state.velocities):
        state[f"vW{i}"], state[f"vb{i}"] = np.asarray(vW), np.asarray(vb)
    state["loss"] = np.array(history.loss)
    return state


class _HalfFile:
    """A file whose write puts half the bytes on disk, then SIGKILLs the process."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[:len(data) // 2])
        self.f.flush()
        os.fsync(self.f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


def _kill_in_save(n):
    """The n-th file opened with os.fdopen (as io.save_file opens its
    temporary file) dies half written.  Only in this throwaway process."""
    saves, fdopen = [0], os.fdopen

    def half_fdopen(fd, *args, **kwargs):
        saves[0] += 1
        f = fdopen(fd, *args, **kwargs)
        return f if saves[0] < n else _HalfFile(f)

    os.fdopen = half_fdopen


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill-after-step", type=int)
    p.add_argument("--kill-in-save", type=int)
    args = p.parse_args(argv)
    state = train(args.checkpoint, args.backend, args.resume, args.kill_after_step,
                  args.kill_in_save)
    from safetensors.numpy import save_file

    save_file(state, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
