"""``nsp train {teacher,student,baseline}``: one training stage from params.yaml."""

from __future__ import annotations

import argparse

HELP = "Train the teacher, a generation's noised student, or the supervised baseline."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("role", choices=["teacher", "student", "baseline"], help="which model to train")
    p.add_argument(
        "--gen", help="generation key from params.yaml `generations:` (students only), e.g. g1"
    )
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")


def run(args: argparse.Namespace) -> int:
    from nsp import stages
    from nsp.config import load_params
    from nsp.errors import NSPError

    params = load_params(args.params)
    progress = not args.no_progress
    if args.role == "teacher":
        m = stages.run_teacher(params, progress=progress)
    elif args.role == "baseline":
        m = stages.run_baseline(params, progress=progress)
    else:
        if not args.gen:
            raise NSPError(
                "nsp train student needs --gen (a key of `generations:` in params.yaml, e.g. g1)"
            )
        m = stages.run_student(params, args.gen, progress=progress)
    if "test_acc" not in m:  # a non-zero torchrun rank: rank 0 writes and reports
        return 0
    print(
        f"{args.gen or args.role}: test_acc={m['test_acc']:.4f} val_acc={m['val_acc']:.4f} "
        f"steps={m['steps']} {m['train_seconds']:.0f}s"
    )
    return 0
