"""`gpubackprop bench`: gpubackprop against its peers, CPU against GPU.

    gpubackprop bench                    # quick: the four regimes, fewer samples per run
    gpubackprop bench --tiny             # seconds: every code path runs (no targets)
    gpubackprop bench --full             # full size, every backend, torch.compile too
    gpubackprop bench --device cuda --peers torch-eager,torch-graphs,floor --json PATH

The modules, in the order a run uses them:

    cases.py       the regimes (small, medium, narrow, wide), profiles, synthetic data
    peers.py       ours, scikit-learn, the GEMM-only time
    frameworks.py  PyTorch (eager, CUDA graphs, torch.compile), JAX (jitted epoch)
    timing.py      warm-up, round-robin timed runs, medians, ratios, the crossover
    machine.py     machine, versions, load, commit
    run.py         make_cases(), the matrix, the targets -> one JSON-able dict (SCHEMA)
    report.py      text and Markdown tables, atomic JSON
    plot.py        throughput against batch size (matplotlib)
    cli.py         the arguments and the files written
    ops.py         one backend op, for bench/test_bench_ops.py (pytest-benchmark)

PyTorch, JAX, scikit-learn, CuPy and matplotlib are optional: imported
lazily, a missing one is skipped with one line saying why.
"""
from .cases import PEERS, PROFILES, REGIME_NAMES, Regime, initial_params, make_data
from .cli import add_parser, cmd_bench, main
from .ops import OPS, op_case
from .peers import GemmCase, OursCase, Skip, SklearnCase
from .frameworks import JaxCase, TorchCase
from .plot import plot
from .report import format_table
from .run import SCHEMA, TARGETS, make_cases, run_bench
from .timing import crossover

__all__ = ["GemmCase", "JaxCase", "OPS", "OursCase", "PEERS", "PROFILES", "REGIME_NAMES",
           "Regime", "SCHEMA", "Skip", "SklearnCase", "TARGETS", "TorchCase", "add_parser",
           "cmd_bench", "crossover", "format_table", "initial_params", "main", "make_cases",
           "make_data", "op_case", "plot", "run_bench"]
