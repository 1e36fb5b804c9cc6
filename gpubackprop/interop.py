"""PyTorch interop: an MLP to and from a torch.nn.Sequential (torch optional).

    model = net.to_torch()            # Sequential(Linear, Sigmoid, Linear, Softmax(dim=1))
    net = gb.MLP.from_torch(model)    # the same network back

Layer l of an MLP is `Linear(n_in, n_out)` (weight = W, shape (n_out, n_in),
the same layout as here; bias = b) followed by its activation's module;
identity layers have no activation module.  With copy=False the arrays are
shared, not copied, through DLPack (NumPy <-> CPU tensors, CuPy <-> CUDA
tensors on the same GPU): training one trains the other.
"""
from .activations import LEAKY_SLOPE

#: activation name -> torch.nn module class name (identity: no module)
TORCH_MODULES = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "ReLU",
                 "leaky_relu": "LeakyReLU", "softplus": "Softplus", "softmax": "Softmax"}


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("PyTorch interop needs PyTorch: pip install torch") from None
    return torch


def _activation_module(nn, name):
    if name == "identity":
        return None
    if name == "leaky_relu":
        return nn.LeakyReLU(negative_slope=LEAKY_SLOPE)
    if name == "softmax":
        return nn.Softmax(dim=1)
    return getattr(nn, TORCH_MODULES[name])()


def _torch_device(torch, device):
    return torch.device("cuda", device.index) if device.kind == "cuda" else torch.device("cpu")


def to_torch(net, copy=True):
    """A torch.nn.Sequential computing what `net` computes, on the same device
    (the CPU for the cuda-emulator), with its dtype; copy=False shares W and b."""
    torch = _torch()
    nn = torch.nn
    dev = _torch_device(torch, net.device)
    dtype = getattr(torch, net.dtype)
    modules = []
    for layer in net.layers:
        linear = nn.Linear(layer.n_in, layer.n_out, device=dev, dtype=dtype)
        with torch.no_grad():
            for param, value in ((linear.weight, layer.W.data), (linear.bias, layer.b.data)):
                shared = torch.from_dlpack(value)      # zero-copy view of our array
                if copy:
                    param.copy_(shared)
                else:
                    param.data = shared
        modules.append(linear)
        act = _activation_module(nn, layer.activation)
        if act is not None:
            modules.append(act)
    return nn.Sequential(*modules)


def _activation_name(nn, module):
    """The activation name of a torch module, or None if it is not one we run."""
    for name, cls_name in TORCH_MODULES.items():
        if type(module) is getattr(nn, cls_name):
            if name == "leaky_relu" and module.negative_slope != LEAKY_SLOPE:
                return None
            if name == "softplus" and module.beta != 1:
                return None
            if name == "softmax" and module.dim not in (1, -1):
                return None
            return name
    return "identity" if type(module) is nn.Identity else None


def _layers_of(nn, module):
    """[(Linear, activation name)] of a Sequential; ValueError naming the
    first module that does not fit Linear (activation) Linear (activation) ..."""
    supported = ", ".join(["Linear", "Identity"] + [f"{c}" for c in TORCH_MODULES.values()])
    layers = []
    for i, m in enumerate(module):
        where = f"module {i} of the Sequential ({m!r})"
        if type(m) is nn.Linear:
            layers.append([m, "identity"])
            continue
        name = _activation_name(nn, m)
        if name is None:
            raise ValueError(f"from_torch: {where} is not supported; gpubackprop runs "
                             f"Sequential models of {supported} (LeakyReLU with "
                             f"negative_slope={LEAKY_SLOPE}, Softplus with beta=1, "
                             "Softmax(dim=1))")
        if name == "identity":
            continue
        if not layers or layers[-1][1] != "identity":
            raise ValueError(f"from_torch: {where} must follow a Linear layer (one "
                             "activation per layer)")
        layers[-1][1] = name
    if not layers:
        raise ValueError("from_torch: the Sequential has no Linear layer")
    return layers


def layers_from_torch(module, device=None, copy=True):
    """MLP.from_torch's half: (Dense layers, device, dtype) of a
    torch.nn.Sequential of Linear layers, each followed by at most one
    supported activation module (see TORCH_MODULES).

    device: where the MLP lives (None: the module's device); dtype: the
    module's (float32 or float64).  A Linear without bias gets b = 0.
    copy=False shares the parameters through DLPack when the devices match.
    """
    torch = _torch()
    from .device import device as get_device
    from .layers import Dense

    nn = torch.nn
    if not isinstance(module, nn.Sequential):
        raise TypeError(f"from_torch takes a torch.nn.Sequential; got {type(module).__name__}")
    layers = _layers_of(nn, module)
    first = layers[0][0].weight
    dtypes = {str(p.dtype) for lin, _ in layers for p in lin.parameters()}
    if dtypes - {"torch.float32", "torch.float64"} or len(dtypes) != 1:
        raise ValueError(f"from_torch: the parameters must all be float32 or all float64; "
                         f"got {sorted(dtypes)}")
    if device is None:
        device = "cpu" if first.device.type == "cpu" else f"cuda:{first.device.index or 0}"
    target = get_device(device)
    dense = []
    for lin, act in layers:
        W = lin.weight.detach()
        b = lin.bias.detach() if lin.bias is not None else torch.zeros(
            lin.out_features, dtype=W.dtype, device=W.device)
        dense.append(Dense(lin.in_features, lin.out_features, act,
                           W=_array(W, target, copy), b=_array(b, target, copy)))
    return dense, target, str(first.dtype).split(".")[1]


def _array(t, target, copy):
    """A detached torch tensor as an array for `target`: a DLPack view (NumPy
    for the host, CuPy on the same GPU) copied only when copy=True; from
    another device through the host (our device layer moves it on)."""
    same_gpu = target.kind == "cuda" and t.device.type == "cuda" and \
        (t.device.index or 0) == target.index
    import numpy as np

    array = target.xp.from_dlpack(t) if same_gpu else np.from_dlpack(t.cpu())
    return array.copy() if copy else array
