"""Data-parallel training (gpubackprop.distributed): 2-3 local MPI ranks.

Each MPI test starts tests/mpi_train.py under mpiexec (through the launch
module's own command line) inside `timeout`, so a hang fails the test
instead of blocking CI.  They skip, with the reason, when mpi4py or an
mpiexec is missing (the test extra installs both).
"""
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import gpubackprop as gb
from gpubackprop import distributed
from gpubackprop.distributed import launch, nccl
from gpubackprop.distributed.comm import Communicator, digest, sum_in_rank_order

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_train.py")
TIMEOUT = 60          # seconds for one mpiexec; a hang fails the test


def _mpi_missing():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py is not installed (pip install 'gpubackprop[mpi]')"
    try:
        launch.find_mpiexec()
    except RuntimeError as exc:
        return str(exc)
    if shutil.which("timeout") is None:
        return "coreutils `timeout` is missing (it guards every mpiexec against hangs)"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))


def run_ranks(n, cfg, tmp_path, timeout=TIMEOUT):
    """Run the child as n ranks; returns (returncode, output, seconds, outputs)."""
    out = tmp_path / f"out{n}-{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    argv = launch.command(n, [sys.executable, CHILD, json.dumps(cfg), str(out)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "PYTHONWARNINGS": "default"}
    t0 = time.monotonic()
    proc = subprocess.run(["timeout", "-k", "5", str(timeout), *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout + 30)
    seconds = time.monotonic() - t0
    files = {p.stem: dict(np.load(p)) for p in out.glob("*.npz")}
    return proc.returncode, proc.stdout + proc.stderr, seconds, files


def relative(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def epochs_of(rank_file):
    keys = sorted((k for k in rank_file if k.startswith("arr_")), key=lambda k: int(k[4:]))
    return [rank_file[k] for k in keys]


BASE = {"sizes": [6, 5, 3], "n": 37, "batch_size": 8, "epochs": 3, "momentum": 0.9,
        "lr": 0.5, "reference": True}


# -- 2 and 3 ranks against the one-process oracles ---------------------------------------
@needs_mpi
@pytest.mark.parametrize("ranks, dtype, n, batch_size, deterministic, tol", [
    (2, "float64", 37, 8, False, 1e-12),     # N not a multiple of the global batch
    (2, "float32", 37, 8, False, 1e-6),
    (2, "float64", 9, 1, False, 1e-12),      # global batch < world size: rank 0's shard empty
    (3, "float64", 23, 4, True, 1e-12),      # 3 ranks on 2 cores, shards of 1, 1, 2 rows
])
def test_ranks_agree_bitwise_and_match_one_rank(tmp_path, ranks, dtype, n, batch_size,
                                                deterministic, tol):
    cfg = {**BASE, "dtype": dtype, "n": n, "batch_size": batch_size,
           "deterministic": deterministic}
    rc, output, _, files = run_ranks(ranks, cfg, tmp_path)
    assert rc == 0, output
    per_rank = [epochs_of(files[f"rank{r}"]) for r in range(ranks)]
    ref = files["reference"]
    assert len(per_rank[0]) == cfg["epochs"]
    for epoch in range(cfg["epochs"]):
        for r in range(1, ranks):               # every rank, after every epoch
            assert np.array_equal(per_rank[r][epoch], per_rank[0][epoch]), (r, epoch)
        # bitwise the one process that adds the shards' gradients in rank order
        assert np.array_equal(per_rank[0][epoch], ref["ref"][epoch]), epoch
        # and the one-rank run with the same global batch, up to float reordering
        assert relative(per_rank[0][epoch], ref["single"][epoch]) < tol
        assert epoch == 0 or not np.array_equal(per_rank[0][epoch], per_rank[0][epoch - 1])
    for r in range(ranks):                      # metrics summed over ranks
        assert np.allclose(files[f"rank{r}"]["loss"], ref["single_loss"], rtol=tol, atol=0)
    # each sample used exactly once per epoch, across ranks
    steps = -(-n // batch_size)
    used = [np.split(files[f"rank{r}"]["used"], np.cumsum(files[f"rank{r}"]["shard_sizes"]))[:-1]
            for r in range(ranks)]
    for epoch in range(cfg["epochs"]):
        rows = np.concatenate([part for r in range(ranks)
                               for part in used[r][epoch * steps:(epoch + 1) * steps]])
        assert np.array_equal(np.sort(rows), np.arange(n))
    sizes = np.array([files[f"rank{r}"]["shard_sizes"] for r in range(ranks)])
    assert (sizes.max(0) - sizes.min(0) <= 1).all()      # as even as possible


@needs_mpi
def test_fused_backend_falls_back_to_the_loop_and_says_so_once(tmp_path):
    cfg = {**BASE, "dtype": "float64", "backend": "numba", "epochs": 2, "single": False}
    rc, output, _, files = run_ranks(2, cfg, tmp_path)
    assert rc == 0, output
    assert output.count("runs the trainer's loop instead") == 1
    a, b = epochs_of(files["rank0"]), epochs_of(files["rank1"])
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert np.array_equal(a[-1], files["reference"]["ref"][-1])


# -- failures end every rank, with the reason ---------------------------------------------
@needs_mpi
def test_killed_rank_ends_the_job_and_resume_with_another_world_size(tmp_path):
    ckpt = str(tmp_path / "run.safetensors")
    cfg = {**BASE, "dtype": "float64", "epochs": 4, "checkpoint": ckpt, "reference": False}
    rc, output, seconds, _ = run_ranks(2, {**cfg, "kill": 2}, tmp_path)
    assert rc not in (0, 124, 137), output          # 124/137: the timeout had to kill it
    assert seconds < TIMEOUT
    assert os.path.exists(ckpt)                     # rank 0 wrote epoch 2's checkpoint
    rc, output, _, files = run_ranks(3, {**cfg, "resume": True, "reference": True}, tmp_path)
    assert rc == 0, output
    resumed = epochs_of(files["rank0"])
    assert len(resumed) == 2                        # epochs 3 and 4
    assert all(np.array_equal(resumed[-1], epochs_of(files[f"rank{r}"])[-1]) for r in (1, 2))
    assert relative(resumed[-1], files["reference"]["single"][-1]) < 1e-12


@needs_mpi
@pytest.mark.parametrize("fault, message", [
    ({"batch_size_rank1": 5}, "ranks disagree on batch_size: rank 0 has 8, rank 1 has 5"),
    ({"perturb": 1}, "DesyncError: ranks [1] hold different parameters from rank 0 after epoch 2"),
    ({"debug": True, "extra_collective": True}, "CollectiveMismatchError: rank"),
])
def test_a_fault_on_one_rank_is_a_clear_error_on_all_not_a_hang(tmp_path, fault, message):
    rc, output, seconds, _ = run_ranks(2, {**BASE, "dtype": "float64", "reference": False,
                                          **fault}, tmp_path)
    assert rc not in (0, 124, 137), output
    assert seconds < TIMEOUT
    assert message in output


# -- pieces, in this process --------------------------------------------------------------
def test_shards_are_contiguous_even_and_cover_the_batch():
    for B in range(0, 12):
        for size in range(1, 5):
            bounds = [distributed.shard_bounds(B, r, size) for r in range(size)]
            assert bounds[0][0] == 0 and bounds[-1][1] == B
            assert all(bounds[r][1] == bounds[r + 1][0] for r in range(size - 1))
            lengths = [hi - lo for lo, hi in bounds]
            assert max(lengths) - min(lengths) <= 1
            assert max(lengths) == distributed.max_shard_rows(B, size)


def test_one_rank_world_without_mpi(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)     # as if it were not installed
    comm = distributed.init()
    assert (comm.rank, comm.size, comm.local_rank, comm.backend) == (0, 1, 0, "local")
    assert not comm.communicates
    x = np.arange(4.0)
    assert comm.allreduce(x) is x and np.array_equal(x, np.arange(4.0))
    with pytest.raises(RuntimeError, match=r'pip install "gpubackprop\[mpi\]"'):
        distributed.init(backend="mpi")
    with pytest.raises(ValueError, match="backend must be one of"):
        distributed.init(backend="gloo")
    with pytest.raises(TypeError, match="comm must come from"):
        gb.Trainer(gb.MLP.from_sizes([3, 2]), comm="mpi")


def test_one_rank_comm_trains_exactly_as_no_comm():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(29, 6)), rng.integers(0, 3, 29)
    out = []
    for comm in (None, distributed.local(deterministic=True, debug=True)):
        net = gb.MLP.from_sizes([6, 5, 3], backend="numpy", seed=3)
        gb.Trainer(net, optimizer=gb.SGD(lr=0.5, momentum=0.9), batch_size=8,
                   comm=comm).fit(X, y, epochs=2)
        out.append(np.concatenate([np.ravel(p) for pair in net.params for p in pair]))
    assert np.array_equal(out[0], out[1])


class FakeWorld(Communicator):
    """Rank `rank` of a world whose other ranks answer with `others`."""

    def __init__(self, rank, others, **kw):
        super().__init__(**kw)
        self.rank, self.size, self.others = rank, 1 + len(others), others

    def _allgather_object(self, obj):
        return self.others[:self.rank] + [obj] + self.others[self.rank:]

    def _bcast_object(self, obj):
        return obj if self.rank == 0 else self.others[0]


def test_agree_names_the_first_difference_and_the_rank():
    mine = {"network sizes": [4, 3], "dtype": "float32", "batch_size": 8}
    FakeWorld(0, [dict(mine)]).agree(mine)
    theirs = {**mine, "dtype": "float64", "batch_size": 9}
    with pytest.raises(distributed.ConfigMismatchError,
                       match="ranks disagree on dtype: rank 0 has 'float32', rank 1 has "
                             "'float64'"):
        FakeWorld(0, [theirs]).agree(mine)


def test_digest_and_desync_name_the_ranks():
    a = [np.linspace(0, 1, 7), np.ones((2, 3), dtype=np.float32)]
    b = [a[0].copy(), a[1].copy()]
    b[1][1, 2] = np.nextafter(np.float32(1), np.float32(2))
    assert digest(a) == digest([x.copy() for x in a]) != digest(b)
    swapped = [a[0][::-1].copy(), a[1]]                  # same values, other places
    assert digest(swapped) != digest(a)
    with pytest.raises(distributed.DesyncError, match=r"ranks \[2\]") as info:
        FakeWorld(0, [digest(a), digest(b)]).check_in_sync(a, "after epoch 1")
    assert info.value.ranks == [2]


def test_debug_fingerprint_mismatch_raises():
    world = FakeWorld(0, [(0, "bcast", 24, "float64")], debug=True)
    with pytest.raises(distributed.CollectiveMismatchError, match="allreduce of 24 bytes"):
        world.allreduce(np.zeros(3))


def test_collectives_check_dtypes_and_layout():
    comm = distributed.local()
    with pytest.raises(TypeError, match="float32 or float64"):
        comm.allreduce(np.zeros(3, dtype=np.int32))
    with pytest.raises(ValueError, match="C-contiguous"):
        comm.allreduce(np.zeros((3, 4))[:, 1])


def test_on_root_raises_rank_0_error_on_every_rank():
    with pytest.raises(ValueError, match="on rank 0: ValueError: bad checkpoint"):
        FakeWorld(1, [("error", ("ValueError", "bad checkpoint"))]).on_root(lambda: 1)
    assert FakeWorld(1, [("ok", 5)]).on_root(lambda: 1) == 5


def test_sum_in_rank_order_adds_left_to_right():
    parts = np.array([[1e16], [1.0], [-1e16]])
    out = np.empty(1)
    assert sum_in_rank_order(parts, out)[0] == (1e16 + 1.0) - 1e16


# -- NCCL: argument handling with a fake communicator; world size 1 on a real GPU ----------
class FakeDeviceArray(np.ndarray):
    """A NumPy array that presents itself as a CUDA array (host memory)."""

    @property
    def __cuda_array_interface__(self):
        return {"data": (self.__array_interface__["data"][0], False), "shape": self.shape,
                "typestr": self.dtype.str, "version": 3}


class FakeNccl:
    NCCL_SUM, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_INT64 = 0, 7, 8, 4
    NCCL_FLOAT16, NCCL_INT32, NCCL_UINT64 = 6, 2, 5
    DTYPES = {7: np.float32, 8: np.float64}


class FakeNcclComm:
    """Reads and writes the memory the pointers name, with the dtype the code
    names: wrong pointers, counts or codes give wrong numbers."""

    def __init__(self, world):
        self.world, self.calls, self.polls = world, [], 0

    def _view(self, ptr, count, code):
        import ctypes

        dtype = np.dtype(FakeNccl.DTYPES[code])
        buffer = (ctypes.c_char * (count * dtype.itemsize)).from_address(ptr)
        return np.frombuffer(buffer, dtype=dtype)

    def allReduce(self, send, recv, count, code, op, stream):
        self.calls.append(("allReduce", count, code, op, stream))
        self._view(recv, count, code)[...] = self._view(send, count, code) * self.world

    def allGather(self, send, recv, count, code, stream):
        self.calls.append(("allGather", count, code, stream))
        src = self._view(send, count, code)
        dst = self._view(recv, count * self.world, code).reshape(self.world, count)
        for r in range(self.world):
            dst[r] = src * (r + 1)

    def bcast(self, buff, count, code, root, stream):
        self.calls.append(("bcast", count, code, root, stream))

    def check_async_error(self):
        self.polls += 1


class FakeStream:
    ptr, done = 1234, True


@pytest.mark.parametrize("dtype, code", [("float32", 7), ("float64", 8)])
def test_nccl_arguments_dtype_codes_counts_pointers(dtype, code):
    fake = FakeNcclComm(world=3)
    ops = nccl.NcclOps(FakeNccl, fake, FakeStream())
    x = np.arange(1, 8, dtype=dtype).view(FakeDeviceArray)
    ops.allreduce(x)
    assert fake.calls[-1] == ("allReduce", 7, code, FakeNccl.NCCL_SUM, 1234)
    assert np.array_equal(np.asarray(x), 3 * np.arange(1, 8, dtype=dtype))
    gathered = ops.allgather(x, 3)                   # rank r's part here is (r + 1) x
    assert fake.calls[-1] == ("allGather", 7, code, 1234)
    assert np.array_equal(np.asarray(gathered), [3 * (r + 1) * np.arange(1, 8) for r in range(3)])
    ops.bcast(x)
    assert fake.calls[-1] == ("bcast", 7, code, 0, 1234)
    ops.synchronize()
    assert fake.polls == 4                                # after every call, and at the wait
    with pytest.raises(TypeError, match="NCCL collectives take"):
        ops.dtype_code(np.dtype("complex64"))
    with pytest.raises(TypeError, match="device array"):
        nccl.pointer(np.zeros(3))


def test_two_ranks_on_one_gpu_are_found_before_nccl():
    ids = [("a", "0000:01:00.0"), ("a", "0000:02:00.0"), ("b", "0000:01:00.0")]
    assert nccl.shared_gpu(ids) is None
    assert nccl.shared_gpu(ids + [("a", "0000:02:00.0")]) == (1, 3, ("a", "0000:02:00.0"))


def test_nccl_wait_gives_up_after_the_timeout():
    class Stuck(FakeNcclComm):
        aborted = False

        def abort(self):
            self.aborted = True

    class Busy:
        ptr, done = 1, False

    fake = Stuck(world=2)
    with pytest.raises(TimeoutError, match="did not finish"):
        nccl.NcclOps(FakeNccl, fake, Busy(), timeout=0.05).synchronize()
    assert fake.aborted


@pytest.mark.skipif(nccl.unavailable_reason() is not None,
                    reason=f"needs a GPU with CuPy's NCCL: {nccl.unavailable_reason()}")
def test_nccl_world_of_one_on_a_gpu_trains_as_no_comm():
    import cupy

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(64, 6)).astype(np.float32), rng.integers(0, 3, 64)
    out = []
    for comm in (None, distributed.init(backend="nccl")):
        net = gb.MLP.from_sizes([6, 5, 3], device="cuda", dtype="float32", backend="cupy",
                                seed=3)
        gb.Trainer(net, optimizer=gb.SGD(lr=0.5), batch_size=8, comm=comm).fit(X, y, epochs=2)
        out.append(cupy.asnumpy(cupy.concatenate([p.ravel() for pr in net.params for p in pr])))
    assert comm.backend == "nccl"
    assert np.array_equal(out[0], out[1])


# -- gpubackprop launch ------------------------------------------------------------------
def test_launch_command_lines():
    argv = launch.command(2, ["python", "train.py", "--lr", "3"], mpiexec="/x/mpiexec",
                          kind=("mpich", 4), is_root=True, cores=2)
    assert argv == ["/x/mpiexec", "-n", "2", "python", "-m", "mpi4py", "train.py", "--lr", "3"]
    argv = launch.command(3, ["train.py"], mpiexec="/x/mpirun", kind=("openmpi", 5),
                          is_root=True, cores=2)
    assert argv[:8] == ["/x/mpirun", "-n", "3", "--allow-run-as-root", "--map-by",
                        ":OVERSUBSCRIBE", "-x", "PATH"]
    assert argv[-4:] == [sys.executable, "-m", "mpi4py", "train.py"]
    argv = launch.command(3, ["./a.out"], mpiexec="m", kind=("openmpi", 4), is_root=False,
                          cores=2)
    assert "--oversubscribe" in argv and "--allow-run-as-root" not in argv
    assert argv[-1] == "./a.out"
    with pytest.raises(ValueError, match="-n must be a positive"):
        launch.command(0, ["x"], mpiexec="m", kind=("mpich", 4))
    with pytest.raises(ValueError, match="needs a command"):
        launch.command(2, [], mpiexec="m", kind=("mpich", 4))


def test_launch_without_mpi_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match=r'pip install "gpubackprop\[mpi\]"'):
        launch.find_mpiexec()


@needs_mpi
def test_launch_dry_run_and_run_from_the_command_line(tmp_path, capsys):
    from gpubackprop.cli import main

    assert main(["launch", "-n", "2", "--dry-run", "--", "python", "t.py"]) == 0
    assert capsys.readouterr().out.strip().endswith("-n 2 python -m mpi4py t.py")
    script = tmp_path / "hello.py"
    script.write_text("from mpi4py import MPI\nc = MPI.COMM_WORLD\n"
                      "open(f'rank{c.rank}', 'w').write(f'{c.rank} of {c.size}')\n")
    proc = subprocess.run(["timeout", "-k", "5", str(TIMEOUT), sys.executable, "-m",
                           "gpubackprop", "launch", "-n", "2", sys.executable, str(script)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["0 of 2", "1 of 2"]


def test_deterministic_device_allreduce_adds_nccl_parts_in_rank_order(monkeypatch):
    from gpubackprop.distributed import comm as comm_module

    monkeypatch.setattr(comm_module, "is_cupy_array", lambda a: isinstance(a, FakeDeviceArray))
    comm = distributed.local(deterministic=True)
    comm.size = 3                                    # a world of 3, as NCCL would gather it
    comm._nccl = nccl.NcclOps(FakeNccl, FakeNcclComm(world=3), FakeStream())
    x = np.array([1e16, 1.0, 3.0]).view(FakeDeviceArray)
    parts = [np.array([1e16, 1.0, 3.0]) * (r + 1) for r in range(3)]   # what rank r sends
    comm.allreduce(x)
    assert np.array_equal(np.asarray(x), (parts[0] + parts[1]) + parts[2])


README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@needs_mpi
@pytest.mark.skipif(not os.path.exists(README), reason="README.md is not beside the tests")
def test_readme_script_runs_on_two_ranks(tmp_path):
    import re

    text = open(README).read()
    script = re.search(r"## Past one GPU.*?```py\n(.*?)```", text, re.S).group(1)
    assert len(script.strip().splitlines()) == 6
    (tmp_path / "train.py").write_text(script + "open(f'rank{comm.rank}', 'w').write("
                                       "f'{comm.size} {trainer.history.accuracy[-1]!r}')\n")
    argv = launch.command(2, [sys.executable, "train.py"])
    proc = subprocess.run(["timeout", "-k", "5", str(TIMEOUT), *argv], cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    results = [(tmp_path / f"rank{r}").read_text().split() for r in (0, 1)]
    assert results[0] == results[1] and results[0][0] == "2"     # the same accuracy
    assert float(results[0][1]) > 0.8


@needs_mpi
def test_bench_scaling_rows():
    from gpubackprop.distributed.scaling import bench_scaling

    rows = bench_scaling(ranks=(1, 2), sizes=(8, 6, 3), batch_size=16, n=128, epochs=2,
                         dtype="float64", timeout=TIMEOUT)
    assert [(r["mode"], r["ranks"], r["global_batch"]) for r in rows] == [
        ("strong", 1, 16), ("strong", 2, 16), ("weak", 1, 16), ("weak", 2, 32)]
    assert [r["comm_backend"] for r in rows] == ["local", "mpi"] * 2
    for r in rows:
        assert r["seconds_per_epoch"] > 0 and r["efficiency"] > 0
        assert r["samples_per_s"] == pytest.approx(128 / r["seconds_per_epoch"])
    assert rows[0]["efficiency"] == rows[2]["efficiency"] == 1.0
