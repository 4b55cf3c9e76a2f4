"""``nsp bench``: throughput of the training, pseudo-labeling and corruption data paths."""

from __future__ import annotations

import argparse

HELP = "Benchmark the noised training step, pseudo-labeling and -C building against raw baselines."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument(
        "--out",
        default="bench-results/bench.json",
        help="where to write the JSON result (default: bench-results/bench.json)",
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds; for tests)")
    p.add_argument("--arch", default=None, help="model to benchmark (default: the last student)")
    p.add_argument(
        "--batch",
        type=int,
        default=None,
        help="labeled batch size (the unlabeled batch stays unlabeled_ratio x it; default: params)",
    )
    p.add_argument(
        "--params",
        default="params.yaml",
        help="params file for the default student (built-in defaults when it is absent)",
    )
    p.add_argument(
        "--outputs",
        default="outputs",
        help="pipeline outputs whose recorded stage timings give repro_seconds (default: outputs)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: all usable cores, as the pipeline stages use)",
    )
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    p.add_argument(
        "--size",
        type=int,
        default=None,
        help="image size in px: bench the noised step vs raw / PIL and precision auto at this size "
        "(e.g. --size 224 --channels 3, ImageNet-like; default arch resnet18) instead of the suite",
    )
    p.add_argument("--channels", type=int, default=3, help="image channels with --size (default 3)")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from nsp.bench import format_table, run_bench, student_setup
    from nsp.config import load_params
    from nsp.errors import NSPError
    from nsp.io import write_json

    if args.batch is not None and args.batch <= 0:
        raise NSPError(f"--batch {args.batch}: must be a positive integer; e.g. --batch 64")
    if args.threads is not None and args.threads <= 0:
        raise NSPError(f"--threads {args.threads}: must be a positive integer; e.g. --threads 2")
    if args.size is not None and (args.size < 16 or args.channels not in (1, 3)):
        raise NSPError(
            f"--size {args.size} --channels {args.channels}: need >= 16 px and 1 or 3 channels"
        )
    params = load_params(args.params) if Path(args.params).exists() else None
    sizes, cfg, pcfg = student_setup(
        params=params, quick=args.quick, arch=args.arch, batch=args.batch
    )
    if args.size is not None:
        return _run_at_size(args, sizes=sizes, cfg=cfg, params=params)
    res = run_bench(
        sizes=sizes,
        cfg=cfg,
        pcfg=pcfg,
        outputs_dir=args.outputs,
        threads=args.threads,
        progress=not args.no_progress,
    )
    res["params_file"] = args.params if params is not None else None
    write_json(args.out, res)
    if args.json:
        print(json.dumps(res, sort_keys=True))
    else:
        print(format_table(res))
        print(f"written: {args.out}")
    return 0


def _run_at_size(args: argparse.Namespace, *, sizes, cfg, params) -> int:  # noqa: ANN001
    import json
    from dataclasses import replace

    from nsp.bench import format_table_at_size, run_bench_at_size, sizes_at
    from nsp.io import write_json

    at = sizes_at(args.size, args.channels, quick=args.quick, arch=args.arch)
    if args.batch:
        at = replace(at, labeled_batch=args.batch)
    res = run_bench_at_size(sizes=at, cfg=cfg, threads=args.threads, progress=not args.no_progress)
    res["params_file"] = args.params if params is not None else None
    write_json(args.out, res)
    print(json.dumps(res, sort_keys=True) if args.json else format_table_at_size(res))
    if not args.json:
        print(f"written: {args.out}")
    return 0
