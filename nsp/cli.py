"""The ``nsp`` command line: each subcommand is a thin adapter in ``nsp/commands/<name>.py``.

A command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> module under nsp.commands (imported lazily so `nsp --help` stays fast)
COMMANDS: dict[str, str] = {
    "prepare": "prepare",
    "train": "train",
    "pseudo-label": "pseudo_label",
    "evaluate": "evaluate",
    "robustness": "robustness",
    "releases": "releases",
    "report": "report",
    "replicates": "replicates",
    "registry": "registry",
    "study": "study",
    "dashboard": "dashboard",
    "bench": "bench",
}


def _available() -> dict[str, object]:
    mods = {}
    for name, mod in COMMANDS.items():
        try:
            mods[name] = importlib.import_module(f"nsp.commands.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name == f"nsp.commands.{mod}":
                continue  # not built yet
            raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nsp",
        description="Noisy Student Training platform (teacher -> pseudo labels -> noised students).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in _available().items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Before torch loads: idle OpenMP threads sleep instead of spinning, so a busy host (or a
    # DataLoader/worker beside training) does not make every parallel region 5-15x slower.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    from nsp.errors import NSPError

    try:
        return int(args._run(args) or 0)
    except NSPError as exc:
        print(f"nsp {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
