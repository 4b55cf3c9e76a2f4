"""Retrain one generation's student with changed settings, beside the pipeline (README: "What limits
accuracy here").

The student is trained by :func:`nsp.student.train_student`, the recipe the ``student@`` stage uses.

    python benchmarks/student_ablation.py --gen g3 --set epochs=3 --set noise.ra_magnitude=2
    python benchmarks/student_ablation.py --gen g3 --set pseudo.temperature=0.5   # re-labels first
    python benchmarks/student_ablation.py --gen g3 --oracle                       # true labels

Reads the finished pipeline's outputs (the generation's teacher model and pseudo-label set, data in
``data/prepared``), trains into ``--scratch`` with tracking off, and prints one JSON line: the test
accuracy of the new student and, when it re-labelled, the new pseudo-label accuracy. ``--set`` keys are
``generations.<gen>`` keys (``pseudo.*`` ones make the teacher label the unlabeled split again).
``--oracle`` replaces the targets of the kept rows by their true labels: an upper bound on what better
pseudo labels could give in the same number of steps. The pipeline's own outputs are never written.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml


def _override(section: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        section = section.setdefault(key, {})
    section[leaf] = value


def ablate(
    *,
    params_path: Path,
    outputs: Path,
    gen: str,
    overrides: dict[str, Any],
    oracle: bool,
    scratch: Path,
) -> dict[str, Any]:
    """Train ``gen``'s student with ``overrides`` into ``scratch``; returns its metrics."""
    import numpy as np

    from nsp import config as C
    from nsp import stages
    from nsp.checkpoint import load_checkpoint, save_checkpoint
    from nsp.errors import NSPError
    from nsp.io import write_json
    from nsp.pseudo.label import load_pseudo_label_set
    from nsp.runtime import load_data, model_dir, pseudo_dir
    from nsp.student import pseudo_source, train_student
    from nsp.train.engine import accuracy, to_nchw

    params = C.load_params(params_path)
    if gen not in C.generation_keys(params):
        raise NSPError(f"--gen {gen}: not a generation of {params_path}")
    params["tracking"] = {**(params.get("tracking") or {}), "enabled": False}
    for key, value in overrides.items():
        _override(params["generations"][gen], key, value)
    teacher = C.teacher_of(params, gen)
    for path in (model_dir(teacher, outputs) / "model.pt", pseudo_dir(gen, outputs)):
        if not path.exists():
            raise NSPError(f"{path} not found; run `dvc repro student@{gen}` first")
    result: dict[str, Any] = {"gen": gen, "overrides": overrides, "oracle": oracle}
    scratch.mkdir(parents=True, exist_ok=True)
    set_dir = pseudo_dir(gen, outputs)
    if any(
        k.split(".")[0] == "pseudo" for k in overrides
    ):  # the teacher labels again, into scratch
        (scratch / "models").mkdir(parents=True, exist_ok=True)
        (scratch / "models" / teacher).symlink_to(model_dir(teacher, outputs).resolve())
        pm = stages.run_pseudo_label(params, gen, out=scratch, progress=False)
        result["pseudo_label_acc"] = pm["pseudo_label_acc"]
        result["pseudo_label_acc_all"] = pm["pseudo_label_acc_all"]
        set_dir = pseudo_dir(gen, scratch)
    data = load_data(params, unlabeled=True)
    k = data["num_classes"]
    ps = load_pseudo_label_set(set_dir, k)
    if oracle:
        truth = data["unlabeled_truth"]
        if truth is None:
            raise NSPError("--oracle needs the unlabeled split's hidden true labels")
        ps["targets"] = np.eye(k, dtype=np.float32)[np.asarray(truth)[ps["index"]]]
    cfg = C.student_config(params, gen)
    write_json(model_dir(gen, scratch) / "config.json",
               {"stage": f"ablation@{gen}", "config": C.to_dict(cfg), **result})  # fmt: skip
    t0 = time.perf_counter()
    out = train_student(
        cfg=cfg,
        data=data,
        pseudo=pseudo_source(ps, to_nchw(np.asarray(data["unlabeled"].images))),
        teacher=load_checkpoint(model_dir(teacher, outputs) / "model.pt"),
        where=f"params.yaml: generations.{gen}",
        state_path=model_dir(gen, scratch) / "train_state.pt",
    )
    test_acc = accuracy(out["model"], data["test_x"], data["test_y"])
    save_checkpoint(model_dir(gen, scratch) / "model.pt", model=out["model"], arch=cfg.arch,
                    num_classes=k, in_chans=data["labeled_x"].shape[1], config=C.to_dict(cfg),
                    metrics={"val_acc": out["metrics"]["val_acc"], "test_acc": test_acc},
                    class_names=data["class_names"])  # fmt: skip
    result.update(
        test_acc=test_acc,
        val_acc=out["metrics"]["val_acc"],
        steps=out["metrics"]["steps"],
        seconds=round(time.perf_counter() - t0, 1),
    )
    return result


def main(argv: list[str] | None = None) -> int:
    from nsp.errors import NSPError

    p = argparse.ArgumentParser(
        prog="benchmarks/student_ablation.py", description=__doc__.split("\n")[0]
    )
    p.add_argument("--gen", required=True, help="generation key, e.g. g3")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override generations.<gen>.KEY (dotted, YAML value); repeatable")  # fmt: skip
    p.add_argument(
        "--oracle", action="store_true", help="train on the true labels of the kept rows"
    )
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--outputs", default="outputs", help="the pipeline's outputs (read only)")
    p.add_argument(
        "--scratch", default=None, help="where the new student goes (default: a temp dir)"
    )
    args = p.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"student_ablation: error: --set {item!r}: use KEY=VALUE", file=sys.stderr)
            return 2
        overrides[key] = yaml.safe_load(value)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="nsp-ablation-"))
    if scratch.exists() and any(scratch.iterdir()):
        print(f"student_ablation: error: --scratch {scratch} is not empty", file=sys.stderr)
        return 2
    try:
        res = ablate(params_path=Path(args.params), outputs=Path(args.outputs), gen=args.gen,
                     overrides=overrides, oracle=args.oracle, scratch=scratch)  # fmt: skip
    except NSPError as e:
        print(f"student_ablation: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({**res, "scratch": str(scratch)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
