"""The `gpubackprop` command: train, gradcheck, explain, info (and bench)."""
import argparse
import os
import platform
import sys
import time

import numpy as np

#: the benchmark peers `gpubackprop info` names (their versions read without importing them)
PEERS = ("torch", "jax", "sklearn")


def _sizes(text):
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 784,30,10; got {text!r}") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected at least two positive sizes; got {text!r}")
    return sizes


def _resume_auto(text):
    if text != "auto":
        raise argparse.ArgumentTypeError(f"expected --resume or --resume auto; got {text!r}")
    return "auto"


def _default_output(loss):
    """The output activation a loss needs: softmax for cross entropy, sigmoid
    for the squared costs (targets in [0, 1]), whatever --activation is."""
    return "softmax" if loss == "cross_entropy" else "sigmoid"


def check_train_args(args):
    """Every train flag checked before any data loads; ValueError/TypeError
    naming the flag.  Fills args.output with its default."""
    from . import backends, losses
    from .activations import check_name
    from .checks import choice, positive_int, real

    positive_int("--epochs", args.epochs)
    positive_int("--batch-size", args.batch_size)
    real("--lr", args.lr, low=0.0, low_open=True)
    real("--momentum", args.momentum, low=0.0, high=1.0, high_open=True)
    real("--weight-decay", args.weight_decay, low=0.0)
    positive_int("--seed", args.seed, minimum=0)
    args.activation = check_name(args.activation, "--activation", allow_softmax=False)
    args.loss = losses.get(args.loss).name
    args.output = check_name(args.output or _default_output(args.loss), "--output")
    try:
        losses.get(args.loss).check_output(args.output)
    except ValueError:
        raise ValueError(f"--loss cross_entropy needs --output softmax (or identity); "
                         f"got --output {args.output}") from None
    choice("--backend", args.backend, backends.NAMES)
    if args.checkpoint_every is not None:
        positive_int("--checkpoint-every", args.checkpoint_every)
        if args.checkpoint is None:
            raise ValueError("--checkpoint-every needs --checkpoint PATH, the file to write")
    if args.resume and args.checkpoint is None:
        raise ValueError("--resume needs --checkpoint PATH, the checkpoint to resume from")
    for flag, path in (("--checkpoint", args.checkpoint), ("--save", args.save)):
        if path is not None:
            folder = os.path.dirname(os.path.abspath(path))
            if os.path.isdir(path) or not os.path.isdir(folder):
                raise ValueError(f"{flag} {path}: " + ("is a folder; give a file path"
                                 if os.path.isdir(path) else f"folder {folder} does not exist"))
    if args.save is not None and args.checkpoint is not None and \
            os.path.realpath(args.save) == os.path.realpath(args.checkpoint):
        raise ValueError(f"--save {args.save} is the --checkpoint file: the saved network "
                         "would overwrite the checkpoint a later --resume reads; give "
                         "--save another path")
    if args.save is not None:      # proven writable now, not after every epoch has run
        from .paths import check_writable

        check_writable(args.save, "--save")


def _already_done(args):
    """With --resume and a checkpoint that reached --epochs: the message to
    print instead of training (None if there is training to do)."""
    from .checkpoint import read_progress

    if not args.resume or (args.resume == "auto" and not os.path.exists(args.checkpoint)):
        return None                     # a new run (--resume auto: when there is none yet)
    if not os.path.exists(args.checkpoint):
        raise ValueError(f"--resume: there is no checkpoint at {args.checkpoint} to resume "
                         "from; run without --resume to start a new run")
    epoch, step = read_progress(args.checkpoint)
    if step == 0 and epoch >= args.epochs:
        return (f"{args.checkpoint}: already trained {epoch} epochs; nothing to do "
                f"(--epochs {args.epochs}; ask for more epochs to continue)")
    return None


def cmd_train(args):
    import gpubackprop as gb
    from gpubackprop.progress import epoch_line

    check_train_args(args)
    done = _already_done(args)
    if done is not None:
        print(done)
        return 0
    device = gb.device(args.device)
    if args.backend != "auto":                  # usable here? (before the data loads)
        reason = gb.backends.unavailable_reason(args.backend, device)
        if reason is not None:
            raise ValueError(f"--backend {args.backend}: {reason}")
    split = gb.data.load(args.data, seed=args.seed, dtype=args.dtype)
    n_classes = int(max(split.y_train.max(), split.y_test.max())) + 1
    sizes = args.layers or [split.X_train.shape[1], 30, n_classes]
    if sizes[0] != split.X_train.shape[1] or sizes[-1] != n_classes:
        raise ValueError(f"--layers must start with {split.X_train.shape[1]} "
                         f"inputs and end with {n_classes} outputs for {args.data}; got {sizes}")
    net = gb.MLP.from_sizes(sizes, activation=args.activation, output_activation=args.output,
                            device=device, dtype=args.dtype, backend=args.backend,
                            seed=args.seed)
    opt = gb.SGD(lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    trainer = gb.Trainer(net, loss=args.loss, optimizer=opt, batch_size=args.batch_size,
                         seed=args.seed)
    hidden = f"hidden {args.activation}, " if len(sizes) > 2 else ""
    extras = "".join(f" {name}={value:g}" for name, value in (
        ("momentum", args.momentum), ("weight_decay", args.weight_decay)) if value)
    print(f"gpubackprop train: {args.data} ({len(split.X_train)} train, "
          f"{len(split.X_test)} test); {net.device}, {net.backend.name} backend, {args.dtype}")
    print(f"layers {sizes} {hidden}output {args.output}; loss {args.loss}; "
          f"lr={args.lr:g}{extras} batch={args.batch_size}", flush=True)

    def report(r):              # without the bar's lines (--no-progress): plain lines
        print(epoch_line(r, args.epochs), flush=True)

    quiet = args.progress is False
    t0 = time.perf_counter()
    trainer.fit(split.X_train, split.y_train, epochs=args.epochs,
                validation=(split.X_test, split.y_test), checkpoint=args.checkpoint,
                checkpoint_every=args.checkpoint_every, resume=args.resume,
                progress=not quiet, callback=report if quiet else None)
    elapsed = time.perf_counter() - t0
    final = trainer.evaluate(split.X_test, split.y_test)
    print(f"test accuracy {final['accuracy']:.4f} ({final['accuracy'] * 100:.2f}%), "
          f"training time {elapsed:.2f}s")
    if args.save:
        net.save(args.save)
        print(f"saved the network to {args.save}")
    return 0


def cmd_gradcheck(args):
    import gpubackprop as gb
    from gpubackprop.activations import HIDDEN_NAMES
    from gpubackprop.checks import positive_int, real

    positive_int("--batch", args.batch)            # before any network is built
    real("--tol", args.tol, low=0.0, low_open=True)
    positive_int("--seed", args.seed, minimum=0)
    rng = np.random.default_rng(args.seed)
    sizes = args.layers or [7, 5, 4, 3]
    X = rng.normal(size=(args.batch, sizes[0]))
    labels = rng.integers(0, sizes[-1], args.batch)
    worst = 0.0
    print(f"gradcheck: backprop vs central differences, sizes {sizes}, batch {args.batch}, "
          f"float64 ({args.backend} backend on {args.device})")
    cases = [(act, out, loss) for act in HIDDEN_NAMES
             for out, loss in (("sigmoid", "sse"), ("identity", "mse"),
                               ("softmax", "cross_entropy"))]
    for act, out, loss in cases:
        net = gb.MLP.from_sizes(sizes, activation=act, output_activation=out,
                                backend=args.backend, seed=args.seed, device=args.device)
        for reduction in ("mean", "sum"):
            err = gb.gradcheck(net, X, labels, loss=loss, reduction=reduction)
            worst = max(worst, err)
            flag = "ok" if err < args.tol else "FAIL"
            print(f"  {act:>10} -> {out:<8} {loss:>13} {reduction:>4}: "
                  f"max relative error {err:.2e} {flag}")
    print(f"largest relative error {worst:.2e} (tolerance {args.tol:.0e}): "
          f"{'PASS' if worst < args.tol else 'FAIL'}")
    return 0 if worst < args.tol else 1


def cmd_explain(args):
    from gpubackprop import explain

    (explain.print_statquest if args.example == "statquest" else explain.print_chain)()
    return 0


def _cuda_hint(reason):
    """What to do about an unusable CUDA, by what is missing: CuPy, a GPU, or
    a driver that works (device.cuda_status says which)."""
    if "CuPy could not be imported" in reason:
        return "pip install 'gpubackprop[cuda12]' (or [cuda13]) for CuPy"
    if "no CUDA device" in reason or "NoDevice" in reason or "no CUDA-capable" in reason:
        return ("no NVIDIA GPU here: the CPU backends run, and the cuda-emulator device "
                "runs the CUDA C kernels on the CPU")
    return "install or update the NVIDIA driver (nvidia-smi should list the GPU)"


def _devices_by_kind():
    """One Device per device kind in the backend registry (cuda:0 for cuda)."""
    from gpubackprop import backends
    from gpubackprop.device import Device

    kinds = sorted({kind for _, kind in backends.REGISTRY})      # cpu, cuda, cuda-emulator
    return [Device(kind, 0 if kind == "cuda" else None) for kind in kinds]


def cmd_info(args):
    import gpubackprop as gb
    from gpubackprop import backends
    from gpubackprop.bench.machine import installed_version
    from gpubackprop.device import INSTALL_HINT, cpu_blas, cpu_blas_warning, cuda_status

    print(f"gpubackprop {gb.__version__}")
    print(f"python {platform.python_version()} ({platform.machine()}, {platform.system()})")
    for module in ("numpy", "numba", "scipy", "safetensors", "tqdm", "cupy", "numba_cuda"):
        try:
            version = __import__(module).__version__
        except Exception as exc:  # absent or broken
            version = f"not available ({type(exc).__name__})"
        print(f"  {module:<11} {version}")
    for module in PEERS:         # not imported: that took seconds, and the library never does
        version = installed_version(module) or "not installed"
        print(f"  {module:<11} {version} (a peer for bench and tests)")
    blas = cpu_blas()
    for b in blas:
        print(f"  BLAS        {b['library']}'s {b['api']} {b['version']}: {b['kernels']} kernels, "
              f"{b['threads']} threads")
    if cpu_blas_warning(blas):
        print(f"    note: {cpu_blas_warning(blas)}")
    try:
        from gpubackprop.backends import numba_cpu_blas
        print(f"  backend 'numba' runs its GEMMs on {numba_cpu_blas.library()[0]}'s BLAS "
              "(the compiled epoch and the loop's ops alike)")
    except ImportError:                   # numba or both BLAS missing: backends below say so
        pass
    n, reason = cuda_status()
    print(f"devices: {', '.join(gb.available_devices())}")
    if not n:
        print(f"  cuda: {reason.replace('; ' + INSTALL_HINT, '')}")
        print(f"    hint: {_cuda_hint(reason)}")
    from gpubackprop.device import emulator_status
    compiler, why_not = emulator_status()
    print(f"  cuda-emulator: {f'builds with {compiler}' if compiler else why_not}")
    print("backends:")
    for dev in _devices_by_kind():
        where = "cuda" if dev.kind == "cuda" else str(dev)
        for name, why in backends.available(dev).items():
            if why is not None and reason and reason in why:
                why = "unavailable: CUDA is not usable (see cuda above)"
            print(f"  {name:<6} on {where:<14} {'available' if why is None else why}")
        try:
            auto = backends.create("auto", dev).name
        except (RuntimeError, ValueError):
            auto = "none usable"
        print(f"  {'auto':<6} on {where:<14} -> {auto}")
        print(f"  {'':<6}    {'':<14}    rule: {backends.AUTO_REASONS[dev.kind]}")
    _print_autotune()
    return 0


def _print_autotune():
    """The fast path or loop choices measured on this machine (autotune.py)."""
    from gpubackprop import autotune

    recorded = autotune.choices()
    print(f"fast path or loop, measured per shape on this machine: {len(recorded)} recorded "
          f"in {autotune.cache_path() or 'this process only'}")
    for spec, entry in recorded:
        s = entry["seconds"]
        print(f"  {spec['backend']} {spec['sizes']} {'/'.join(spec['activations'])} "
              f"{spec['loss']}, batch {spec['batch']}, {spec['dtype']}: "
              f"{'fast path' if entry['fast_path'] else 'loop'} (fast path "
              f"{autotune.figure(s['fast path'] * 1e3)} ms/step, "
              f"loop {autotune.figure(s['loop'] * 1e3)} ms/step; "
              f"{entry.get('date', '?')})")
    kernels = autotune.choices("kernels")
    print(f"kernels, measured on this machine: {len(kernels)} recorded")
    for spec, entry in kernels:
        whose = f" ({spec['blas']}'s)" if "blas" in spec else ""     # which BLAS was timed
        times = ", ".join(f"{c}{whose if c == 'BLAS' else ''} {autotune.figure(s * 1e6)} us"
                          for c, s in entry["seconds"].items())
        hand = f"; the hand kernel in {spec['hand']}" if "hand" in spec else ""
        print(f"  {spec['backend']} {spec['kernel']} {' x '.join(map(str, spec['shape']))} "
              f"{spec['dtype']}: {entry['choice']} ({times}; {entry.get('date', '?')}{hand})")


def build_parser():
    p = argparse.ArgumentParser(prog="gpubackprop",
                                description="Train multilayer perceptrons by backpropagation "
                                            "and mini-batch SGD, on the CPU or an NVIDIA GPU.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an MLP (default: bundled digits, [64, 30, 10] sigmoid)")
    t.add_argument("--data", default="digits", help="digits | mnist:DIR | fashion:DIR")
    t.add_argument("--layers", type=_sizes, help="layer sizes, e.g. 784,30,10")
    t.add_argument("--activation", default="sigmoid",
                   help="hidden layers' activation: sigmoid | tanh | relu | leaky_relu | "
                        "softplus | identity")
    t.add_argument("--output", default=None,
                   help="output layer's activation (default: softmax for cross_entropy, "
                        "sigmoid otherwise)")
    t.add_argument("--loss", default="sse", help="sse | mse | cross_entropy")
    t.add_argument("--lr", type=float, default=3.0, help="SGD step size (default 3.0)")
    t.add_argument("--momentum", type=float, default=0.0)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--batch-size", type=int, default=10)
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--device", default="auto")
    t.add_argument("--backend", default="auto")
    t.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint", metavar="PATH",
                   help="write a checkpoint (.safetensors) here after every epoch")
    t.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="also checkpoint every N steps")
    t.add_argument("--resume", nargs="?", const=True, default=False, type=_resume_auto,
                   help="continue from --checkpoint (it must exist); --resume auto: "
                        "continue if it exists, else start a new run")
    t.add_argument("--save", metavar="PATH", help="save the trained network (.safetensors)")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar on stderr when it is a terminal (default); "
                        "--no-progress: epoch lines only")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("gradcheck", help="backprop against finite differences")
    g.add_argument("--layers", type=_sizes)
    g.add_argument("--batch", type=int, default=5)
    g.add_argument("--backend", default="numpy")
    g.add_argument("--device", default="cpu",
                   help="cpu | cuda | cuda-emulator (the CUDA C kernels run on the CPU)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--tol", type=float, default=1e-6)
    g.set_defaults(func=cmd_gradcheck)

    e = sub.add_parser("explain", help="the worked examples, chain-rule factor by factor")
    e.add_argument("example", choices=["statquest", "chain"])
    e.set_defaults(func=cmd_explain)

    i = sub.add_parser("info", help="versions, devices, backends")
    i.set_defaults(func=cmd_info)

    from .bench import add_parser as add_bench_parser

    add_bench_parser(sub)
    from .distributed.launch import add_parser as add_launch_parser

    add_launch_parser(sub)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()          # here, so a closed pipe is caught below
        return code
    except BrokenPipeError:         # gpubackprop info | head -2: stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())   # the exit's own flush goes nowhere
        return 1
    except KeyboardInterrupt as exc:   # Ctrl-C: fit stopped at a step boundary; one line
        _close_bars()
        print(f"gpubackprop {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    except (ValueError, TypeError, RuntimeError, OSError) as exc:
        _close_bars()
        print(f"gpubackprop {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _close_bars():
    """A progress bar left on screen by a run that raised: close it, so the
    message printed next starts on a line of its own."""
    from .progress import close_all

    close_all()


if __name__ == "__main__":
    sys.exit(main())
