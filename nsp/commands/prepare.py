"""``nsp prepare``: split a dataset into labeled / val / unlabeled / test arrays (or manifests)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from nsp.errors import NSPError, one_line

HELP = "Split a dataset into labeled / val / unlabeled / test under data/prepared (seeded, stratified)."

DEFAULTS: dict[str, Any] = {
    "dataset": "fashion_mnist",
    "data_dir": None,
    "out_dir": "data/prepared",
    "labeled_per_class": 100,
    "val_per_class": 100,
    "seed": 0,
    "image_size": 32,
    "channels": 1,
    "fit": "pad",
    "materialize": "auto",
    "skip_corrupt": False,
    "test_fraction": 0.2,
    "resize_shorter": None,
    "verify_images": "full",
    "hash_images": False,
    "workers": None,
    "a_pool_per_class": 0,
}
_INT_KEYS = (
    "labeled_per_class",
    "val_per_class",
    "seed",
    "image_size",
    "channels",
    "a_pool_per_class",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``nsp prepare`` options (each overrides the ``prepare:`` section of --params)."""
    parser.add_argument(
        "--params",
        default="params.yaml",
        help="YAML file with a `prepare:` section (default: %(default)s)",
    )
    parser.add_argument(
        "--dataset", help="fashion_mnist | mnist | cifar10 | cifar100 | imagefolder"
    )
    parser.add_argument(
        "--data-dir", help="dataset directory (else $NSP_DATA_DIR, else the dataset default)"
    )
    parser.add_argument("--out", dest="out_dir", help="output directory (default: data/prepared)")
    parser.add_argument("--labeled-per-class", type=int, help="labeled images per class")
    parser.add_argument("--val-per-class", type=int, help="validation images per class")
    parser.add_argument(
        "--a-pool-per-class",
        type=int,
        help="training images per class held out as the -A candidate pool (0: none)",
    )
    parser.add_argument("--seed", type=int, help="split seed")
    parser.add_argument("--image-size", type=int, help="output side length in pixels")
    parser.add_argument(
        "--channels", type=int, choices=(1, 3), help="output channels (1 grey, 3 RGB)"
    )
    parser.add_argument(
        "--materialize",
        choices=("auto", "always", "never"),
        help="ImageFolder: decode into arrays or keep lazy",
    )
    parser.add_argument(
        "--skip-corrupt",
        action="store_true",
        default=None,
        help="ImageFolder: skip and count corrupt images",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def load_prepare_params(path: str, *, explicit: bool) -> dict[str, Any]:
    """The ``prepare:`` section of a params YAML (defaults when absent and not ``explicit``)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        if explicit:
            raise NSPError(f"params file {p} not found; fix --params")
        return dict(DEFAULTS)
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise NSPError(f"params file {p} is not valid YAML ({one_line(exc)}); fix it") from exc
    section = doc.get("prepare") if isinstance(doc, dict) else None
    if section is None:
        return dict(DEFAULTS)
    if not isinstance(section, dict):
        raise NSPError(f"params file {p}: `prepare:` must be a mapping; fix it")
    unknown = sorted(set(section) - set(DEFAULTS))
    if unknown:
        raise NSPError(
            f"params file {p}: unknown prepare key(s) {', '.join(unknown)}; known: {', '.join(DEFAULTS)}"
        )
    return {**DEFAULTS, **section}


def run(args: argparse.Namespace) -> int:
    """Resolve parameters (defaults < params file < options), prepare, print a one-line summary."""
    from nsp.data.prepare import prepare_splits

    explicit = args.params != "params.yaml"
    params = load_prepare_params(args.params, explicit=explicit)
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            params[key] = value
    for key in _INT_KEYS:
        try:
            params[key] = int(params[key])
        except (TypeError, ValueError):
            raise NSPError(
                f"prepare.{key} must be an integer (got {params[key]!r}); fix {args.params}"
            ) from None
    t0 = time.perf_counter()
    m = prepare_splits(**params, progress=not args.no_progress)
    dt = time.perf_counter() - t0
    counts = " ".join(
        f"{s}={m['splits'][s]['count']}"
        for s in ("labeled", "val", "unlabeled", "test", "apool")
        if s in m["splits"]
    )
    skipped = m.get("skipped_corrupt", {}).get("count", 0)
    extra = f" skipped_corrupt={skipped}" if skipped else ""
    shape = "x".join(str(v) for v in m["image_shape"])
    print(
        f"prepared {m['dataset']} ({m['num_classes']} classes, {shape}, {m['storage']}) -> {params['out_dir']}: "
        f"{counts}{extra} in {dt:.1f}s"
    )
    return 0
