"""``nsp study show`` (best trial / Pareto front as a table) and ``nsp study apply`` (params.yaml)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from nsp.errors import NSPError
from nsp.study.runner import best_trials, tally
from nsp.study.spec import StudySpec, find_spec
from nsp.study.storage import load_study_readonly, trial_time


def locate(name: str, spec_path: str | Path | None = None) -> tuple[str, StudySpec | None]:
    """(storage URL, spec or None) of study ``name``: --spec, studies/*.yaml, else the default db."""
    spec = find_spec(name, spec_path)
    if spec is not None:
        return spec.storage, spec
    default = Path("studies") / f"{name}.db"
    if not default.is_file():
        raise NSPError(
            f"study {name!r}: no studies/*.yaml names it and {default} does not exist; "
            "pass --spec studies/<file>.yaml"
        )
    return f"sqlite:///{default}", None


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _table(rows: list[list[str]], header: list[str], left: tuple[str, ...] = ("state",)) -> str:
    """Fixed-width text table; columns named in ``left`` are left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [
            c.ljust(w) if h in left else c.rjust(w)
            for c, w, h in zip(cells, widths, header, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), *[line(r) for r in rows]])


def versus_trial0(
    trial: dict[str, Any], trial0: dict[str, Any] | None, metric: str, direction: str
) -> str:
    """``better`` / ``worse`` when ``trial`` differs from trial 0 (the params.yaml values) in ``metric``
    by more than their combined s.e. sqrt(se^2 + se0^2); ``~`` within it; ``-`` without an s.e.
    (``repeats: 1``) or value. ``trial``/``trial0``: {metric: value, f"{metric}_se": s.e.}."""
    if trial0 is None or trial is trial0:
        return "-"
    v, v0 = trial.get(metric), trial0.get(metric)
    se, se0 = trial.get(f"{metric}_se"), trial0.get(f"{metric}_se")
    if None in (v, v0, se, se0):
        return "-"
    if abs(v - v0) <= math.hypot(se, se0):
        return "~"
    return "better" if (v > v0) == (direction == "maximize") else "worse"


def se_view(t: FrozenTrial, metric_names: list[str]) -> dict[str, Any]:
    """{metric: value, f"{metric}_se": s.e.} of a trial (values None unless COMPLETE)."""
    vals = list(t.values or [None] * len(metric_names)) if t.state == TrialState.COMPLETE else []
    out: dict[str, Any] = {
        m: (vals[i] if i < len(vals) else None) for i, m in enumerate(metric_names)
    }
    out.update({f"{m}_se": t.user_attrs.get(f"{m}_se") for m in metric_names})
    return out


def _marks(
    t: FrozenTrial,
    view: dict[str, Any],
    base: dict[str, Any] | None,
    trial0: FrozenTrial | None,
    metric_names: list[str],
    directions: list[str] | None,
    shown: bool,
) -> list[str]:
    if not shown or trial0 is None:
        return []
    if t.number == trial0.number:
        return ["trial 0"] * len(metric_names)
    return [
        versus_trial0(view, base, m, d) for m, d in zip(metric_names, directions or [], strict=True)
    ]


def trials_table(
    trials: list[FrozenTrial],
    metric_names: list[str],
    *,
    trial0: FrozenTrial | None = None,
    directions: list[str] | None = None,
) -> str:
    names: list[str] = []
    for t in trials:
        names += [k for k in t.params if k not in names]
    repeated = any(t.user_attrs.get(f"{m}_se") is not None for t in trials for m in metric_names)
    marks = [f"{m} vs t0" for m in metric_names] if repeated and trial0 is not None else []
    header = ["trial", "state", *metric_names, *names, *marks, "seconds", "mlflow_run"]
    base = se_view(trial0, metric_names) if trial0 is not None else None
    rows = []
    for t in trials:
        vals = list(t.values or [None] * len(metric_names))
        view = se_view(t, metric_names)
        secs = trial_time(t)
        run = t.user_attrs.get("mlflow_run_id")
        cells = []
        for m, v in zip(metric_names, vals, strict=False):
            se = view.get(f"{m}_se")
            cells.append(
                "-" if v is None else f"{v:.4f}" + (f"+-{se:.4f}" if se is not None else "")
            )
        rows.append(
            [
                str(t.number),
                t.state.name,
                *cells,
                *[_fmt(t.params.get(n)) for n in names],
                *_marks(t, view, base, trial0, metric_names, directions, bool(marks)),
                "-" if secs is None else f"{secs:.0f}",
                run[:8] if run else "-",
            ]
        )
    return _table(rows, header)


def show_study(name: str, *, spec_path: str | Path | None = None, top: int = 5) -> str:
    """The study as text: header, trial counts, best trial + top-N (or the Pareto front)."""
    storage, _ = locate(name, spec_path)
    study = load_study_readonly(storage, name)
    metrics = list(study.user_attrs.get("nsp_objectives") or study.metric_names or ["value"])
    dirs = [d.name.lower() for d in study.directions]
    trials = study.get_trials(deepcopy=False)
    c = tally(trials)
    out = io.StringIO()
    out.write(
        f"study {name} ({storage}): "
        + ", ".join(f"{d} {m}" for d, m in zip(dirs, metrics, strict=False))
        + "\n"
    )
    states = ", ".join(f"{s} {c[s]}" for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING"))
    out.write(f"trials: {len(trials)} ({states})\n")
    best = best_trials(study)
    trial0 = next((t for t in trials if t.number == 0 and t.state == TrialState.COMPLETE), None)
    if not best:
        out.write("no completed trial yet\n")
        return out.getvalue()
    if len(dirs) == 1:
        b = best[0]
        out.write(f"best trial: {b.number} ({metrics[0]}={b.values[0]:.4f})\n")
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        done.sort(key=lambda t: t.values[0], reverse=dirs[0] == "maximize")
        out.write(f"top {min(top, len(done))} of {len(done)} completed:\n")
        out.write(trials_table(done[:top], metrics, trial0=trial0, directions=dirs) + "\n")
    else:
        out.write(f"Pareto front ({len(best)} trial{'s' if len(best) != 1 else ''}):\n")
        out.write(trials_table(best, metrics, trial0=trial0, directions=dirs) + "\n")
    if any(t.user_attrs.get("repeats", 1) > 1 for t in trials):
        out.write(
            "values: mean+-s.e. over each trial's repeats; 'vs t0': better/worse than trial 0 (the "
            "params.yaml values) by more than the combined s.e., '~' within it\n"
        )
    return out.getvalue()


def _represent_null(representer: Any, _: None) -> Any:
    """Keep ``null`` written as ``null`` (ruamel's default writes nothing)."""
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


def apply_trial(
    name: str,
    *,
    trial_number: int,
    params_path: str | Path = "params.yaml",
    spec_path: str | Path | None = None,
) -> list[tuple[str, Any, Any]]:
    """Write trial ``trial_number``'s values into params.yaml (round-trip: comments/order kept).

    Only the search-space keys of the trial change. Returns ``[(key, old, new), ...]``.
    """
    from ruamel.yaml import YAML

    from nsp import config as C
    from nsp.io import write_bytes

    storage, spec = locate(name, spec_path)
    study = load_study_readonly(storage, name)
    trials = study.get_trials(deepcopy=False)
    if not 0 <= trial_number < len(trials):
        raise NSPError(
            f"study {name!r} has no trial {trial_number} (0..{len(trials) - 1}); see nsp study show"
        )
    trial = trials[trial_number]
    if trial.state != TrialState.COMPLETE:
        raise NSPError(
            f"study {name!r}: trial {trial_number} is {trial.state.name}; apply a COMPLETE trial "
            f"(nsp study show {name})"
        )
    keys = spec.key_map() if spec is not None else dict(study.user_attrs.get("nsp_keys") or {})
    missing = [p for p in trial.params if p not in keys]
    if missing:
        raise NSPError(
            f"study {name!r}: no params.yaml key known for {missing}; pass the study's --spec"
        )
    path = Path(params_path)
    if not path.is_file():
        raise NSPError(f"{path}: params file not found; pass --params")
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.representer.add_representer(type(None), _represent_null)
    doc = yaml.load(path.read_text())
    changes: list[tuple[str, Any, Any]] = []
    for pname, value in trial.params.items():
        parts = keys[pname].split(".")
        node = doc
        for part in parts[:-1]:
            if part not in node or node[part] is None:
                raise NSPError(
                    f"{path}: {'.'.join(parts[:-1])} is missing; cannot set {keys[pname]}"
                )
            node = node[part]
        old = node.get(parts[-1])
        if isinstance(value, float) and value.is_integer() and isinstance(old, int):
            value = int(value)
        node[parts[-1]] = value
        changes.append((keys[pname], old, value))
    buf = io.StringIO()
    yaml.dump(doc, buf)
    text = buf.getvalue()
    import yaml as pyyaml

    params = pyyaml.safe_load(text)
    gen = study.user_attrs.get("nsp_generation", "g1")
    C.student_config(params, gen)
    C.pseudo_config(params, gen)
    write_bytes(path, text.encode())
    return changes
