"""Study workers, the multi-process launcher, and ``show`` / ``apply``.

A worker loops: start one trial, repeat, until the study holds ``n_trials`` finished trials (a
heartbeat-failed trial that was re-queued does not count) and nothing is waiting or running.
``nsp study run --workers K`` starts K ``nsp study worker`` processes; the same command on several
machines against one RDB storage is the distributed mode.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from nsp.errors import NSPError
from nsp.study.spec import StudySpec, check_against_params
from nsp.study.storage import open_study, quiet, trial_time

PARENT_ATTR = "mlflow_parent_run_id"


def _log(worker: int, msg: str) -> None:
    print(f"[study w{worker}] {msg}", flush=True)


def tally(trials: list[FrozenTrial]) -> dict[str, int]:
    """Counts by state plus ``done``: finished trials minus those superseded by a retry."""
    counts = {s.name: 0 for s in TrialState}
    for t in trials:
        counts[t.state.name] += 1
    retries = sum(1 for t in trials if "failed_trial" in t.system_attrs)
    finished = sum(counts[s] for s in ("COMPLETE", "PRUNED", "FAIL"))
    counts["done"] = finished - retries
    return counts


def _stale_callback(params: dict[str, Any], max_retry: int) -> Any:
    """Re-queue a heartbeat-stale trial and close its orphaned MLflow run."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with quiet():
        retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        from nsp.tracking.studies import mark_run_failed

        print(
            f"[study] trial {trial.number} lost its worker (no heartbeat); marked FAIL, re-queued",
            flush=True,
        )
        mark_run_failed(
            params, run_id=trial.user_attrs.get("mlflow_run_id"), reason="worker died (heartbeat)"
        )
        retry(study, trial)

    return callback


def prepare_study(
    spec: StudySpec, params: dict[str, Any], *, worker_index: int = 0, stale: bool = True
) -> optuna.Study:
    """Validate the spec, create/resume the study (baseline enqueued once), ensure the MLflow run."""
    from nsp.tracking.studies import ensure_study_run

    check_against_params(spec, params)
    preflight(spec, params)
    study, created = open_study(
        spec,
        params=params,
        worker_index=worker_index,
        stale_callback=_stale_callback(params, spec.heartbeat["max_retry"]) if stale else None,
    )
    # the creator opens the MLflow parent run; others wait for its id (no duplicate parents)
    deadline = time.time() + 60
    while not created and PARENT_ATTR not in study.user_attrs and time.time() < deadline:
        time.sleep(0.5)
    run_id = study.user_attrs.get(PARENT_ATTR) or None
    new = ensure_study_run(
        params, study_name=spec.name, storage=spec.storage, spec=spec.raw, run_id=run_id
    )
    if new != run_id or PARENT_ATTR not in study.user_attrs:
        study.set_user_attr(PARENT_ATTR, new or "")
    return study


def preflight(spec: StudySpec, params: dict[str, Any]) -> None:
    """Fail before creating anything when the prepared data or the teacher checkpoint is missing."""
    from nsp.runtime import prepared_dir

    manifest = prepared_dir(params) / "manifest.json"
    if not manifest.is_file():
        raise NSPError(f"{manifest} not found; run `dvc repro prepare` (nsp prepare) first")
    if not spec.teacher.startswith("models:/") and not Path(spec.teacher).is_file():
        raise NSPError(
            f"{spec.where}: teacher {spec.teacher} not found; run `dvc repro teacher` (or dvc pull) "
            "or point teacher: at a checkpoint / models:/NAME@ALIAS"
        )


def _system_attrs(trial: optuna.Trial) -> dict[str, Any]:
    """A running trial's system attrs (``Trial.system_attrs`` is gone in Optuna 5)."""
    return trial.study._storage.get_trial(trial._trial_id).system_attrs


def _objective(ctx: Any, study_name: str, worker_index: int) -> Any:
    from nsp.study.objective import run_trial, trial_config
    from nsp.tracking.studies import trial_run

    spec, params = ctx.spec, ctx.params

    def objective(trial: optuna.Trial) -> Any:
        values = spec.sample(trial)
        trial.set_user_attr("worker_pid", os.getpid())
        trial.set_user_attr("worker_host", os.uname().nodename)
        parent = trial.study.user_attrs.get(PARENT_ATTR) or None
        with trial_run(
            params,
            parent_run_id=parent,
            study_name=study_name,
            trial_number=trial.number,
            values={spec.key_map()[k]: v for k, v in values.items()},
            config=trial_config(ctx, values),
            tags={"retried_trial": _system_attrs(trial).get("failed_trial", "")},
        ) as tr:
            if tr.run_id:
                trial.set_user_attr("mlflow_run_id", tr.run_id)

            def on_epoch(rec: dict[str, Any]) -> None:
                tr.log_epoch(rec)
                if not spec.multi_objective:
                    trial.report(float(rec["val_acc"]), int(rec["epoch"]))
                    if trial.should_prune():
                        raise optuna.TrialPruned(f"pruned at epoch {rec['epoch']}")

            metrics = run_trial(ctx, values=values, on_epoch=on_epoch)
            for k in ("trial_seconds", "steps", "pseudo_label_acc", "stream_used", "val_acc"):
                if metrics.get(k) is not None:
                    trial.set_user_attr(k, metrics[k])
            trial.set_user_attr("repeats", metrics.get("repeats", 1))
            for m in spec.metric_names:  # s.e. of the mean over repeats (None for one repeat)
                trial.set_user_attr(f"{m}_se", metrics.get(f"{m}_se"))
                if metrics.get(f"{m}_values") is not None:
                    trial.set_user_attr(f"{m}_values", metrics[f"{m}_values"])
            tr.log_final(metrics)
        out = [float(metrics[m]) for m in spec.metric_names]
        return out[0] if len(out) == 1 else out

    return objective


def _report(worker: int, study: optuna.Study, trial: FrozenTrial) -> None:
    vals = ", ".join(f"{v:.4f}" for v in trial.values) if trial.values else "-"
    secs = trial_time(trial)
    _log(
        worker,
        f"trial {trial.number} {trial.state.name} values=[{vals}] "
        f"({secs:.0f} s) params={trial.params}"
        if secs is not None
        else f"trial {trial.number} {trial.state.name}",
    )


def run_worker(
    spec: StudySpec,
    params: dict[str, Any],
    *,
    n_trials: int | None = None,
    worker_index: int = 0,
    deadline: float | None = None,
    threads: int | None = None,
    poll: float = 1.0,
) -> dict[str, int]:
    """Run trials of ``spec`` until it has ``n_trials`` done trials or ``deadline`` passes."""
    import torch

    from nsp.study.objective import build_context

    if threads:
        torch.set_num_threads(int(threads))
    n_trials = n_trials or spec.n_trials
    study = prepare_study(spec, params, worker_index=worker_index)
    objective = None
    storage = study._storage
    while deadline is None or time.time() < deadline:
        if hasattr(storage, "_get_stale_trial_ids"):
            with quiet():
                optuna.storages.fail_stale_trials(study)
        c = tally(study.get_trials(deepcopy=False))
        if c["WAITING"] == 0 and c["done"] + c["RUNNING"] >= n_trials:
            if c["RUNNING"] == 0:
                break
            time.sleep(poll)  # others are still running (or about to go stale): wait for them
            continue
        if objective is None:  # data + teacher logits load only when there is work
            t0 = time.perf_counter()
            ctx = build_context(params, spec)
            took = time.perf_counter() - t0
            _log(worker_index, f"ready in {took:.1f} s; teacher {ctx.teacher_desc}")
            objective = _objective(ctx, spec.name, worker_index)
        study.optimize(
            objective,
            n_trials=1,
            catch=(Exception,),
            callbacks=[lambda s, t: _report(worker_index, s, t)],
            gc_after_trial=True,
        )
    return tally(study.get_trials(deepcopy=False))


def run_study(
    spec: StudySpec,
    params: dict[str, Any],
    *,
    params_path: str | Path = "params.yaml",
    n_trials: int | None = None,
    workers: int = 1,
    timeout: float | None = None,
    seed_offset: int = 0,
) -> dict[str, int]:
    """Create/resume the study, run ``workers`` worker processes (1: in this process), record best."""
    from nsp.tracking.studies import record_best

    n_trials = n_trials or spec.n_trials
    timeout = timeout if timeout is not None else spec.timeout
    deadline = None if timeout is None else time.time() + timeout
    study = prepare_study(spec, params, worker_index=seed_offset)
    bad: list[int] = []
    if workers <= 1:
        run_worker(
            spec,
            params,
            n_trials=n_trials,
            worker_index=seed_offset,
            deadline=deadline,
        )
    else:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        procs = []
        for i in range(workers):
            cmd = [
                sys.executable,
                "-m",
                "nsp.cli",
                "study",
                "worker",
                str(spec.path),
                "--params",
                str(params_path),
                "--n-trials",
                str(n_trials),
                "--worker-index",
                str(seed_offset + i),
                "--threads",
                str(threads),
            ]
            if deadline is not None:
                cmd += ["--deadline", str(deadline)]
            procs.append(subprocess.Popen(cmd))
        codes = [p.wait() for p in procs]
        bad = [c for c in codes if c != 0]
        if bad:
            print(f"[study] {len(bad)} worker(s) exited with codes {bad}", file=sys.stderr)
    trials = study.get_trials(deepcopy=False)
    counts = tally(trials)
    counts["worker_errors"] = len(bad)
    best = [summarize(t, spec.metric_names) for t in best_trials(study)]
    if best:
        record_best(
            params,
            parent_run_id=study.user_attrs.get(PARENT_ATTR),
            metric_names=spec.metric_names,
            best=best,
            counts={k: v for k, v in counts.items() if k not in ("done", "worker_errors")},
        )
    return counts


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (single objective) or the Pareto front (multi), [] before any completes."""
    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return []
    if len(study.directions) == 1:
        return [study.best_trial]
    return sorted(study.best_trials, key=lambda t: t.number)


def summarize(t: FrozenTrial, metric_names: list[str]) -> dict[str, Any]:
    return {
        "number": t.number,
        "state": t.state.name,
        "values": list(t.values or []),
        "params": dict(t.params),
        "seconds": trial_time(t),
        "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
    }
