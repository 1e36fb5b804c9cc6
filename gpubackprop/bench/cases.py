"""What the benchmark trains: the regimes, the profiles (sizes per run) and
their synthetic data.

The four regimes, at their shapes in the quick and full profiles:

    small   Nielsen's network.py: [784, 30, 10] sigmoid, sse, batch 10, lr 3.0
    medium  [784, 256, 256, 10] ReLU, identity logits, cross entropy, batch 128
    narrow  narrow-deep: every layer 64 wide (the input too), 5 hidden ReLU
            layers, 10 identity logits, cross entropy, batch 65,536
    wide    [784, 4096, 4096, 10] ReLU, identity logits, cross entropy, batch 4096

One timed run is one epoch of `steps` mini-batch SGD steps over
batch x steps synthetic examples.  The profiles differ in the number of
steps (the full profile: Nielsen's 50,000 examples, medium's 60,000), and a
GPU runs more steps per run where the CPU's count would take milliseconds
(rows record their steps and samples; ratios use samples/s); `tiny` shrinks
the shapes too and only checks that every code path runs.
"""
import dataclasses

import numpy as np


def plural(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")


@dataclasses.dataclass(frozen=True)
class Regime:
    """One training recipe: shapes, activations, loss, lr, batch and steps per run."""
    name: str
    sizes: tuple
    activation: str          # hidden layers
    output: str              # output layer
    loss: str
    lr: float
    batch: int
    steps: int               # SGD steps per timed run (one epoch)
    title: str = ""
    gpu_steps: int = 0       # steps per run on a GPU (0: the same); a GPU runs an epoch
                             # in milliseconds, too short to time well

    def on(self, device):
        """This regime as run on `device` ("cpu", "cuda:N")."""
        if device == "cpu" or not self.gpu_steps:
            return self
        return dataclasses.replace(self, steps=self.gpu_steps)

    @property
    def samples(self):
        return self.batch * self.steps

    @property
    def weights(self):
        return sum(a * b for a, b in zip(self.sizes, self.sizes[1:]))

    @property
    def flops_per_sample(self):
        """6 x sum(n_in x n_out): forward, delta propagation and weight gradient GEMMs."""
        return 6 * self.weights

    @property
    def shape(self):
        """What a target is set for: everything but the number of steps."""
        return (self.sizes, self.activation, self.output, self.loss, self.batch)

    def describe(self):
        return (f"{list(self.sizes)} {self.activation} -> {self.output}, {self.loss}, "
                f"batch {self.batch}, {plural(self.steps, 'step')} ({self.samples} samples) "
                f"per run, lr {self.lr}, float32")

    def as_dict(self):
        d = dataclasses.asdict(self)
        d["sizes"] = list(self.sizes)
        d.update(samples_per_run=self.samples, flops_per_step=self.flops_per_sample * self.batch)
        return d


def nielsen(sizes, steps, gpu_steps=0):
    """Nielsen's recipe: sigmoid everywhere, quadratic cost, batch 10, lr 3.0."""
    return Regime("small", tuple(sizes), "sigmoid", "sigmoid", "sse", 3.0, 10, steps,
                  "Nielsen's network.py", gpu_steps)


def relu(name, sizes, batch, steps, title, gpu_steps=0):
    """ReLU hidden layers, identity logits, softmax cross entropy, lr 0.01."""
    return Regime(name, tuple(sizes), "relu", "identity", "cross_entropy", 0.01, batch, steps,
                  title, gpu_steps)


NIELSEN = (784, 30, 10)
MEDIUM = (784, 256, 256, 10)
NARROW = (64,) * 6 + (10,)
WIDE = (784, 4096, 4096, 10)
REGIME_NAMES = ("small", "medium", "narrow", "wide")


@dataclasses.dataclass(frozen=True)
class Sweep:
    """The batch-size sweep on one network: the plot's lines."""
    sizes: tuple
    batches: tuple
    samples: int             # per run, at every batch size
    gpu_samples: int = 0     # per run on a GPU (0: the same)

    def regimes(self):
        return [relu("sweep", self.sizes, b, max(1, self.samples // b), "batch sweep",
                     max(1, self.gpu_samples // b) if self.gpu_samples else 0)
                for b in self.batches]


@dataclasses.dataclass(frozen=True)
class Profile:
    """Sizes of one benchmark run; `peers` are the default peers (absent ones skip)."""
    name: str
    regimes: tuple
    sweep: Sweep
    repeats: int
    warmup: int
    all_backends: bool       # also time every usable backend besides auto's choice
    peers: tuple
    ops_batches: tuple       # the grid of the pytest-benchmark op suite
    ops_widths: tuple
    about: str

    def regime(self, name):
        return next(r for r in self.regimes if r.name == name)


#: "paths": auto's backend told each of its paths (fast path, loop), so a run
#: shows auto within a few percent of the faster one
PEERS = ("torch-eager", "torch-graphs", "torch-compile", "jax", "sklearn", "floor", "paths")
_DEFAULT_PEERS = ("torch-eager", "torch-graphs", "jax", "sklearn", "floor", "paths")

PROFILES = {
    "tiny": Profile(
        "tiny",
        (nielsen((32, 16, 10), 20),
         relu("medium", (32, 24, 24, 10), 16, 4, "medium"),
         relu("narrow", (16,) * 6 + (10,), 256, 2, "narrow-deep"),
         relu("wide", (32, 64, 64, 10), 64, 2, "wide")),
        Sweep((32, 24, 24, 10), (4, 16), 64),
        repeats=2, warmup=1, all_backends=False, peers=_DEFAULT_PEERS,
        ops_batches=(16,), ops_widths=(32,),
        about="tiny shapes, seconds: checks that every code path runs; the timings mean "
              "nothing and no target is checked"),
    "quick": Profile(
        "quick",
        (nielsen(NIELSEN, 1000, gpu_steps=2000),
         relu("medium", MEDIUM, 128, 40, "medium", gpu_steps=468),
         relu("narrow", NARROW, 65536, 2, "narrow-deep", gpu_steps=16),
         relu("wide", WIDE, 4096, 1, "wide", gpu_steps=16)),
        Sweep(MEDIUM, (16, 64, 256, 1024, 4096), 4096, gpu_samples=16384),
        repeats=3, warmup=1, all_backends=False, peers=_DEFAULT_PEERS,
        ops_batches=(16, 256, 4096), ops_widths=(64, 512),
        about="the four regimes at their shapes, fewer samples per run (a few minutes on "
              "a 2-core CPU, most of it in wide)"),
    "full": Profile(
        "full",
        (nielsen(NIELSEN, 5000),
         relu("medium", MEDIUM, 128, 468, "medium"),
         relu("narrow", NARROW, 65536, 8, "narrow-deep", gpu_steps=32),
         relu("wide", WIDE, 4096, 2, "wide", gpu_steps=32)),
        Sweep(MEDIUM, tuple(2 ** k for k in range(4, 15)), 16384, gpu_samples=65536),
        repeats=5, warmup=1, all_backends=True, peers=PEERS,
        ops_batches=(16, 256, 4096, 65536), ops_widths=(64, 1024, 4096),
        about="the four regimes at full size (Nielsen's 50,000 examples, medium's 60,000), "
              "every usable backend, torch.compile too (about half an hour on a 2-core CPU)"),
}


@dataclasses.dataclass
class Data:
    X: np.ndarray        # (N, n_in) float32 in [0, 1)
    labels: np.ndarray   # (N,) int64, every class present
    Y: np.ndarray        # (N, n_out) float32 one-hot


def make_data(regime, seed=0):
    """The regime's data set: one epoch of batch x steps synthetic examples
    (uniform pixels, balanced random labels)."""
    rng = np.random.default_rng(seed)
    n, n_in, n_out = regime.samples, regime.sizes[0], regime.sizes[-1]
    X = rng.random((n, n_in), dtype=np.float32)
    labels = rng.permutation(np.arange(n) % n_out).astype(np.int64)
    Y = np.zeros((n, n_out), np.float32)
    Y[np.arange(n), labels] = 1.0
    return Data(X, labels, Y)


def initial_params(regime, seed=0):
    """[(W, b), ...] float32 NumPy copies of gpubackprop's initialisation with
    `seed`: the peers start from the weights ours starts from."""
    from ..network import MLP

    net = MLP.from_sizes(list(regime.sizes), activation=regime.activation,
                         output_activation=regime.output, device="cpu", dtype="float32",
                         backend="numpy", seed=seed)
    return [(np.array(W, dtype=np.float32), np.array(b, dtype=np.float32))
            for W, b in net.params]
