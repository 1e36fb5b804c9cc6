"""The framework peers: PyTorch (eager, CUDA graphs, torch.compile) and JAX
(the whole epoch compiled).  Both are optional: absent, they raise Skip.

Both start from the weights ours starts from, train on the same float32
data with the same loss (sse = sum of squares, mean over the batch; cross
entropy on identity logits), the same batch, lr and number of steps, and
draw a fresh shuffle each run on the device they run on.
"""
import numpy as np

from .peers import Case, Skip, import_optional

_TORCH_ACT = {"sigmoid": "Sigmoid", "relu": "ReLU", "tanh": "Tanh", "identity": None}


def _check_output(regime, who):
    if regime.loss == "cross_entropy" and regime.output != "identity":
        raise Skip(f"the {who} peer takes cross entropy on identity logits only")
    if regime.output not in _TORCH_ACT or regime.activation not in _TORCH_ACT:
        raise Skip(f"the {who} peer has no {regime.activation!r}/{regime.output!r} layer")


class TorchCase(Case):
    """PyTorch: mode "eager" (the usual loop), "graphs" (the whole step in a
    CUDA graph, GPU only) or "compile" (torch.compile(model) in the loop)."""

    def __init__(self, device, regime, data, params, mode="eager", seed=0):
        torch = import_optional("torch", "the PyTorch peers")
        self.torch = torch
        on_gpu = device != "cpu"
        if mode == "graphs" and not on_gpu:
            raise Skip("CUDA graphs need a GPU; on the CPU torch-eager stands for PyTorch")
        if on_gpu and not torch.cuda.is_available():
            raise Skip("this PyTorch build sees no CUDA device")
        _check_output(regime, "PyTorch")
        version = torch.__version__.split("+")[0]
        label = {"eager": "PyTorch eager", "graphs": "PyTorch + CUDA graph",
                 "compile": "PyTorch torch.compile"}[mode]
        super().__init__(f"torch-{mode}", f"{label} {version}", device, regime)
        self.mode = mode
        self.dev = torch.device(device if on_gpu else "cpu")
        self.model = self._model(params)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=regime.lr)
        self.X = torch.from_numpy(data.X).to(self.dev)
        if regime.loss == "cross_entropy":
            self.T = torch.from_numpy(data.labels).to(self.dev)
            self.lossfn = torch.nn.functional.cross_entropy
        else:  # sse: the per-example sum of squares, mean over the batch
            self.T = torch.from_numpy(data.Y).to(self.dev)
            self.lossfn = lambda out, y: ((out - y) ** 2).sum() / out.shape[0]
        self.gen = torch.Generator(device=self.dev).manual_seed(seed)
        self.forward = torch.compile(self.model) if mode == "compile" else self.model
        self.graph = None
        if on_gpu:
            self.notes = (f"float32 matmul precision {torch.get_float32_matmul_precision()!r} "
                          f"(TF32 {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'})")
        else:
            self.notes = f"{torch.get_num_threads()} threads"

    def _model(self, params):
        torch, nn = self.torch, self.torch.nn
        layers = []
        for l, (W, b) in enumerate(params):
            lin = nn.Linear(W.shape[1], W.shape[0], device=self.dev, dtype=torch.float32)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W))
                lin.bias.copy_(torch.from_numpy(b))
            layers.append(lin)
            act = self.regime.output if l == len(params) - 1 else self.regime.activation
            if _TORCH_ACT[act]:
                layers.append(getattr(nn, _TORCH_ACT[act])())
        return nn.Sequential(*layers)

    def _step(self, idx):
        out = self.forward(self.X.index_select(0, idx))
        loss = self.lossfn(out, self.T.index_select(0, idx))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def _capture(self):
        """The CUDA-graph recipe of the PyTorch docs: warm up on a side stream,
        then capture forward, backward and the optimizer step on a static index."""
        torch = self.torch
        B, N = self.regime.batch, self.regime.samples
        self.static_idx = torch.arange(B, device=self.dev) % N
        side = torch.cuda.Stream(self.dev)
        side.wait_stream(torch.cuda.current_stream(self.dev))
        with torch.cuda.stream(side):
            for _ in range(3):
                self._step(self.static_idx)
        torch.cuda.current_stream(self.dev).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            out = self.model(self.X.index_select(0, self.static_idx))
            loss = self.lossfn(out, self.T.index_select(0, self.static_idx))
            loss.backward()
            self.opt.step()

    def run(self):
        torch = self.torch
        B, steps = self.regime.batch, self.regime.steps
        order = torch.randperm(self.regime.samples, generator=self.gen, device=self.dev)
        if self.mode == "graphs":
            if self.graph is None:
                self._capture()
            for s in range(steps):
                self.static_idx.copy_(order[s * B:(s + 1) * B])
                self.graph.replay()
        else:
            for s in range(steps):
                self._step(order[s * B:(s + 1) * B])
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)


class JaxCase(Case):
    """JAX: one epoch = one jax.lax.scan over the steps inside jax.jit (the
    shuffle, the gathers, forward, jax.grad and the SGD update all compiled
    into one program), parameters donated so the update is in place."""

    def __init__(self, device, regime, data, params, seed=0):
        jax = import_optional("jax", "the JAX peer")
        platform = "cpu" if device == "cpu" else "gpu"
        try:
            devices = jax.devices(platform)
        except RuntimeError as exc:
            raise Skip(f"this JAX install has no {platform.upper()} backend "
                       f"(pip install 'jax[cuda13]' for one): {exc}") from None
        _check_output(regime, "JAX")
        index = int(device.partition(":")[2] or 0) if platform == "gpu" else 0
        if index >= len(devices):
            raise Skip(f"JAX sees {len(devices)} {platform.upper()} device(s), not {device}")
        super().__init__("jax", f"JAX {jax.__version__} jit epoch", device, regime)
        self.jax, self.jdev = jax, devices[index]
        self.notes = "the whole epoch in one jax.lax.scan under jax.jit"
        if platform == "gpu":   # JAX takes 75% of GPU memory at start unless told not to
            self.notes += ("; on a GPU run it with XLA_PYTHON_CLIENT_PREALLOCATE=false so "
                           "the other rows keep their memory")
        put = (lambda a: jax.device_put(np.ascontiguousarray(a), self.jdev))
        self.params = tuple((put(W), put(b)) for W, b in params)
        self.X = put(data.X)
        self.T = put(data.Y)
        self.key = jax.random.key(seed)
        self.runs = 0
        self.epoch = jax.jit(_jax_epoch(jax, regime), donate_argnums=0)

    def run(self):
        key = self.jax.random.fold_in(self.key, self.runs)
        self.runs += 1
        self.params = self.epoch(self.params, key, self.X, self.T)
        self.jax.block_until_ready(self.params)


def _jax_epoch(jax, regime):
    """epoch(params, key, X, T) -> params after regime.steps SGD steps."""
    jnp = jax.numpy
    fns = {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "tanh": jnp.tanh,
           "identity": (lambda z: z)}
    acts = [fns[regime.activation]] * (len(regime.sizes) - 2) + [fns[regime.output]]
    B, steps, N, lr = regime.batch, regime.steps, regime.samples, regime.lr

    def cost(params, x, y):
        a = x
        for (W, b), f in zip(params, acts):
            a = f(a @ W.T + b)
        if regime.loss == "cross_entropy":          # y one-hot, a the logits
            return -(y * jax.nn.log_softmax(a, axis=1)).sum() / B
        return ((a - y) ** 2).sum() / B

    grad = jax.grad(cost)

    def epoch(params, key, X, T):
        order = jax.random.permutation(key, N).reshape(steps, B)

        def step(p, idx):
            g = grad(p, X[idx], T[idx])
            return jax.tree.map(lambda w, nabla: w - lr * nabla, p, g), None

        params, _ = jax.lax.scan(step, params, order)
        return params

    return epoch
