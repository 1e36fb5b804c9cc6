"""The `gpubackprop` command: train, gradcheck, explain, info (and bench)."""
import argparse
import platform
import sys
import time

import numpy as np


def _sizes(text):
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 784,30,10; got {text!r}") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected at least two positive sizes; got {text!r}")
    return sizes


def cmd_train(args):
    import gpubackprop as gb

    split = gb.data.load(args.data, seed=args.seed, dtype=args.dtype)
    n_classes = int(max(split.y_train.max(), split.y_test.max())) + 1
    sizes = args.layers or [split.X_train.shape[1], 30, n_classes]
    if sizes[0] != split.X_train.shape[1] or sizes[-1] != n_classes:
        raise ValueError(f"--layers must start with {split.X_train.shape[1]} "
                         f"inputs and end with {n_classes} outputs for {args.data}; got {sizes}")
    net = gb.MLP.from_sizes(sizes, activation=args.activation, output_activation=args.output,
                            device=args.device, dtype=args.dtype, backend=args.backend,
                            seed=args.seed)
    opt = gb.SGD(lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    trainer = gb.Trainer(net, loss=args.loss, optimizer=opt, batch_size=args.batch_size,
                         seed=args.seed)
    print(f"gpubackprop train: {args.data} ({len(split.X_train)} train, {len(split.X_test)} test), "
          f"{sizes} {args.activation}, {args.loss}, SGD lr={args.lr} batch={args.batch_size}, "
          f"device {net.device}, backend {net.backend.name}, {args.dtype}", flush=True)

    def report(r):
        print(f"epoch {r['epoch']:3d}/{args.epochs}: loss {r['loss']:.4f}  "
              f"train acc {r.get('accuracy', float('nan')):.4f}  "
              f"test loss {r['val_loss']:.4f}  test acc {r.get('val_accuracy', float('nan')):.4f}  "
              f"({r['time']:.2f}s)", flush=True)

    t0 = time.perf_counter()
    trainer.fit(split.X_train, split.y_train, epochs=args.epochs,
                validation=(split.X_test, split.y_test), checkpoint=args.checkpoint,
                checkpoint_every=args.checkpoint_every, resume=args.resume, progress=args.progress, callback=report)
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

    rng = np.random.default_rng(args.seed)
    sizes = args.layers or [7, 5, 4, 3]
    X = rng.normal(size=(args.batch, sizes[0]))
    labels = rng.integers(0, sizes[-1], args.batch)
    worst = 0.0
    print(f"gradcheck: backprop vs central differences, sizes {sizes}, batch {args.batch}, "
          f"float64 ({args.backend} backend)")
    cases = [(act, out, loss) for act in HIDDEN_NAMES
             for out, loss in (("sigmoid", "sse"), ("identity", "mse"),
                               ("softmax", "cross_entropy"))]
    for act, out, loss in cases:
        net = gb.MLP.from_sizes(sizes, activation=act, output_activation=out,
                                backend=args.backend, seed=args.seed)
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


def cmd_info(args):
    import gpubackprop as gb
    from gpubackprop import backends
    from gpubackprop.device import Device, cuda_status

    print(f"gpubackprop {gb.__version__}")
    print(f"python {platform.python_version()} ({platform.machine()}, {platform.system()})")
    for module in ("numpy", "numba", "cupy", "numba_cuda", "torch", "sklearn"):
        try:
            version = __import__(module).__version__
        except Exception as exc:  # absent or broken
            version = f"not available ({type(exc).__name__})"
        print(f"  {module:<11} {version}")
    n, reason = cuda_status()
    print(f"devices: {', '.join(gb.available_devices())}")
    if not n:
        print(f"  cuda: {reason}")
    for dev in [Device("cpu")] + [Device("cuda", i) for i in range(n)]:
        for name, why in backends.available(dev).items():
            print(f"  backend {name:<6} on {dev}: {'available' if why is None else why}")
        auto = backends.create("auto", dev).name
        print(f"  backend auto   on {dev}: {auto}")
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="gpubackprop",
                                description="Train multilayer perceptrons by backpropagation "
                                            "and mini-batch SGD, on the CPU or an NVIDIA GPU.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an MLP (default: bundled digits, [64, 30, 10] sigmoid)")
    t.add_argument("--data", default="digits", help="digits | mnist:DIR | fashion:DIR")
    t.add_argument("--layers", type=_sizes, help="layer sizes, e.g. 784,30,10")
    t.add_argument("--activation", default="sigmoid")
    t.add_argument("--output", default=None, help="output activation (default: --activation)")
    t.add_argument("--loss", default="sse", help="sse | mse | cross_entropy")
    t.add_argument("--lr", type=float, default=3.0)
    t.add_argument("--momentum", type=float, default=0.0)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--batch-size", type=int, default=10)
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--device", default="auto")
    t.add_argument("--backend", default="auto")
    t.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint", help="write a checkpoint here after every epoch")
    t.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps")
    t.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    t.add_argument("--save", help="save the trained network (.npz)")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: when stderr is a terminal)")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("gradcheck", help="backprop against finite differences")
    g.add_argument("--layers", type=_sizes)
    g.add_argument("--batch", type=int, default=5)
    g.add_argument("--backend", default="numpy")
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
        return args.func(args)
    except (ValueError, TypeError, RuntimeError, FileNotFoundError) as exc:
        print(f"gpubackprop {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
