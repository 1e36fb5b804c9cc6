"""`gpubackprop launch -n N [--dry-run] [--] CMD ...`: N ranks through mpiexec.

It runs the mpiexec of the installed MPI: the one next to this Python (the
mpich wheel of `pip install "gpubackprop[mpi]"` puts it there), else the
first on PATH (a site MPI: `module load openmpi`).  A Python command runs
under `python -m mpi4py`, so an uncaught exception on one rank aborts every
rank instead of leaving them waiting.  The environment is passed on: MPICH
passes all of it to every rank, Open MPI passes it to the ranks on this
machine and gets `-x PATH` so remote ranks find the same Python (add `-x
NAME` for more).  Open MPI run as root (containers, CI) gets
--allow-run-as-root, and oversubscription when there are more ranks than
cores (MPICH needs neither).
"""
import os
import re
import shlex
import shutil
import subprocess
import sys

from .comm import MPI_HINT

def find_mpiexec():
    """The path of the installed MPI's mpiexec; RuntimeError with the
    install hint when there is none."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(here, os.X_OK):
        return here
    for name in ("mpiexec", "mpirun"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(f"no mpiexec found (next to {sys.executable} or on PATH); " + MPI_HINT)


def flavor(mpiexec):
    """("openmpi", major version) or ("mpich", major) or ("unknown", 0),
    from `mpiexec --version`."""
    try:
        out = subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown", 0
    match = re.search(r"\((?:Open MPI|OpenRTE)\)\s+(\d+)", out)
    if match:
        return "openmpi", int(match.group(1))
    match = re.search(r"HYDRA.*?Version:\s+(\d+)", out, re.S)
    if match:
        return "mpich", int(match.group(1))
    return "unknown", 0


def python_under_mpi4py(cmd):
    """CMD with `-m mpi4py` inserted after the interpreter of a Python
    command (`python x.py`, `python3.11 -c ...`, or a bare `x.py`)."""
    if not cmd:
        raise ValueError("launch needs a command to run, e.g. gpubackprop launch -n 2 "
                         "python train.py")
    first = os.path.basename(cmd[0])
    if re.fullmatch(r"python[0-9.]*", first):
        if cmd[1:3] == ["-m", "mpi4py"]:
            return list(cmd)
        return [cmd[0], "-m", "mpi4py", *cmd[1:]]
    if first.endswith(".py"):
        return [sys.executable, "-m", "mpi4py", *cmd]
    return list(cmd)


def command(n, cmd, mpiexec=None, kind=None, is_root=None, cores=None):
    """The argv that runs `cmd` as `n` ranks.

    mpiexec, kind (flavor's pair), is_root and cores default to this
    machine's; they are arguments so the choice is testable anywhere."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"-n must be a positive number of ranks; got {n!r}")
    mpiexec = mpiexec or find_mpiexec()
    name, major = kind or flavor(mpiexec)
    is_root = (os.geteuid() == 0 if hasattr(os, "geteuid") else False) \
        if is_root is None else is_root
    cores = cores or os.cpu_count() or 1
    argv = [mpiexec, "-n", str(n)]
    if name == "openmpi":
        if is_root:
            argv.append("--allow-run-as-root")
        if n > cores:
            argv += ["--map-by", ":OVERSUBSCRIBE"] if major >= 5 else ["--oversubscribe"]
        argv += ["-x", "PATH"]
    return argv + python_under_mpi4py(list(cmd))


def launch(n, cmd, dry_run=False, out=None):
    """Run `cmd` as `n` ranks and return mpiexec's exit status; with
    dry_run, print the command line instead."""
    out = out or sys.stdout
    argv = command(n, cmd)
    if dry_run:
        print(shlex.join(argv), file=out)
        return 0
    try:
        return subprocess.run(argv).returncode      # this environment, inherited
    except KeyboardInterrupt:
        return 130


def add_parser(sub):
    """The `launch` subcommand of the gpubackprop command line."""
    import argparse

    p = sub.add_parser("launch", help="run a command as N data-parallel ranks (mpiexec)",
                       description="Run CMD as N ranks through the installed MPI's mpiexec "
                                   "(Python commands under `python -m mpi4py`).")
    p.add_argument("-n", "--ranks", type=int, required=True, help="number of ranks")
    p.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="[--] CMD ...")
    p.set_defaults(func=_cmd_launch)
    return p


def _cmd_launch(args):
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    return launch(args.ranks, cmd, dry_run=args.dry_run)
