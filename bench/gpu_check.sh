#!/usr/bin/env bash
# The GPU check and benchmark in one call, sized for the device budget: at most
# ~6 minutes of command time on an H200 (run it with timeout_s 420), every step
# under its own `timeout`, the most valuable first, so a kill keeps what finished.
#
#   bash bench/gpu_check.sh --stamp    here, before the device call: writes bench/COMMIT
#                                      (the commit and whether the tree is dirty), which
#                                      travels with the working tree when .git does not
#   bash bench/gpu_check.sh            on the GPU machine, in the repository root
#   bash bench/gpu_check.sh --dry-run  on a CPU: the same steps in the same order, the GPU
#                                      parts on the cuda-emulator where they can run,
#                                      skipped with a line where not (tests/test_gpu_check.py)
#   --deadline SECONDS                 all steps' time (default 345; 150 dry): a step gets at
#                                      most what is left, and none starts with under 5 s
#
# Steps: 1 preflight (install, versions, nvidia-smi, CUDA header folders) -> 2 every
# kernel and backend against NumPy float64 on fresh random data -> 3 training GPU vs
# CPU and host reads per epoch -> 4 the four regimes against PyTorch eager, PyTorch
# CUDA graphs and the cuBLAS floor (JSON rewritten after every regime) -> 5 extras if
# time remains (compute-sanitizer racecheck + memcheck on fused steps, op benchmarks).
#
# Files under $OUT (at most 8, none deeper): summary.txt (written as it goes),
# tests.xml (steps 2 and 3, junit), bench.json (`gpubackprop bench` schema, ready to
# commit as bench/gpu.json), bench.md, bench.png, logs.tar.gz (every step's log).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD

commit_here() {  # the checkout's commit, "-dirty" when tracked files differ from it
    local sha
    sha=$(git rev-parse --short=12 HEAD 2>/dev/null) || return 1
    [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]] && sha="$sha-dirty"
    echo "$sha"
}

usage() {
    echo "usage: bash bench/gpu_check.sh [--stamp | --dry-run] [--deadline SECONDS]" >&2
    exit 2
}
mode=gpu
deadline=
while (( $# )); do
    case $1 in
        --stamp) commit_here > bench/COMMIT && echo "bench/COMMIT: $(cat bench/COMMIT)"; exit ;;
        --dry-run) mode=dry ;;
        --deadline) [[ ${2:-} =~ ^[0-9]+$ ]] || usage; deadline=$2; shift ;;
        *) usage ;;
    esac
    shift
done

OUT=${OUT:-$(mktemp -d -t gpu-check.XXXX)}   # the device tool's results folder, or a new one
mkdir -p "$OUT" || exit 2
echo "results in $OUT"
LOGS=$(mktemp -d)                        # step logs, packed into $OUT/logs.tar.gz
trap 'rm -rf "$LOGS"' EXIT
SUMMARY=$OUT/summary.txt
DEADLINE=345                             # seconds of command time for all steps
[[ $mode == dry ]] && DEADLINE=150
[[ -n $deadline ]] && DEADLINE=$deadline
PY=python3
export PYTHONUNBUFFERED=1
status=0
n_step=0
: > "$SUMMARY"

say() { echo "$*" | tee -a "$SUMMARY"; }
pack() { tar czf "$OUT/logs.tar.gz" -C "$LOGS" . 2>/dev/null; }

# step NAME BUDGET_S COMMAND...: run under `timeout` (at most the time left), log to
# $LOGS/NAME.log, one line of outcome and the log's last lines in the summary
step() {
    local name=$1 budget=$2 left rc t0
    shift 2
    n_step=$((n_step + 1))
    left=$((DEADLINE - SECONDS))
    (( budget > left )) && budget=$left
    if (( budget < 5 )); then
        say "== step $n_step $name: SKIPPED (out of time: ${left}s left of ${DEADLINE}s)"
        return 0
    fi
    t0=$SECONDS
    if declare -F "$1" > /dev/null; then     # a function of this script: in a child bash
        timeout -k 5 "$budget" bash -c "$1" > "$LOGS/$name.log" 2>&1
    else
        timeout -k 5 "$budget" "$@" > "$LOGS/$name.log" 2>&1
    fi
    rc=$?
    if (( rc == 0 )); then
        say "== step $n_step $name: ok ($((SECONDS - t0))s)"
    elif (( rc == 124 || rc == 137 )); then
        say "== step $n_step $name: TIMED OUT after ${budget}s (what finished is kept)"
        status=1
    else
        say "== step $n_step $name: FAILED (exit $rc, $((SECONDS - t0))s)"
        status=1
    fi
    tail -n 4 "$LOGS/$name.log" | sed 's/^/   /' | tee -a "$SUMMARY"
    pack
    return 0
}
skip() {  # skip NAME WHY: a step that cannot run here, said in one line
    n_step=$((n_step + 1))
    say "== step $n_step $1: skipped ($2)"
}

# ---- 1. preflight ----------------------------------------------------------------------
COMMIT=$(cat bench/COMMIT 2>/dev/null || commit_here || echo unknown)
say "gpu_check ($mode) commit $COMMIT, $(date -u +%Y-%m-%dT%H:%M:%SZ), $(hostname)"

do_install() {
    if [[ $mode == dry ]]; then
        echo "dry run: nothing installed (this environment's gpubackprop is used)"
    else
        $PY -m pip install --no-index --no-deps --no-build-isolation -e . ||
            echo "pip install failed: falling back to PYTHONPATH=$ROOT"
    fi
}
export mode PY LOGS ROOT
export -f do_install
step install 60 do_install
# installed? (asked from outside the checkout, where the source tree is not on sys.path)
if ! (cd / && $PY -c "import gpubackprop.backends.gpu_common as g; g.kernels_package()") \
        2>/dev/null; then
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
    say "   (gpubackprop imported from the source tree: PYTHONPATH=$ROOT)"
fi

cat > "$LOGS/preflight.py" <<'EOF'
import importlib, platform, sys
from gpubackprop import backends
device = importlib.import_module("gpubackprop.device")
n, why = device.cuda_status()
for kind in (["cuda"] if n else []) + ["cuda-emulator"]:
    try:
        print(f"backends on {kind}:", backends.available(device.device(kind)))
    except Exception as exc:
        print(f"backends on {kind}: {exc}")
versions = []
for name in ("numpy", "cupy", "numba", "numba_cuda", "torch", "pytest", "gpubackprop"):
    try:
        versions.append(f"{name} {importlib.import_module(name).__version__}")
    except Exception as exc:
        versions.append(f"{name} missing ({type(exc).__name__})")
print(f"python {sys.version.split()[0]} on {platform.machine()}: " + ", ".join(versions))
try:   # a diagnostic only: the folders CuPy itself hands NVRTC (a private CuPy helper)
    import cupy, cupy._environment as env
    v = cupy.cuda.runtime.runtimeGetVersion()
    print("CuPy's CUDA header folders:",
          env._get_include_dir_from_conda_or_wheel(v // 1000, v % 1000 // 10),
          "CUDA path:", cupy.cuda.get_cuda_path())
except Exception as exc:
    print(f"CuPy's CUDA header folders: unknown ({type(exc).__name__}: {exc})")
print(f"header folder with crt/mma.h (-I for the TF32 kernel): {device.cuda_include_path()}")
print(f"CUDA devices usable: {n}" + (f" ({why})" if why else ""))
EOF
do_preflight() {
    nvidia-smi || echo "nvidia-smi: not found (no NVIDIA driver here)"
    [[ $mode == gpu ]] && { $PY -m gpubackprop info || true; }
    $PY "$LOGS/preflight.py"
}
export -f do_preflight
step preflight 40 do_preflight

# ---- 2. every kernel and backend against NumPy float64 ----------------------------------
PYTEST=($PY -m pytest -p no:cacheprovider -q -rs)
PYTEST_SERIAL=("${PYTEST[@]}")
if [[ $mode == gpu ]] && $PY -c "import xdist" 2>/dev/null; then
    PYTEST+=(-n 4)                       # 16 CPU cores: compile in parallel
fi
GPU_TESTS=(tests/test_gpu_backends.py tests/test_fused_gpu.py tests/test_cuda_backend.py
           tests/test_fused_backend.py tests/test_kernels_nvrtc.py)
if [[ $mode == gpu ]]; then
    # -v: every test's outcome is in the log as it happens, kept if the step is killed
    step kernels 120 "${PYTEST[@]}" -v "${GPU_TESTS[@]}" -k "not emulator" \
        --junitxml="$LOGS/kernels.xml"
else
    say "   dry run: the GPU test files collect and skip; the cuda-emulator runs a few cases"
    step kernels 60 "${PYTEST[@]}" "${GPU_TESTS[@]}" \
        -k "emulator and (ops_match or fused_forward_and_gradients)" \
        --junitxml="$LOGS/kernels.xml"
fi

merge_junit() {  # the junit files of steps 2 and 3 as one $OUT/tests.xml
    $PY - "$OUT/tests.xml" "$LOGS"/*.xml <<'EOF'
import sys, xml.etree.ElementTree as ET
merged = ET.Element("testsuites")
for path in sys.argv[2:]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        continue
    merged.extend(root if root.tag == "testsuites" else [root])
ET.ElementTree(merged).write(sys.argv[1], encoding="utf-8", xml_declaration=True)
EOF
}
merge_junit

# ---- 3. training: GPU vs CPU, host reads per epoch ----------------------------------------
if [[ $mode == gpu ]]; then
    step training 60 "${PYTEST_SERIAL[@]}" -s tests/test_gpu_training.py \
        --junitxml="$LOGS/training.xml"
    grep -E "host reads per epoch|val accuracy" "$LOGS/training.log" | sed 's/^/   /' |
        tee -a "$SUMMARY"
else
    say "   dry run: host reads are counted on a GPU only (emulator arrays live in host memory)"
    step training 40 "${PYTEST[@]}" tests/test_gpu_training.py tests/test_cuda_backend.py \
        -k "trainer_fit and emulator" --junitxml="$LOGS/training.xml"
fi
merge_junit

# ---- 4. headline timings ------------------------------------------------------------------
BENCH_FILES=(--json "$OUT/bench.json" --markdown "$OUT/bench.md" --plot "$OUT/bench.png")
if [[ $mode == gpu ]]; then
    step bench 150 $PY -m gpubackprop bench --device cuda --regimes small,narrow,wide,medium \
        --peers torch-eager,torch-graphs,floor --repeats 3 --commit "$COMMIT" --out none \
        "${BENCH_FILES[@]}"
else
    say "   dry run: the benchmark runs on the CPU with --tiny (the cuda-emulator is no"
    say "   benchmark device): it checks the files, it measures no GPU"
    step bench 60 $PY -m gpubackprop bench --tiny --device cpu --regimes small --peers floor \
        --repeats 1 --commit "$COMMIT" --out none --quiet "${BENCH_FILES[@]}"
fi
$PY - "$OUT/bench.json" <<'EOF' 2>/dev/null | tee -a "$SUMMARY"
import json, sys
d = json.load(open(sys.argv[1]))
done = sorted({r["regime"] for r in d.get("results", [])})
print(f"   bench.json: regimes measured {done}, complete {d.get('complete')}, "
      f"gpus {d.get('machine', {}).get('gpus')}, skipped {len(d.get('skipped', []))}")
EOF

# ---- 5. extras, if time remains ---------------------------------------------------------------
cat > "$LOGS/fused_steps.py" <<'EOF'
# two fused SGD steps of a narrow MLP on the GPU (for compute-sanitizer)
import numpy as np
import gpubackprop as gb
from gpubackprop import losses
from gpubackprop.backends.base import Hyper
net = gb.MLP.from_sizes([64, 128, 128, 10], device="cuda", dtype="float32", backend="fused",
                        seed=0)
rng = np.random.default_rng(0)
X = net.device.asarray(rng.normal(size=(200, 64)).astype(np.float32))
Y = net.device.asarray(np.eye(10, dtype=np.float32)[rng.integers(0, 10, 200)])
order = net.device.asarray(rng.permutation(200))
state = gb.SGD(0.1, 0.9).init_state(net.params)
hyper = Hyper(tuple(l.activation for l in net.layers), losses.get("cross_entropy"), 100,
              lr=0.1, momentum=0.9)
costs, correct, bad = net.backend.train_epoch(net.params, state, X, Y, order, hyper)
net.device.synchronize()
print("fused steps ran: costs", gb.device("cpu").asarray(costs))
EOF
if [[ $mode == gpu ]] && command -v compute-sanitizer > /dev/null; then
    step racecheck 60 compute-sanitizer --tool racecheck --error-exitcode 3 \
        $PY "$LOGS/fused_steps.py"
    step memcheck 60 compute-sanitizer --tool memcheck --error-exitcode 3 \
        $PY "$LOGS/fused_steps.py"
elif [[ $mode == gpu ]]; then
    skip sanitizer "compute-sanitizer is not on PATH"
else
    skip sanitizer "dry run: compute-sanitizer needs a GPU"
fi
if [[ $mode == gpu ]]; then
    step ops 60 $PY -m pytest -p no:cacheprovider -q bench/test_bench_ops.py --quick \
        --benchmark-max-time=0.05 --benchmark-min-rounds=3 --benchmark-json="$LOGS/ops.json"
else
    skip ops "dry run: the op benchmarks time GPU kernels"
fi

# ---- the files -----------------------------------------------------------------------------
say "== done in ${SECONDS}s (budget ${DEADLINE}s); exit $status"
pack
( cd "$OUT" && ls -1 ) | sed 's/^/   /' | tee -a "$SUMMARY"
exit $status
