"""The backend ops (dense_forward, delta_propagate, weight_gradient) over a
grid of batch sizes and widths, for every backend usable on each device (the
CPU, and the first GPU when there is one).

A square ReLU layer (batch, width) x (width, width); each call takes the next
of three rotating input sets and waits for the device.  extra_info carries the
GEMM flops, so GFLOP/s = flops / mean time.
"""
import pytest

from gpubackprop.bench import Skip, op_case as make_op_case


def test_op(benchmark, op_case, profile):
    backend, device, op, batch, width = op_case
    if profile.name == "full" and device == "cpu" and batch * width * width > 4096 * 1024 * 1024:
        pytest.skip("too large for a CPU benchmark round (> 4096 x 1024 x 1024)")
    try:
        fn, flops = make_op_case(backend, device, op, batch, width)
    except Skip as exc:
        pytest.skip(str(exc))
    fn()                     # warm-up: JIT, kernel compilation, allocator
    benchmark.group = f"{op} batch={batch} width={width}"
    benchmark.extra_info.update(backend=backend, device=device, op=op, batch=batch,
                                width=width, flops=flops)
    benchmark(fn)
