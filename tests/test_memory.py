"""memory.estimate counts what the backend keeps beside the workspace: the
fused backend's per-tile gradient partials (~15.5 GB at 2^21 rows of
[784, 128, 128, 10]) and the cuda backend's batch-split partials, equal to
the buffers those backends really allocate (on the cuda-emulator device)."""
import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import memory

try:
    gb.device("cuda-emulator")
except RuntimeError as exc:          # no C++17 compiler
    pytest.skip(str(exc), allow_module_level=True)

SIZES = [784, 128, 128, 10]
P = 784 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10


def _net(backend, sizes=SIZES, **options):
    return gb.MLP.from_sizes(sizes, device="cuda-emulator", backend=backend, dtype="float32",
                             backend_options=options or None, seed=0)


def test_fused_partials_at_two_million_rows():
    est = memory.estimate(_net("fused"), batch_size=2**21, n_samples=2**21)
    partials = 2**21 // 64 * P * 4
    assert partials > 15.5e9
    assert est["backend_scratch"] == partials + 2**21 * (128 + 128 + 10) * 4
    assert est["total"] > 17e9 and est["total"] == sum(v for k, v in est.items()
                                                        if k != "total")
    with pytest.raises(memory.DeviceOutOfMemory, match="per-tile gradient partials"):
        memory.check_fits(est, free_bytes=16 * 2**30, dtype="float32")


@pytest.mark.parametrize("deterministic", [True, False])
def test_fused_estimate_is_what_the_backend_allocates(deterministic):
    net = _net("fused", deterministic=deterministic)
    batch = 1000
    allocated = sum(b.nbytes for b in net.backend._buffers(net.sizes, np.float32, batch)
                    if hasattr(b, "nbytes"))
    assert memory.estimate(net, batch, 5000)["backend_scratch"] == allocated


def test_cuda_split_partials_are_counted():
    sizes = [64] * 7
    net = _net("cuda", sizes)
    got = memory.estimate(net, 65536, 65536)["backend_scratch"]
    chunks, _ = net.backend._kp.update_chunks(65536, 64, 64, "float32")
    assert chunks > 1 and got == chunks * (64 * 64 + 64) * 4


def test_other_backends_keep_no_scratch():
    net = gb.MLP.from_sizes([5, 4, 3], backend="numpy")
    assert memory.estimate(net, 10, 100)["backend_scratch"] == 0
