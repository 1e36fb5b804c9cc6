"""The implementations timed side by side: ours, scikit-learn and the
GEMM-only time (PyTorch and JAX are in frameworks.py; run.make_cases builds
every case of a regime).

A case trains one regime on one device: `run()` does the regime's SGD steps
(one epoch over the same float32 data every implementation gets) and waits
for the device.  A case that cannot exist here raises Skip with the reason.

    gpubackprop      gb.Trainer(...).fit(X, Y, epochs=1) on the "auto" backend
                     (what a user gets); with all_backends, every other usable
                     backend too
    torch-eager      PyTorch nn.Sequential + torch.optim.SGD, the usual loop
    torch-graphs     (GPU) the whole step captured in a CUDA graph, replayed
    torch-compile    torch.compile(model) in the same loop
    jax              the whole epoch as one jax.lax.scan under jax.jit
    sklearn          (CPU) MLPClassifier(solver="sgd"), one epoch, same batch and lr
    floor            the GEMMs of the steps alone, back to back, into
                     preallocated buffers (np.matmul, cupy.matmul on a GPU)

The bench uses only the package's public API (gb.MLP, gb.Trainer, gb.SGD,
backends.available/create): no backend internals.
"""
import contextlib
import importlib
import warnings

import numpy as np


class Skip(Exception):
    """An implementation that cannot run here; the message says why."""


class Case:
    """One implementation on one device for one regime.

    impl: the key in the JSON ("gpubackprop", "gpubackprop[numpy]", "torch-eager", ...);
    role: "ours" (auto), "ours-backend" (another of our backends), "peer" or "gemm";
    path: for ours, the path its runs took ("fast-path" or "loop"), else None."""

    role = "peer"

    def __init__(self, impl, label, device, regime):
        self.impl, self.label, self.device, self.regime = impl, label, device, regime
        self.backend = None
        self.notes = ""
        self.path = None

    def run(self):
        raise NotImplementedError


def import_optional(name, what):
    """Import an optional peer's module, or raise Skip saying it is absent."""
    try:
        return importlib.import_module(name)
    except Exception as exc:  # absent, or broken
        raise Skip(f"{name} is not installed ({what}): {type(exc).__name__}: {exc}") from None


class OursCase(Case):
    """gpubackprop as a user runs it.  `trainer_options` go to gb.Trainer
    (where a data-parallel run would pass its communicator)."""

    role = "ours"

    def __init__(self, device, regime, data, backend="auto", seed=0, trainer_options=None,
                 fast_path="auto"):
        from .. import backends
        from ..device import device as get_device
        from ..network import MLP
        from ..optim import SGD
        from ..trainer import Trainer

        dev = get_device(device)
        if backend != "auto":
            why = backends.unavailable_reason(backend, dev)
            if why is not None:
                raise Skip(why)
            self.role = "ours-backend"
        self.net = MLP.from_sizes(list(regime.sizes), activation=regime.activation,
                                  output_activation=regime.output, device=dev,
                                  dtype="float32", backend=backend, seed=seed)
        name = self.net.backend.name
        impl = "gpubackprop" if backend == "auto" else f"gpubackprop[{name}]"
        label = f"gpubackprop (auto = {name})" if backend == "auto" else f"gpubackprop ({name})"
        path = None if fast_path == "auto" else "fast-path" if fast_path else "loop"
        if path is not None:                     # one of auto's paths, told
            impl, label = f"gpubackprop[{name}:{path}]", \
                f"gpubackprop ({name}, {path.replace('-', ' ')})"
            self.role = "ours-backend"
        super().__init__(impl, label, device, regime)
        self.path = path
        self.backend = name
        self.trainer = Trainer(self.net, loss=regime.loss, optimizer=SGD(lr=regime.lr),
                               batch_size=regime.batch, seed=seed, fast_path=fast_path,
                               **(trainer_options or {}))
        hyper = self.trainer.hyper()
        if fast_path is True and not self.net.backend.fuses(hyper):
            raise Skip(f"backend {name!r} has no fast path for this regime")
        self.dev = dev
        self.X, self.Y = dev.asarray(data.X), dev.asarray(data.Y)   # on the device once

    def run(self):
        self.trainer.fit(self.X, self.Y, epochs=1, progress=False)
        self.dev.synchronize()
        if self.role == "ours":
            c = self.trainer.path_choice
            self.path = "fast-path" if c.fast_path else "loop"
            self.notes = f"ran the {'fast path' if c.fast_path else 'loop'}: {c.reason}"


class SklearnCase(Case):
    """scikit-learn's MLPClassifier: the same hidden sizes, activation, batch and
    lr, plain SGD, one epoch per run (softmax + log-loss at the output, its only
    choice)."""

    def __init__(self, device, regime, data, seed=0):
        if device != "cpu":
            raise Skip("scikit-learn runs on the CPU only")
        sklearn = import_optional("sklearn", "the MLPClassifier peer")
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        act = {"sigmoid": "logistic", "relu": "relu", "tanh": "tanh",
               "identity": "identity"}.get(regime.activation)
        if act is None:
            raise Skip(f"MLPClassifier has no {regime.activation!r} activation")
        super().__init__("sklearn", f"sklearn {sklearn.__version__} MLPClassifier", device,
                         regime)
        self.notes = "trains softmax + log-loss at the output (MLPClassifier's only choice)"
        self.clf = MLPClassifier(
            hidden_layer_sizes=tuple(regime.sizes[1:-1]), activation=act, solver="sgd",
            batch_size=regime.batch, learning_rate="constant",
            learning_rate_init=regime.lr, momentum=0.0, nesterovs_momentum=False, alpha=0.0,
            max_iter=1, tol=0.0, n_iter_no_change=2 ** 31 - 1, shuffle=True,
            early_stopping=False, random_state=seed)
        self.X, self.labels = data.X, data.labels
        self.ConvergenceWarning = ConvergenceWarning

    def run(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", self.ConvergenceWarning)   # max_iter=1 by design
            warnings.simplefilter("ignore", RuntimeWarning)            # exp overflow at lr 3
            self.clf.fit(self.X, self.labels)


class GemmCase(Case):
    """The GEMMs of the regime's steps alone (forward, weight gradient, delta
    propagation except into the input), back to back, into preallocated
    buffers: no gather, bias, activation, loss or update.  Its time is the
    floor for an implementation built on the same GEMM library (NumPy's BLAS
    on the CPU, cuBLAS through CuPy on a GPU); another library or fused
    kernels may go below it."""

    role = "gemm"

    def __init__(self, device, regime, data, params, n_sets=3):
        if device == "cpu":
            xp, label, self.sync = np, "GEMM-only (np.matmul)", (lambda: None)
            self.ctx = contextlib.nullcontext
        else:
            from ..device import device as get_device

            dev = get_device(device)
            xp, label, self.sync = dev.xp, "GEMM-only (cupy.matmul)", dev.synchronize
            self.ctx = lambda: xp.cuda.Device(dev.index)
        super().__init__("floor", label, device, regime)
        self.notes = "the GEMMs of a step alone: no gather, bias, activation, loss or update"
        with self.ctx():
            self._setup(xp, regime, data, params, n_sets)

    def _setup(self, xp, regime, data, params, n_sets):
        B = regime.batch
        self.xp = xp
        self.W = [xp.asarray(W, dtype=np.float32) for W, _ in params]
        n_sets = max(1, min(n_sets, regime.steps))
        self.inputs = [xp.asarray(data.X[k * B:(k + 1) * B]) for k in range(n_sets)]
        rng = np.random.default_rng(1)
        self.a = [xp.empty((B, W.shape[0]), dtype=np.float32) for W in self.W]
        self.delta = [xp.asarray(rng.standard_normal((B, W.shape[0]), dtype=np.float32) * 0.01)
                      for W in self.W]
        self.nabla_W = [xp.empty_like(W) for W in self.W]

    def run(self):
        with self.ctx():
            self._steps()
        self.sync()

    def _steps(self):
        xp, W, a, delta, nabla_W = self.xp, self.W, self.a, self.delta, self.nabla_W
        for s in range(self.regime.steps):
            x = self.inputs[s % len(self.inputs)]
            a_prev = x
            for l in range(len(W)):                                 # forward
                xp.matmul(a_prev, W[l].T, out=a[l])
                a_prev = a[l]
            for l in range(len(W) - 1, -1, -1):                     # backward
                xp.matmul(delta[l].T, a[l - 1] if l else x, out=nabla_W[l])
                if l:
                    xp.matmul(delta[l], W[l], out=delta[l - 1])
