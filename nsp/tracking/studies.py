"""MLflow side of Optuna studies: a parent run per study, a nested run per trial, registry look-ups.

Runs live in the experiment ``<tracking.experiment>-studies`` (keeps the pipeline's list clean).
Cross-references: the Optuna trial has user attr ``mlflow_run_id``; the run has tags
``optuna_study`` and ``optuna_trial_number``. Every function is a no-op when ``tracking.enabled`` is
false. Only the MLflow client API is used (no global active run), so threads/processes are safe.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nsp.errors import NSPError
from nsp.io import sqlite_file_lock
from nsp.tracking.store import (
    _experiment_id,
    _flatten,
    _numeric,
    connect,
    git_commit,
    settings,
)

STUDY_SUFFIX = "-studies"
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def _retry(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call an MLflow client method, retrying briefly when sqlite reports a lock."""
    for attempt in range(6):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if "locked" not in str(exc).lower() or attempt == 5:
                raise
            time.sleep(0.5 * (attempt + 1))
    return None


def enabled(params: dict[str, Any]) -> bool:
    return settings(params)["enabled"]


_READY: dict[tuple[str, str], str] = {}


def _client(params: dict[str, Any]) -> tuple[Any, str]:
    """(MlflowClient, id of the studies experiment); the store is initialised once per process."""
    cfg = settings(params)
    name = cfg["experiment"] + STUDY_SUFFIX
    key = (cfg["uri"], name)
    if key in _READY:
        mlflow = connect(cfg["uri"])
        return mlflow.MlflowClient(), _READY[key]
    with sqlite_file_lock(cfg["uri"]):
        mlflow = connect(cfg["uri"])
        try:
            exp_id = _retry(_experiment_id, mlflow, name, cfg["uri"])
        except Exception:
            exp = mlflow.get_experiment_by_name(name)  # another machine created it meanwhile
            if exp is None:
                raise
            exp_id = exp.experiment_id
    _READY[key] = exp_id
    return mlflow.MlflowClient(), exp_id


def ensure_study_run(
    params: dict[str, Any],
    *,
    study_name: str,
    storage: str,
    spec: dict[str, Any],
    run_id: str | None = None,
) -> str | None:
    """The study's parent run: ``run_id`` if it exists in this tracking store, else a new one."""
    if not enabled(params):
        return None
    client, exp_id = _client(params)
    if run_id:
        try:
            run = client.get_run(run_id)
            if run.info.experiment_id == exp_id:
                return run_id
        except Exception:
            pass
    run = _retry(
        client.create_run,
        exp_id,
        run_name=f"study:{study_name}",
        tags={
            "nsp.kind": "study",
            "optuna_study": study_name,
            "optuna_storage": storage,
            "git_commit": git_commit(),
        },
    )
    _retry(client.log_dict, run.info.run_id, spec, "study_spec.json")
    return run.info.run_id


class _NullTrialRun:
    run_id: str | None = None

    def log_epoch(self, rec: dict[str, Any]) -> None: ...

    def log_final(self, metrics: dict[str, Any], tags: dict[str, Any] | None = None) -> None: ...


class _TrialRun:
    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def log_epoch(self, rec: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        step = int(rec["epoch"])
        metrics = [
            Metric(k, v, ts, step)
            for k, v in _numeric({k: v for k, v in rec.items() if k != "epoch"}).items()
        ]
        _retry(self.client.log_batch, self.run_id, metrics=metrics)

    def log_final(self, metrics: dict[str, Any], tags: dict[str, Any] | None = None) -> None:
        from mlflow.entities import Metric, RunTag

        ts = int(time.time() * 1000)
        ms = [Metric(f"final_{k}", v, ts, 0) for k, v in _numeric(metrics).items()]
        ts_ = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        _retry(self.client.log_batch, self.run_id, metrics=ms, tags=ts_)


@contextlib.contextmanager
def trial_run(
    params: dict[str, Any],
    *,
    parent_run_id: str | None,
    study_name: str,
    trial_number: int,
    values: dict[str, Any],
    config: dict[str, Any],
    tags: dict[str, Any] | None = None,
) -> Iterator[Any]:
    """A nested run for one trial: FINISHED, KILLED (pruned, tag ``optuna_trial_state``) or FAILED."""
    if not enabled(params) or parent_run_id is None:
        yield _NullTrialRun()
        return
    import optuna
    from mlflow.entities import Param

    client, exp_id = _client(params)
    run = _retry(
        client.create_run,
        exp_id,
        run_name=f"{study_name}#{trial_number}",
        tags={
            "mlflow.parentRunId": parent_run_id,
            "nsp.kind": "study_trial",
            "optuna_study": study_name,
            "optuna_trial_number": str(trial_number),
            "git_commit": git_commit(),
            **{k: str(v) for k, v in (tags or {}).items()},
        },
    )
    run_id = run.info.run_id
    logged = {**{f"search.{k}": v for k, v in values.items()}, **_flatten(config)}
    _retry(
        client.log_batch,
        run_id,
        params=[Param(k, str(v)[:500]) for k, v in logged.items()],
    )
    tracker = _TrialRun(client, run_id)
    try:
        yield tracker
    except optuna.TrialPruned:
        _retry(client.set_tag, run_id, "optuna_trial_state", "PRUNED")
        _retry(client.set_terminated, run_id, "KILLED")
        raise
    except BaseException as exc:
        _retry(client.set_tag, run_id, "optuna_trial_state", "FAIL")
        _retry(client.set_tag, run_id, "error", f"{type(exc).__name__}: {exc}"[:500])
        _retry(client.set_terminated, run_id, "FAILED")
        raise
    _retry(client.set_tag, run_id, "optuna_trial_state", "COMPLETE")
    _retry(client.set_terminated, run_id, "FINISHED")


def mark_run_failed(params: dict[str, Any], *, run_id: str | None, reason: str) -> None:
    """Close a dead worker's trial run (it never got to end it) as FAILED."""
    if not enabled(params) or not run_id:
        return
    client, _ = _client(params)
    try:
        _retry(client.set_tag, run_id, "optuna_trial_state", "FAIL")
        _retry(client.set_tag, run_id, "error", reason[:500])
        _retry(client.set_terminated, run_id, "FAILED")
    except Exception:
        pass  # the run may live in another tracking store; the Optuna state is what counts


def record_best(
    params: dict[str, Any],
    *,
    parent_run_id: str | None,
    metric_names: list[str],
    best: list[dict[str, Any]],
    counts: dict[str, int],
) -> None:
    """Log the best trial (single objective) or the Pareto front (multi) on the study's run."""
    if not enabled(params) or parent_run_id is None:
        return
    from mlflow.entities import Metric, RunTag

    client, _ = _client(params)
    ts = int(time.time() * 1000)
    metrics = [Metric(f"trials_{k.lower()}", float(v), ts, 0) for k, v in counts.items()]
    tags = [RunTag("best_trial_numbers", ",".join(str(b["number"]) for b in best))]
    if len(best) == 1:
        b = best[0]
        pairs = zip(metric_names, b["values"], strict=True)
        metrics += [Metric(f"best_{m}", float(v), ts, 0) for m, v in pairs]
        tags += [RunTag("best_trial_number", str(b["number"]))]
        if b.get("mlflow_run_id"):
            tags.append(RunTag("best_trial_run_id", str(b["mlflow_run_id"])))
    _retry(client.log_batch, parent_run_id, metrics=metrics, tags=tags)
    _retry(client.log_dict, parent_run_id, {"metrics": metric_names, "best": best}, "best.json")
    _retry(client.set_terminated, parent_run_id, "FINISHED")


def trial_runs(params: dict[str, Any], *, parent_run_id: str) -> list[Any]:
    """The nested trial runs of a study run (for reports and tests)."""
    client, exp_id = _client(params)
    return list(
        client.search_runs(
            [exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=5000
        )
    )


# ------------------------------------------------------------------------------- model registry


def resolve_model_uri(
    params: dict[str, Any], uri: str, *, models_dir: str | Path = "outputs/models"
) -> dict[str, Any]:
    """Resolve ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) to a model.

    Returns ``{"path": local checkpoint or None, "model": nn.Module or None, "version",
    "checkpoint_sha256"}``: the DVC checkpoint whose sha256 matches the version's
    ``checkpoint_sha256`` tag when present locally, else the registered MLflow model itself.
    """
    m = _MODEL_URI.match(uri)
    if not m:
        raise NSPError(f"{uri!r} is not a registry URI; write models:/NAME@ALIAS or models:/NAME/3")
    cfg = settings(params)
    mlflow = connect(cfg["uri"])
    client = mlflow.MlflowClient()
    try:
        if m["alias"]:
            mv = client.get_model_version_by_alias(m["name"], m["alias"])
        else:
            mv = client.get_model_version(m["name"], m["version"])
    except Exception as exc:
        raise NSPError(
            f"{uri}: not found in the model registry at {cfg['uri']} ({type(exc).__name__}); "
            "check the name/alias (nsp registry) or use a checkpoint path"
        ) from None
    from nsp.io import sha256_file

    sha = mv.tags.get("checkpoint_sha256")
    stage = mv.tags.get("stage", "")
    local = stage.split("@", 1)[1] if stage.startswith("student@") else stage
    candidates = [Path(models_dir) / local / "model.pt"] if local else []
    candidates += sorted(Path(models_dir).glob("*/model.pt"))
    if sha:
        for c in candidates:
            if c.is_file() and sha256_file(c) == sha:
                return {"path": c, "model": None, "version": mv.version, "checkpoint_sha256": sha}
    from nsp.tracking.registry import load_version

    try:  # rebuilt from the version's safetensors weights + resolved config: nothing unpickled
        model, _meta = load_version(mlflow, mv)
    except NSPError as exc:
        raise NSPError(
            f"{uri}: version {mv.version} has no local checkpoint (sha {sha}) and its registered "
            f"weights cannot be loaded ({exc}); run dvc pull or use a checkpoint path"
        ) from None
    return {"path": None, "model": model.eval(), "version": mv.version, "checkpoint_sha256": sha}
