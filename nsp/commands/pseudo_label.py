"""``nsp pseudo-label --gen gN``: the previous generation labels the unlabeled split."""

from __future__ import annotations

import argparse

HELP = "Build generation gN's pseudo-label set with its (un-noised) teacher."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gen", required=True, help="generation key from params.yaml `generations:`, e.g. g1"
    )
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")


def run(args: argparse.Namespace) -> int:
    from nsp import stages
    from nsp.config import load_params

    s = stages.run_pseudo_label(load_params(args.params), args.gen, progress=not args.no_progress)
    if not s:  # a non-zero torchrun rank: rank 0 reports
        return 0
    acc = s["pseudo_label_acc"]
    print(
        f"pseudo_label@{args.gen}: stream={s['stream_size']} unique={s['num_kept_unique']}"
        + (f" acc={acc:.4f}" if acc is not None else "")
    )
    return 0
