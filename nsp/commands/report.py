"""``nsp report [--json]``: the generation table (teacher, g1..gN, baseline)."""

from __future__ import annotations

import argparse
import json

HELP = "Print the generation table (accuracy, pseudo-label accuracy, robustness) from DVC metrics."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list of row objects")
    p.add_argument("--out", help="also write the JSON rows to this file")
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument(
        "--outputs", default="outputs", help="pipeline outputs directory (default: outputs)"
    )
    p.add_argument(
        "--replicates",
        action="store_true",
        help="statistics over the replicates of this params.yaml (nsp replicates run); "
        "also writes outputs/replicates.json",
    )
    p.add_argument("--set", help="with --replicates: a replicate set folder (replicates/<hash>)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nsp.config import load_params
    from nsp.io import write_json
    from nsp.report import format_table, generation_table

    if args.replicates:
        return _replicates(args)
    rows = generation_table(load_params(args.params), Path(args.outputs))
    if args.out:
        write_json(args.out, {"rows": rows})
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def _replicates(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nsp.config import load_params
    from nsp.io import write_json
    from nsp.replicate_report import find_set, format_summary, summarize

    sdir = find_set(load_params(args.params), path=Path(args.set) if args.set else None)
    summary = summarize(sdir)
    write_json(Path(args.outputs) / "replicates.json", summary)
    if args.out:
        write_json(args.out, summary)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0
