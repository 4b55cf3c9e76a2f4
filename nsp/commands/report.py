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


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nsp.config import load_params
    from nsp.io import write_json
    from nsp.report import format_table, generation_table

    rows = generation_table(load_params(args.params), Path(args.outputs))
    if args.out:
        write_json(args.out, {"rows": rows})
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0
