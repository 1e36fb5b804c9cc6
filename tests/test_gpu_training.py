"""Training on a CUDA device: the same curve as the CPU, and the host waits on
the device only where the trainer reads back by design.

Skipped (with the reason) where CuPy or a GPU is missing.  Every GPU backend:
cupy and numba run the trainer's loop; cuda and fused their fused
train_epoch (the update inside the weight-gradient kernels)."""
import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import backends
from gpubackprop.device import cuda_status

n_gpus, why = cuda_status()
pytestmark = pytest.mark.skipif(n_gpus == 0, reason=why or "no CUDA device")

GPU_BACKENDS = ["cupy", "cuda", "fused", "numba"]
EPOCHS = 3
#: host reads of a fit on data already on the GPU, by design (trainer.py):
#: before the first epoch, the finiteness check of X and of X_val (one bool
#: each), the class labels y and y_val read to build one-hot targets, the
#: parameters' finiteness (one bool); then per epoch one read of the epoch's
#: sums (costs, correct, parameters finite) and one of the validation sums.
SETUP_READS, READS_PER_EPOCH = 5, 2


@pytest.fixture(scope="module")
def digits():
    return gb.data.load_digits()


def _usable(backend):
    reason = backends.unavailable_reason(backend, gb.device("cuda"))
    if reason is not None:
        pytest.skip(f"backend {backend!r}: {reason}")


def _fit(digits, device, backend, dtype="float64", epochs=10):
    net = gb.MLP.from_sizes([64, 30, 10], activation="sigmoid", device=device, dtype=dtype,
                            backend=backend, seed=0)
    trainer = gb.Trainer(net, loss="sse", optimizer=gb.SGD(lr=3.0), batch_size=10, seed=0)
    return net, trainer.fit(digits.X_train, digits.y_train, epochs=epochs,
                            validation=(digits.X_test, digits.y_test))


@pytest.fixture(scope="module")
def cpu_history(digits):
    return _fit(digits, "cpu", "numpy")[1]


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_accuracy_curve_matches_cpu(digits, cpu_history, backend):
    _usable(backend)
    _, gpu = _fit(digits, "cuda", backend)
    print(f"{backend}: val accuracy {gpu.val_accuracy[-1]:.4f} (cpu "
          f"{cpu_history.val_accuracy[-1]:.4f}), loss {gpu.loss[-1]:.6g} "
          f"(cpu {cpu_history.loss[-1]:.6g})")
    # float64 on both: the same shuffles and the same maths, up to rounding
    np.testing.assert_allclose(gpu.val_accuracy, cpu_history.val_accuracy, atol=0.01)
    np.testing.assert_allclose(gpu.loss, cpu_history.loss, rtol=1e-3)
    assert gpu.val_accuracy[-1] >= 0.95


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_host_reads_per_epoch(digits, backend):
    _usable(backend)
    net = gb.MLP.from_sizes([64, 30, 10], device="cuda", backend=backend, seed=0)
    trainer = gb.Trainer(net, optimizer=gb.SGD(lr=3.0), batch_size=10, seed=0)
    X, y = gb.Tensor(digits.X_train, device="cuda"), gb.Tensor(digits.y_train, device="cuda")
    Xv, yv = gb.Tensor(digits.X_test, device="cuda"), gb.Tensor(digits.y_test, device="cuda")
    trainer.fit(X, y, epochs=1)                 # warm-up: compile, allocate
    gb.transfers.reset()
    trainer.fit(X, y, epochs=EPOCHS, validation=(Xv, yv))
    reads = gb.transfers.to_host
    print(f"host reads per epoch ({backend}): {(reads - SETUP_READS) / EPOCHS:g} "
          f"({reads} in a {EPOCHS}-epoch fit, {SETUP_READS} of them before the first epoch)")
    assert reads == SETUP_READS + READS_PER_EPOCH * EPOCHS, gb.transfers


def test_auto_backend_on_gpu_follows_the_rule():
    net = gb.MLP.from_sizes([8, 4, 2], device="cuda")
    first = next(n for n in backends.AUTO["cuda"]
                 if backends.unavailable_reason(n, net.device) is None)
    assert net.backend.name == first
    assert isinstance(net.forward(np.ones((3, 8))), type(net.layers[0].W.data))
