"""``nsp releases {list,evaluate,metrics}``: the official ImageNet-C/-P/-A/-R and CIFAR-10-C/-P
releases (``release_list``, ``release_eval@<model>``, ``release_metrics@<model>`` DVC stages)."""

from __future__ import annotations

import argparse

HELP = "Evaluate models on the official robustness releases named in robustness.releases."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Register ``nsp releases`` sub-commands."""
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="check and list the configured releases (no file is read)")
    ev = sub.add_parser("evaluate", help="run one model over every release (raw numbers)")
    me = sub.add_parser("metrics", help="the published protocols' metrics of one model")
    for q in (ev, me):
        q.add_argument("model", help="teacher, a generation key (g1, ...) or baseline")
    for q in (ls, ev, me):
        q.add_argument("--params", default="params.yaml", help="params file")
        q.add_argument("--outputs", default="outputs", help="pipeline outputs directory")
        q.add_argument("--no-progress", action="store_true", help="disable progress bars")


def _fmt(v: object) -> str:
    return "-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def run(args: argparse.Namespace) -> int:
    """Run one step and print one line per release."""
    from pathlib import Path

    from nsp.config import load_params
    from nsp.robustness import release_stage as S

    params = load_params(args.params)
    out = Path(args.outputs)
    if args.action == "list":
        doc = S.run_release_list(params, out=out)
        for name, lst in doc["releases"].items():
            print(f"{name}: {lst['files']} files, {lst['bytes'] / 1e9:.2f} GB in {lst['root']}")
        if not doc["releases"]:
            print("no release configured (robustness.releases)")
    elif args.action == "evaluate":
        for name, raw in S.run_release_eval(params, args.model, out=out).items():
            print(
                f"{args.model} on {name}: {raw['classes']} shared classes, {raw['images']} "
                f"images/sequences in {raw['seconds']:.1f}s"
            )
    else:
        m = S.run_release_metrics(params, args.model, out=out)
        for name, summ in m["releases"].items():
            vals = " ".join(f"{k}={_fmt(v)}" for k, v in summ.items() if not isinstance(v, dict))
            print(f"{args.model} on {name}: {vals}")
    return 0
