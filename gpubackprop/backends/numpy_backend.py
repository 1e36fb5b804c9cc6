"""The reference backend: the formulas of SPEC section 1 written with xp.

The ops are the base class's own (backends/base.py), so the reference lives
once; this file only names it.
"""
from .base import Backend


class NumpyBackend(Backend):
    name = "numpy"
    device_kinds = ("cpu",)
