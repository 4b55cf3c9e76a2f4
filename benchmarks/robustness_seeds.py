"""Robustness columns across training seeds: retrain models beside the pipeline with other seeds and
compare their means (README: "Robustness across seeds").

    python benchmarks/robustness_seeds.py --model g3 --model baseline --seeds 11 12 13

For each model and seed, the model is retrained into ``--scratch/<model>_s<seed>`` with tracking off (a
student keeps its teacher and pseudo-label set: only its own seed changes), evaluated on the pipeline's
robustness sets and normalised by the pipeline's baseline, as ``evaluate@<model>`` does. The pipeline's
own run of each model is the first row of its group. Prints one JSON line per run, then a summary line:
per model and column the mean and s.d., and, between the first and the last ``--model``, the difference
of means per column, Welch's t and whether the first is better. The pipeline's outputs are only read.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

# column -> +1 where higher is better, -1 where lower is better
COLUMNS = {
    "clean_acc": 1,
    "a_acc": 1,
    "mce": -1,
    "rel_mce": -1,
    "mean_corruption_error": -1,
    "mfr": -1,
    "mt5d": -1,
    "calib_err": -1,
    "a_calib_err": -1,
}


def retrain_and_evaluate(
    *, params_path: Path, outputs: Path, model: str, seed: int, scratch: Path
) -> dict[str, Any]:
    """Train ``model`` with ``seed`` into ``scratch``, evaluate it on the pipeline's sets."""
    from student_ablation import ablate

    from nsp import config as C
    from nsp import stages
    from nsp.errors import NSPError
    from nsp.robustness.evaluate import robustness_metrics
    from nsp.robustness.stage import run_evaluate_raw

    params = C.load_params(params_path)
    params["tracking"] = {**(params.get("tracking") or {}), "enabled": False}
    base_name = params["evaluate"]["baseline"]
    base_raw = outputs / "robustness" / "raw" / f"{base_name}.json"
    if not base_raw.exists():
        raise NSPError(f"{base_raw} not found; run `dvc repro evaluate_raw@{base_name}` first")
    if model in C.generation_keys(params):
        ablate(params_path=params_path, outputs=outputs, gen=model, overrides={"seed": seed},
               oracle=False, scratch=scratch)  # fmt: skip
    elif model in ("teacher", "baseline"):
        params[model]["seed"] = seed
        (scratch / "models").mkdir(parents=True)
        if model == "baseline":  # it matches the steps of the model named in `match`
            match = stages.baseline_match(params)
            (scratch / "models" / match).symlink_to((outputs / "models" / match).resolve())
            stages.run_baseline(params, out=scratch, progress=False)
        else:
            stages.run_teacher(params, out=scratch, progress=False)
    else:
        raise NSPError(f"--model {model}: not teacher, baseline or a generation of {params_path}")
    (scratch / "robustness" / "raw").mkdir(parents=True, exist_ok=True)
    (scratch / "robustness" / "sets").symlink_to((outputs / "robustness" / "sets").resolve())
    raw = run_evaluate_raw(params, model, out=scratch, progress=False)
    m = robustness_metrics(raw, json.loads(base_raw.read_text()))
    return {"model": model, "seed": seed, **{c: m[c] for c in COLUMNS}}


def pipeline_row(*, params_path: Path, outputs: Path, model: str) -> dict[str, Any]:
    """The pipeline's own run of ``model`` (``outputs/robustness/<model>.metrics.json``)."""
    from nsp import config as C
    from nsp.errors import NSPError

    params = C.load_params(params_path)
    gen = model in C.generation_keys(params)
    if not gen and model not in ("teacher", "baseline"):
        raise NSPError(f"--model {model}: not teacher, baseline or a generation of {params_path}")
    path = outputs / "robustness" / f"{model}.metrics.json"
    if not path.exists():
        raise NSPError(f"{path} not found; run `dvc repro evaluate@{model}` first")
    m = json.loads(path.read_text())
    seed = C.student_config(params, model).seed if gen else params[model].get("seed")
    return {"model": model, "seed": seed, "pipeline": True, **{c: m[c] for c in COLUMNS}}


def _mean_sd(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample s.d. (nan below 2 values) and count of the non-None ``values``."""
    v = [x for x in values if x is not None]
    n = len(v)
    mean = sum(v) / n if n else float("nan")
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1)) if n > 1 else float("nan")
    return mean, sd, n


def summarise(rows: list[dict[str, Any]], models: list[str]) -> dict[str, Any]:
    """Per model and column mean/s.d.; first vs last model: difference, Welch's t, better or not."""
    groups = {m: [r for r in rows if r["model"] == m] for m in models}
    stats = {m: {c: _mean_sd([r[c] for r in g]) for c in COLUMNS} for m, g in groups.items()}
    out: dict[str, Any] = {
        "n": {m: len(g) for m, g in groups.items()},
        "mean": {m: {c: s[c][0] for c in COLUMNS} for m, s in stats.items()},
        "sd": {m: {c: s[c][1] for c in COLUMNS} for m, s in stats.items()},
    }
    if len(models) > 1:
        a, b = models[0], models[-1]
        cmp = {}
        for c, sign in COLUMNS.items():
            (ma, sa, na), (mb, sb, nb) = stats[a][c], stats[b][c]
            se = math.sqrt(sa**2 / na + sb**2 / nb) if na and nb else float("nan")
            diff = ma - mb
            cmp[c] = {
                "diff": diff,
                "welch_t": diff / se if se > 0 else float("nan"),
                "better": sign * diff > 0,
            }
        out["compare"] = {"model": a, "vs": b, "columns": cmp}
    return out


def main(argv: list[str] | None = None) -> int:
    from nsp.errors import NSPError

    p = argparse.ArgumentParser(
        prog="benchmarks/robustness_seeds.py", description=__doc__.split("\n")[0]
    )
    p.add_argument("--model", action="append", required=True,
                   help="teacher, baseline or a generation key; repeatable (compare first vs last)")  # fmt: skip
    p.add_argument("--seeds", type=int, nargs="+", required=True, help="extra seeds per model")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--outputs", default="outputs", help="the pipeline's outputs (read only)")
    p.add_argument(
        "--scratch", default=None, help="where retrained models go (default: a temp dir)"
    )
    args = p.parse_args(argv)
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="nsp-seeds-"))
    params_path, outputs = Path(args.params), Path(args.outputs)
    rows = []
    try:
        for model in args.model:
            rows.append(pipeline_row(params_path=params_path, outputs=outputs, model=model))
            print(json.dumps(rows[-1]), flush=True)
            for seed in args.seeds:
                target = scratch / f"{model}_s{seed}"
                if target.exists():
                    raise NSPError(
                        f"--scratch {scratch}: {target.name} exists; use an empty folder"
                    )
                rows.append(
                    retrain_and_evaluate(
                        params_path=params_path,
                        outputs=outputs,
                        model=model,
                        seed=seed,
                        scratch=target,
                    )  # fmt: skip
                )
                print(json.dumps(rows[-1]), flush=True)
    except NSPError as e:
        print(f"robustness_seeds: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"summary": summarise(rows, args.model), "scratch": str(scratch)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
