"""End-to-end training throughput of the regimes of `gpubackprop bench`
(small, medium, narrow, wide: see gpubackprop/bench/cases.py) for gpubackprop
(the "auto" backend, and its backend told each of its paths: the fast path
and the loop) and the peers present: PyTorch eager, with a CUDA graph
(GPU) and torch.compile, JAX's jitted epoch, scikit-learn's MLPClassifier
(CPU) and the GEMM-only time.  One round = one epoch of the regime's steps on
the same data, float32; extra_info has the samples per round and the flops
per sample, so samples/s = samples / mean and GFLOP/s follows.
`gpubackprop bench` runs the same cases round-robin and prints the ratios.
"""
import pytest

from gpubackprop import bench


@pytest.fixture(scope="module")
def datasets():
    cache = {}

    def get(regime):
        if regime.name not in cache:
            cache.clear()
            cache[regime.name] = (bench.make_data(regime), bench.initial_params(regime))
        return cache[regime.name]

    return get


def test_training(benchmark, training_case, profile, datasets):
    regime, device, impl = training_case
    if impl == "torch-compile" and profile.name != "full":
        pytest.skip("torch-compile runs with --full only (compiling takes tens of seconds)")
    data, params = datasets(regime)
    path = impl[len("gpubackprop["):-1] if impl.startswith("gpubackprop[") else None
    peers = ["paths"] if path else [] if impl == "gpubackprop" else [impl]
    cases, skipped = bench.make_cases(device, regime, data, params, peers)
    if skipped:
        pytest.skip(skipped[0][1])
    case = next((c for c in cases if c.impl == impl or path and c.impl.endswith(f":{path}]")),
                None)
    if case is None:
        pytest.skip(f"{impl}: auto's backend has no such path on {device}")
    case.run()                                   # warm-up
    benchmark.group = f"{regime.name} on {device}"
    benchmark.extra_info.update(regime=regime.as_dict(), impl=case.impl, label=case.label,
                                samples=regime.samples,
                                flops_per_sample=regime.flops_per_sample)
    benchmark.pedantic(case.run, rounds=profile.repeats, iterations=1)
