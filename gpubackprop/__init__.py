"""gpubackprop: backpropagation from the chain rule to the GPU.

    import gpubackprop as gb
    net = gb.MLP.from_sizes([784, 30, 10], activation="sigmoid", seed=0)
    trainer = gb.Trainer(net, loss="sse", optimizer=gb.SGD(lr=3.0), batch_size=10)
    history = trainer.fit(X, Y, epochs=30, validation=(X_val, Y_val))
"""
__version__ = "0.1.0"

from . import autotune, data, explain, memory
from . import backends
from .device import Device, available_devices, device, transfers
from .gradcheck import gradcheck
from .layers import Dense
from .losses import Loss
from .memory import DeviceOutOfMemory
from .network import MLP, load
from .optim import SGD
from .tensor import Tensor
from .history import History, TrainingDiverged
from .trainer import Trainer

__all__ = ["Dense", "Device", "DeviceOutOfMemory", "History", "Loss", "MLP", "SGD", "Tensor", "Trainer",
           "TrainingDiverged", "autotune", "available_devices", "data", "device", "explain", "backends",
           "gradcheck", "load", "memory", "transfers"]
