"""One backend op on one layer, timed by bench/test_bench_ops.py (pytest-benchmark)
for every backend usable on each device: the ops of the backend contract."""
import math

import numpy as np

from .peers import Skip

OPS = ("dense_forward", "delta_propagate", "weight_gradient")


def op_case(backend, device, op, batch, width, activation="relu", n_sets=3, seed=0):
    """(fn, flops) for `op` of `backend` on a square layer: a_prev (batch, width),
    W (width, width).  fn() runs the op once on the next of n_sets rotating
    inputs and waits for the device; flops counts its GEMM (2 x batch x width^2).
    Raises Skip when the backend cannot run on `device`."""
    from .. import backends
    from ..device import device as get_device

    if op not in OPS:
        raise ValueError(f"op must be one of {', '.join(OPS)}; got {op!r}")
    dev = get_device(device)
    why = backends.unavailable_reason(backend, dev)
    if why is not None:
        raise Skip(why)
    be = backends.create(backend, dev)
    xp = dev.xp
    rng = np.random.default_rng(seed)

    def arr(*shape, scale=1.0):
        return dev.asarray(rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))

    W = arr(width, width, scale=1.0 / math.sqrt(width))
    b = arr(width, scale=0.1)
    a_prev = [xp.maximum(arr(batch, width), 0) for _ in range(n_sets)]   # ReLU outputs
    delta = [arr(batch, width, scale=0.01) for _ in range(n_sets)]
    out = xp.empty((batch, width), dtype=np.float32)
    nabla_W, nabla_b = xp.empty_like(W), xp.empty_like(b)
    scale = 1.0 / batch
    k = [0]

    def nxt():
        k[0] = (k[0] + 1) % n_sets
        return k[0]

    calls = {
        "dense_forward": lambda i: be.dense_forward(a_prev[i], W, b, activation, out=out),
        "delta_propagate": lambda i: be.delta_propagate(delta[i], W, a_prev[i], activation,
                                                        out=out),
        "weight_gradient": lambda i: be.weight_gradient(delta[i], a_prev[i], scale,
                                                        dW=nabla_W, db=nabla_b),
    }
    call, sync = calls[op], dev.synchronize

    def fn():
        call(nxt())
        sync()

    return fn, 2 * batch * width * width
