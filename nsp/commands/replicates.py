"""``nsp replicates run --r 3``: the whole pipeline R times with independent seeds (resumable)."""

from __future__ import annotations

import argparse

HELP = "Run the whole pipeline R times with independent seeds (replicates/<config hash>/r<k>)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="replicates_command", metavar="ACTION", required=True)
    r = sub.add_parser("run", help="run or resume replicates 0..R-1 (each a `dvc repro`)")
    r.add_argument("--r", type=int, default=3, help="number of replicates (default 3)")
    r.add_argument(
        "--only",
        type=int,
        nargs="+",
        metavar="K",
        help="run only these replicate indices (0-based, < R): parallel workers on one set",
    )
    r.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    r.add_argument(
        "--dir", default="replicates", help="where replicate sets live (default: replicates)"
    )
    r.add_argument(
        "--vary-data",
        action="store_true",
        help="also offset prepare.seed (a new labeled/val/unlabeled split per replicate)",
    )
    c = sub.add_parser(
        "compare", help="configuration A vs B: Welch t per model and column over their replicates"
    )
    c.add_argument("set_a", help="replicate set folder of A (replicates/<hash>)")
    c.add_argument("set_b", help="replicate set folder of B")
    c.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    c.add_argument("--out", help="also write the JSON to this file")
    s = sub.add_parser("seeds", help="print each replicate's per-stage seeds (nothing runs)")
    s.add_argument("--r", type=int, default=3)
    s.add_argument("--params", default="params.yaml")
    s.add_argument("--vary-data", action="store_true")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from nsp.config import load_params
    from nsp.replicates import SEED_STRIDE, offset_seeds, run_replicates, stage_seeds

    if args.replicates_command == "compare":
        return _compare(args)
    params = load_params(args.params)
    if args.replicates_command == "seeds":
        table = {
            f"r{k}": stage_seeds(
                offset_seeds(params, offset=k * SEED_STRIDE, vary_data=args.vary_data)
            )
            for k in range(args.r)
        }
        print(json.dumps(table, indent=2))
        return 0
    run_replicates(
        params, count=args.r, only=args.only, base=Path(args.dir), vary_data=args.vary_data
    )
    return 0


def _compare(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from nsp.io import write_json
    from nsp.replicate_report import (
        compare_summaries,
        find_set,
        format_comparison,
        param_differences,
        summarize,
    )
    from nsp.replicates import SET_FILE

    dirs = [find_set({}, path=Path(d)) for d in (args.set_a, args.set_b)]
    sa, sb = (summarize(d) for d in dirs)
    comp = compare_summaries(sa, sb)
    pa, pb = (json.loads((d / SET_FILE).read_text())["params"] for d in dirs)
    comp["params_differ"] = param_differences(pa, pb)
    if args.out:
        write_json(Path(args.out), comp)
    print(
        json.dumps(comp, indent=2) if args.json else format_comparison(comp, comp["params_differ"])
    )
    return 0
