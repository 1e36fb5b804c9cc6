"""backends/__init__.py: the registry, the `auto` rule and backend options."""
import pytest

import gpubackprop as gb
from gpubackprop import backends
from gpubackprop.backends.base import Backend
from gpubackprop.device import Device


def test_every_registered_backend_declares_the_contract():
    for (name, kind) in backends.REGISTRY:
        try:
            cls = backends._load(name, kind)
        except ImportError:       # an optional dependency is missing here: nothing to check
            continue
        assert issubclass(cls, Backend) and cls.name == name and kind in cls.device_kinds


def test_auto_on_the_cpu_follows_the_rule():
    cpu = Device("cpu")
    want = next(n for n in backends.AUTO["cpu"] if backends.unavailable_reason(n, cpu) is None)
    assert backends.create("auto", cpu).name == want
    assert gb.MLP.from_sizes([2, 2]).backend.name == want


def test_unknown_names_kinds_and_options_are_refused():
    cpu = Device("cpu")
    with pytest.raises(ValueError, match="backend"):
        backends.create("nupmy", cpu)
    with pytest.raises(ValueError, match="runs on cuda"):
        backends.create("cupy", cpu)
    with pytest.raises(TypeError, match="backend_options must be a dict"):
        backends.create("numpy", cpu, options=[("tf32", True)])
    with pytest.raises(TypeError, match="do not fit backend 'numpy'"):
        gb.MLP.from_sizes([2, 2], backend="numpy", backend_options={"tf32": True})


def test_available_lists_every_backend_of_the_kind_with_a_reason():
    got = backends.available(Device("cpu"))
    assert set(got) == {n for n, k in backends.REGISTRY if k == "cpu"}
    assert got["numpy"] is None
    assert all(why is None or isinstance(why, str) and why for why in got.values())


def test_auto_states_its_rule_for_every_device_kind():
    assert set(backends.AUTO_REASONS) == set(backends.AUTO)
    for kind, reason in backends.AUTO_REASONS.items():
        assert reason.startswith(backends.AUTO[kind][0])   # the sentence names the first pick
