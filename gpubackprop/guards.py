"""Guards around Trainer.fit: one fit at a time per network, and Ctrl-C at a
step boundary.

* `exclusive(net)`: a network (and its backend, whose step workspace a fit
  writes) is held by one fit; a second fit on it, from another thread, another
  Trainer or a callback, raises RuntimeError at once instead of interleaving
  steps on the same parameters and buffers (which silently corrupted both).
  Raising, not waiting: a second fit on a network being trained is a mistake
  to see, and waiting could deadlock a callback that starts one.
* `deferred_interrupt(trainer)`: Ctrl-C lets the step under way finish, then
  the trainer raises KeyboardInterrupt at the step boundary
  (`interrupted_message` says where the last good checkpoint is).
"""
import contextlib
import signal
import threading
import weakref

_BUSY = weakref.WeakKeyDictionary()      # network or backend -> the thread training it
_BUSY_LOCK = threading.Lock()


@contextlib.contextmanager
def exclusive(net):
    """Hold `net` (and its backend, whose step workspace a fit writes) for one
    fit.  A second fit on the same network, from another thread or Trainer
    (or a callback), raises RuntimeError at once instead of interleaving
    steps on the same parameters and buffers."""
    me = threading.current_thread().name
    with _BUSY_LOCK:
        for obj, what in ((net, "network"), (net.backend, "backend (and step workspace)")):
            if obj in _BUSY:
                raise RuntimeError(
                    f"the {what} of {net!r} is already being trained by another fit (in "
                    f"thread {_BUSY[obj]!r}); one network is trained by one fit at a time: "
                    "wait for it to return, or train a copy (gb.MLP([l.copy() for l in "
                    "net.layers]))")
        held = (net, net.backend)
        for obj in held:
            _BUSY[obj] = me
    try:
        yield
    finally:
        with _BUSY_LOCK:
            for obj in held:
                _BUSY.pop(obj, None)


@contextlib.contextmanager
def deferred_interrupt(trainer):
    """Ctrl-C during fit lets the step under way finish (a step updates the
    layers one after another: stopping inside one would leave the network
    half updated, and a checkpoint half written), then raises
    KeyboardInterrupt at the step boundary; a second Ctrl-C stops at once.
    Only in the main thread, when SIGINT has Python's default handler, and
    not in data-parallel runs (every rank must stop at the same step)."""
    trainer._interrupted = False
    if (threading.current_thread() is not threading.main_thread() or trainer.comm.communicates
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    def handler(signum, frame):
        if trainer._interrupted:
            raise KeyboardInterrupt
        trainer._interrupted = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        trainer._interrupted = False


def interrupted_message(ckpt):
    """The one line for an interrupted fit: where the last good checkpoint is."""
    msg = "training interrupted; the network holds the parameters of the last completed step"
    if ckpt is None:
        return msg + "; no checkpoint (pass checkpoint=PATH to keep the progress of a run)"
    if ckpt.saved is not None:
        epoch, step = ckpt.saved
        return msg + (f"; the last good checkpoint is {ckpt.path} (epoch {epoch}, step "
                      f"{step}); resume=True continues from there")
    if ckpt.exists():
        return msg + f"; the checkpoint {ckpt.path} is as it was before this run"
    return msg + f"; no checkpoint was written yet at {ckpt.path}"
