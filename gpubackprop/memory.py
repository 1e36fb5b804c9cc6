"""Device memory: what a training run needs, checked before it starts.

estimate(net, batch_size, n_samples, n_val) counts the bytes a `Trainer.fit`
keeps on the network's device, by part:

    parameters   every W and b                          P = sum(n_out * n_in + n_out)
    momentum     the velocities, one per parameter      P (0 without momentum)
    snapshot     the copy kept to undo a divergence     P, + P with momentum
    data         X (N, n_in), one-hot Y (N, n_out),     N * (n_in + n_out) * itemsize
                 the epoch's shuffle (N int64)            + 8 N
    activations  a_0..a_L of one step, and the batch    B * (sum(sizes) + n_out) * itemsize
                 of targets y
    deltas       delta_1..delta_L of one step           B * sum(sizes[1:]) * itemsize
    gradients    every layer's dW, db (the step's         P * itemsize
                 workspace)
    backend_scratch  what the network's backend keeps beside the workspace:
                 fused: the activation scratch and     B * sum(sizes[1:]) * itemsize
                 one gradient partial per 64-row tile    + ceil(B / 64) * P * itemsize
                 (one in all with deterministic=False)
                 cuda, numba on a GPU: the batch-split  max over layers of
                 partial sums of the weight gradient     chunks * (n_out * n_in + n_out)
                                                         * itemsize (kernels.update_chunks)
                 others: 0
    step_costs   one cost per step of an epoch          ceil(N / B) * itemsize
    validation   X_val, Y_val and the activations of    V * (n_in + n_out) * itemsize
                 one evaluation chunk                     + min(V, chunk) * sum(sizes) * itemsize

with B = min(batch_size, N), itemsize 4 (float32) or 8 (float64), and
"total" their sum.  It is an estimate (the memory pool rounds allocations up,
cuBLAS keeps a workspace), so the check keeps a margin.

check_fits(needed, free_bytes) raises DeviceOutOfMemory when the total does
not fit, saying what is needed, what is free and what to change; the trainer
calls it (through check_device) before training on a CUDA device, and turns a
CuPy OutOfMemoryError during training into DeviceOutOfMemory too.
"""
import math

import numpy as np

from .checks import positive_int

#: part of the free memory a run may plan to use (the rest: pool rounding,
#: cuBLAS workspace, kernels, fragmentation)
USABLE_FRACTION = 0.9
EVAL_CHUNK = 8192

PARTS = ("parameters", "momentum", "snapshot", "data", "activations", "deltas",
         "gradients", "backend_scratch", "step_costs", "validation")


class DeviceOutOfMemory(RuntimeError):
    """Training does not fit in the device's memory.  `needed` holds the
    estimate (a dict of bytes), `free` the free bytes (None if unknown)."""

    def __init__(self, message, needed=None, free=None):
        super().__init__(message)
        self.needed, self.free = needed, free


def estimate(net, batch_size, n_samples, n_val=0, momentum=True, eval_chunk=EVAL_CHUNK):
    """Bytes a training run of `net` keeps on its device: {part: bytes, "total": bytes}.

    momentum: whether the optimizer keeps velocities (SGD(momentum > 0)); the
    default counts them, to be safe.
    """
    from .network import MLP

    if not isinstance(net, MLP):
        raise TypeError(f"net must be a gpubackprop.MLP; got {type(net).__name__}")
    batch_size = positive_int("batch_size", batch_size)
    n_samples = positive_int("n_samples", n_samples)
    n_val = positive_int("n_val", n_val, minimum=0)
    eval_chunk = positive_int("eval_chunk", eval_chunk)
    item = np.dtype(net.dtype).itemsize
    sizes = net.sizes
    n_in, n_out = sizes[0], sizes[-1]
    P = sum(o * i + o for i, o in zip(sizes, sizes[1:]))
    B = min(batch_size, n_samples)
    C = min(n_val, eval_chunk)
    out = {
        "parameters": P * item,
        "momentum": P * item if momentum else 0,
        "snapshot": (2 * P if momentum else P) * item,
        "data": n_samples * (n_in + n_out) * item + 8 * n_samples,
        "activations": B * (sum(sizes) + n_out) * item,
        "deltas": B * sum(sizes[1:]) * item,
        "gradients": P * item,
        "backend_scratch": net.backend.scratch_bytes(sizes, B, net.dtype),
        "step_costs": math.ceil(n_samples / batch_size) * item,
        "validation": n_val * (n_in + n_out) * item + C * sum(sizes) * item,
    }
    out["total"] = sum(out[k] for k in PARTS)
    return out


def _mib(n):
    return f"{n / 2 ** 20:,.1f} MiB"


def check_fits(needed, free_bytes, device="cuda", usable_fraction=USABLE_FRACTION,
               dtype=None):
    """Raise DeviceOutOfMemory unless needed["total"] fits in
    usable_fraction * free_bytes; the message says what to change."""
    total = int(needed["total"])
    usable = int(free_bytes * usable_fraction)
    if total <= usable:
        return
    parts = ", ".join(f"{k} {_mib(v)}" for k, v in sorted(
        ((k, v) for k, v in needed.items() if k in PARTS and v), key=lambda kv: -kv[1]))
    hints = []
    biggest = max(PARTS, key=lambda k: needed.get(k, 0))
    if biggest in ("data", "validation"):
        hints.append("train on a part of the data set per fit() call or pass fewer "
                     "validation examples (the data set is kept on the device)")
    if biggest in ("activations", "deltas") or needed.get("activations", 0) > usable // 4:
        hints.append("use a smaller batch_size")
    if dtype != "float32":
        hints.append("use dtype='float32' (halves every figure)")
    if biggest == "backend_scratch":
        hints.append("use a smaller batch_size (the backend's per-tile gradient partials "
                     "grow with it), or FusedBackend(device, deterministic=False)")
    if biggest in ("parameters", "momentum", "snapshot", "gradients"):
        hints.append("use fewer or narrower layers, or SGD without momentum")
    hints.append("free GPU memory held by other processes, or use another device")
    raise DeviceOutOfMemory(
        f"not enough memory on {device}: training needs about {_mib(total)} ({parts}) "
        f"but only {_mib(free_bytes)} are free ({_mib(usable)} usable); to fit: "
        + "; ".join(hints), needed=needed, free=free_bytes)


def free_bytes(device):
    """Free bytes on a CUDA device: the driver's free memory plus what CuPy's
    pool holds unused (which it hands out again before asking the driver)."""
    cp = device.xp
    with cp.cuda.Device(device.index):
        free, _total = cp.cuda.runtime.memGetInfo()
        free += cp.get_default_memory_pool().free_bytes()
    return int(free)


def check_device(net, batch_size, n_samples, n_val=0, momentum=True, data_on_device=False):
    """Before training on a CUDA device: raise DeviceOutOfMemory if the run
    will not fit.  Data already on the device (CuPy input) is not counted
    again.  Does nothing on the CPU.  Returns the estimate (None on the CPU)."""
    if net.device.kind != "cuda":
        return None
    needed = estimate(net, batch_size, n_samples, n_val, momentum=momentum)
    if data_on_device:
        needed["total"] -= needed["data"] - 8 * n_samples
        needed["data"] = 8 * n_samples
    check_fits(needed, free_bytes(net.device), device=str(net.device), dtype=net.dtype)
    return needed


def out_of_memory_error(exc, net, batch_size, n_samples, n_val=0, momentum=True):
    """A DeviceOutOfMemory for an OutOfMemoryError raised while training."""
    needed = estimate(net, batch_size, n_samples, n_val, momentum=momentum)
    return DeviceOutOfMemory(
        f"the device {net.device} ran out of memory during training ({exc}); this run "
        f"needs about {_mib(needed['total'])} by gpubackprop.memory.estimate "
        f"(data {_mib(needed['data'])}, activations+deltas "
        f"{_mib(needed['activations'] + needed['deltas'])}); use a smaller batch_size, "
        "dtype='float32', or less data per fit() call", needed=needed)


def oom_types(device):
    """The exception types that mean 'out of device memory' on `device`."""
    if device.kind != "cuda":
        return ()
    cp = device.xp
    return (cp.cuda.memory.OutOfMemoryError,)
