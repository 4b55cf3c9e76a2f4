"""``nsp robustness``: build the -C / -P / -A robustness sets once (the ``robustness`` DVC stage)."""

from __future__ import annotations

import argparse

HELP = "Build the -C (corruptions), -P (perturbations) and -A (adversarially filtered) sets."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register ``nsp robustness`` options."""
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument(
        "--outputs", default="outputs", help="pipeline outputs directory (default: outputs)"
    )
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")


def run(args: argparse.Namespace) -> int:
    """Build the sets under <outputs>/robustness/sets and print a one-line summary."""
    from pathlib import Path

    from nsp.config import load_params
    from nsp.robustness.corruptions import CORRUPTIONS, SEVERITIES
    from nsp.robustness.perturbations import PERTURBATIONS
    from nsp.robustness.stage import run_robustness

    m = run_robustness(
        load_params(args.params), out=Path(args.outputs), progress=not args.no_progress
    )
    print(
        f"robustness sets: -C {m['c_images']} images x {len(CORRUPTIONS)} corruptions x "
        f"{len(SEVERITIES)} severities, -P {m['p_images']} images x {len(PERTURBATIONS)} "
        f"perturbations, -A {m['a_kept']} of {m['a_pool_size']} "
        f"pool images (reference pool acc {m['a_reference_pool_acc']:.4f}) "
        f"in {m['build_seconds']:.0f}s"
    )
    return 0
