"""`gpubackprop bench --ranks 1,2`: data-parallel scaling on this machine.

Strong scaling keeps the global batch while the ranks grow; weak scaling
grows it with them (the same work per rank and step).  The ranks run through
the installed MPI (gpubackprop launch); each rank runs one BLAS thread, so on
a machine with C cores more than C ranks only share them, and every row says
how many cores there are.  The numbers come from
gpubackprop.distributed.bench_scaling.
"""
import json

from .report import write_text

#: the network and data of the scaling runs, per profile: (sizes, batch, n, epochs)
CONFIG = {"tiny": ((64, 32, 10), 64, 2048, 2),
          "quick": ((784, 256, 256, 10), 512, 16384, 3),
          "full": ((784, 256, 256, 10), 512, 65536, 3)}


def run_ranks(ranks, profile, device="cpu"):
    """The scaling rows (distributed.bench_scaling) for world sizes `ranks`."""
    from ..distributed import bench_scaling

    sizes, batch, n, epochs = CONFIG[profile]
    backend = "numpy" if device == "cpu" else "cupy"
    return bench_scaling(ranks=ranks, sizes=sizes, batch_size=batch, n=n, epochs=epochs,
                         device=device, backend=backend)


def format_rows(rows, markdown=False):
    """The rows as a text or Markdown table."""
    head = ["mode", "ranks", "global batch", "s/epoch", "samples/s", "efficiency", "cores",
            "BLAS threads/rank", "all-reduce"]
    body = [[r["mode"], str(r["ranks"]), str(r["global_batch"]),
             f"{r['seconds_per_epoch']:.3f}", f"{r['samples_per_s']:,.0f}",
             "-" if r["efficiency"] is None else f"{r['efficiency']:.2f}", str(r["cores"]),
             str(r["threads_per_rank"]), r["comm_backend"]] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
    else:
        widths = [max(len(x) for x in col) for col in zip(head, *body)]
        lines = ["  ".join(x.ljust(w) for x, w in zip(row, widths)) for row in [head, *body]]
    return "\n".join(lines) + "\n"


def cmd_ranks(args, ranks, paths, stream):
    """Run the scaling benchmark, print it, write the JSON/Markdown asked for."""
    profile = "tiny" if args.tiny else "full" if args.full else "quick"
    device = "cpu" if args.device == "auto" else args.device
    rows = run_ranks(ranks, profile, device)
    print(format_rows(rows), file=stream, end="")
    for key, text in (("json", json.dumps({"scaling": rows}, indent=1) + "\n"),
                      ("markdown", format_rows(rows, markdown=True))):
        if paths[key] and paths[key] != "-":
            write_text(paths[key], text)
            print(f"wrote the scaling {key} to {paths[key]}", file=stream)
        elif paths[key] == "-":
            print(text, end="")
    return 0
