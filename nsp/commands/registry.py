"""``nsp registry list|pull``: browse and download models from the MLflow model registry."""

from __future__ import annotations

import argparse

HELP = "List registered models/versions/aliases, or pull NAME@ALIAS | NAME/VERSION to a directory."


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser(
        "list", help="versions, aliases and key metrics", description="List registry versions."
    )
    ls.add_argument("name", nargs="?", help="registered model name (default: all)")
    ls.add_argument(
        "--params", default="params.yaml", help="params file for tracking.uri (optional)"
    )
    pull = sub.add_parser(
        "pull", help="download a model and its config", description="Pull a registered model."
    )
    pull.add_argument("ref", help="NAME@ALIAS or NAME/VERSION (e.g. nsp-fashion-mnist@champion)")
    pull.add_argument("--out", required=True, help="output directory")
    pull.add_argument(
        "--params", default="params.yaml", help="params file for tracking.uri (optional)"
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from nsp import tracking
    from nsp.report import format_table

    params = yaml.safe_load(Path(args.params).read_text()) if Path(args.params).exists() else {}
    if args.action == "list":
        rows = tracking.list_registry(params=params, name=args.name)
        print(
            format_table([{k: v for k, v in r.items() if k != "run_id"} for r in rows])
            if rows
            else "no registered models yet: run `dvc repro`"
        )
        return 0
    info = tracking.pull_model(ref=args.ref, out_dir=args.out, params=params)
    print(
        f"pulled {info['model']} v{info['version']} ({info['arch']}, stage {info['stage']}) -> {args.out}"
    )
    print(
        "load it with (rebuilt from safetensors weights + config: runs no code from the registry):"
    )
    print(
        f"  from nsp.checkpoint import load_checkpoint, model_from_checkpoint; "
        f"model = model_from_checkpoint(load_checkpoint('{args.out}/model.pt'))"
    )
    print(
        "or, only if you trust the registry (this unpickles the logged model, which can run code):"
    )
    print(
        f"  import mlflow; model = mlflow.pytorch.load_model('models:/{info['model']}/{info['version']}')"
    )
    print("inputs: uint8/float NCHW pixels in [0, 255]; outputs: logits")
    return 0
