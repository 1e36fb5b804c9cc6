"""`gpubackprop bench` (and `python -m gpubackprop.bench`): arguments, files, messages."""
import argparse
import os
import sys

from ..paths import UnwritablePath, check_writable
from .cases import PEERS, PROFILES, REGIME_NAMES
from .plot import plot
from .report import format_table, to_json, write_text
from .run import run_bench

DEFAULT_OUT = "bench-results"

DESCRIPTION = f"""\
Train the benchmark regimes with gpubackprop and the peers installed (PyTorch,
JAX, scikit-learn) on the same data and steps, next to the time of the GEMMs
alone, then a batch-size sweep:

  small   Nielsen's [784, 30, 10] sigmoid network, sse, batch 10
  medium  [784, 256, 256, 10] ReLU, cross entropy, batch 128
  narrow  [64]x6 + 10 ReLU, cross entropy, batch 65,536
  wide    [784, 4096, 4096, 10] ReLU, cross entropy, batch 4096

Prints the tables; writes bench.json, bench.md and bench.png into --out
(default {DEFAULT_OUT}/) unless told otherwise, and says where."""

EPILOG = """examples:
  gpubackprop bench                                # quick: the four regimes, fewer samples
  gpubackprop bench --tiny                         # seconds: every code path, no targets
  gpubackprop bench --regimes small,medium --peers torch-eager,jax
  gpubackprop bench --device cuda --regimes small,narrow,wide,medium \\
      --peers torch-eager,torch-graphs,floor --repeats 3 \\
      --json OUT/bench.json --markdown OUT/bench.md --plot OUT/bench.png
"""


def add_parser(subparsers):
    """Register `gpubackprop bench` on the CLI's subparsers."""
    b = subparsers.add_parser(
        "bench", help="benchmark CPU vs GPU vs peers (PyTorch, JAX, scikit-learn) here",
        description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(b)
    b.set_defaults(func=cmd_bench)
    return b


def add_arguments(b):
    size = b.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help=PROFILES["tiny"].about)
    size.add_argument("--full", action="store_true", help=PROFILES["full"].about)
    b.add_argument("--device", default="auto",
                   help="auto (the CPU and the first GPU, if any) | cpu | cuda | cuda:N; "
                        "with a GPU alone no CPU row is measured")
    b.add_argument("--regimes", default=None,
                   help=f"comma-separated subset of {','.join(REGIME_NAMES)} (default: all)")
    b.add_argument("--peers", default=None,
                   help=f"comma-separated subset of {','.join(PEERS)} (default: all but "
                        f"torch-compile, which --full adds; absent ones are skipped with "
                        f"the reason)")
    b.add_argument("--repeats", type=int, default=None,
                   help="timed runs per implementation (default: 2 tiny, 3 quick, 5 full)")
    b.add_argument("--no-sweep", action="store_true", help="skip the batch-size sweep")
    b.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"folder for bench.json, bench.md and bench.png (default "
                        f"{DEFAULT_OUT}); 'none': write only the files named below")
    b.add_argument("--json", metavar="PATH",
                   help="the results as JSON, rewritten after every regime ('-': to stdout, "
                        "the tables then go to stderr)")
    b.add_argument("--markdown", metavar="PATH", help="the tables as Markdown")
    b.add_argument("--plot", metavar="PATH",
                   help="throughput-vs-batch PNG ('none': no plot; needs matplotlib)")
    b.add_argument("--commit", metavar="SHA",
                   help="the commit to record when the code is not a git checkout and the "
                        "installed package does not know it (default: found, or 'unknown')")
    b.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    b.add_argument("--ranks", metavar="N,M,...",
                   help="instead of the regimes: data-parallel strong and weak scaling over "
                        "these numbers of MPI ranks (needs the mpi extra), e.g. 1,2")


def _split(text):
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def _paths(args):
    """{"json", "markdown", "plot"} -> path or None; "-" for JSON on stdout."""
    out = None if str(args.out).lower() == "none" else args.out
    given = {"json": args.json, "markdown": args.markdown, "plot": args.plot}
    names = {"json": "bench.json", "markdown": "bench.md", "plot": "bench.png"}
    paths = {}
    for key, path in given.items():
        if path is not None and (key == "plot" and path.lower() == "none"):
            paths[key] = None
        elif path is not None:
            paths[key] = path
        else:
            paths[key] = None if out is None else os.path.join(out, names[key])
    return paths


def _command(args):
    """The command line that reproduces this run (defaults left out)."""
    parts = ["gpubackprop bench"]
    parts += ["--tiny"] if args.tiny else ["--full"] if args.full else []
    for flag in ("device", "regimes", "peers", "repeats"):
        value = getattr(args, flag)
        if value is not None and not (flag == "device" and value == "auto"):
            parts.append(f"--{flag} {value}")
    return " ".join(parts + (["--no-sweep"] if args.no_sweep else []))


def cmd_bench(args):
    profile = "tiny" if args.tiny else "full" if args.full else "quick"
    paths = _paths(args)
    for key, path in paths.items():      # fail now, not after minutes of timing
        if path and path != "-":
            flag = f"--{key}" if getattr(args, key) is not None else f"--out (its {key} file)"
            folder = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as exc:
                raise UnwritablePath(exc.errno, f"{flag} {path!r}: its folder {folder!r} "
                                                f"cannot be made: {exc.strerror}") from None
            check_writable(path, flag)         # a file created and removed there
    to_stdout = paths["json"] == "-"
    stream = sys.stderr if to_stdout else sys.stdout
    if args.ranks is not None:
        ranks = _split(args.ranks)
        if not ranks or not all(r.isdigit() and int(r) >= 1 for r in ranks):
            raise ValueError(f"--ranks must be positive world sizes such as 1,2; "
                             f"got {args.ranks!r}")
        from .ranks import cmd_ranks

        return cmd_ranks(args, [int(r) for r in ranks], paths, stream)
    written = []

    def say(text):
        if not args.quiet:
            print(f"bench: {text}", file=sys.stderr, flush=True)

    def save(result):
        """After every regime: the JSON and the Markdown so far (atomic rewrites)."""
        if paths["json"] and not to_stdout:
            write_text(paths["json"], to_json(result))
        if paths["markdown"]:
            write_text(paths["markdown"], format_table(result, markdown=True))

    result = run_bench(profile=profile, device=args.device, regimes=_split(args.regimes),
                       peers=_split(args.peers), repeats=args.repeats,
                       sweep=not args.no_sweep, say=say, on_update=save, commit=args.commit,
                       command=_command(args))
    print(format_table(result), file=stream, end="")
    if to_stdout:
        sys.stdout.write(to_json(result))
    for key in ("json", "markdown"):
        if paths[key] and paths[key] != "-":
            written.append(f"wrote the {'results' if key == 'json' else 'tables'} to "
                           f"{paths[key]}")
    if paths["plot"]:
        _, message = plot(result, paths["plot"])
        written.append(message)
    if not any(paths.values()):
        written.append("wrote no files (--out none and no --json/--markdown/--plot)")
    for line in written:
        print(line, file=stream)
    return 0


def main(argv=None):
    """`python -m gpubackprop.bench ...`, the same as `gpubackprop bench ...`."""
    p = argparse.ArgumentParser(prog="gpubackprop bench", description=DESCRIPTION,
                                epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    try:
        return cmd_bench(args)
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        print(f"gpubackprop bench: error: {exc}", file=sys.stderr)
        return 2
