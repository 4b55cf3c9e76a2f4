"""Pipeline and stage runs: one nested MLflow run per stage under the pipeline (parent) run.

Stages are separate processes: the pipeline run id is kept in ``outputs/pipeline_run.json``; the
teacher stage opens a new parent (the data or the first stage changed), later stages nest under it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nsp.io import write_json
from nsp.tracking.registry import register_model
from nsp.tracking.store import (
    _experiment_id,
    _flatten,
    _numeric,
    connect,
    git_commit,
    settings,
    tracking_errors,
)

PARENT_FILE = Path("outputs") / "pipeline_run.json"


class _NullTracker:
    run_id = None

    def log_epoch(self, rec: dict[str, Any]) -> None: ...

    def log_final(
        self,
        metrics: dict[str, Any],
        artifacts: list[Path] = (),
        tags: dict[str, Any] | None = None,
    ) -> None: ...

    def log_model(self, **_: Any) -> None: ...


class _Tracker:
    def __init__(
        self, mlflow: Any, run_id: str, cfg: dict[str, Any], stage: str, generation: int
    ) -> None:
        self.mlflow, self.run_id, self.cfg, self.stage, self.generation = (
            mlflow,
            run_id,
            cfg,
            stage,
            generation,
        )

    def log_epoch(self, rec: dict[str, Any]) -> None:
        m = _numeric({k: v for k, v in rec.items() if k != "epoch"})
        with tracking_errors(self.cfg["uri"], f"logging epoch {rec['epoch']}"):
            self.mlflow.log_metrics(m, step=int(rec["epoch"]))

    def log_final(
        self,
        metrics: dict[str, Any],
        artifacts: list[Path] = (),
        tags: dict[str, Any] | None = None,
    ) -> None:
        with tracking_errors(self.cfg["uri"], "logging the final metrics"):
            self.mlflow.log_metrics(
                {f"final_{k}" if k in ("val_acc",) else k: v for k, v in _numeric(metrics).items()}
            )
            for a in artifacts:
                if Path(a).exists():
                    self.mlflow.log_artifact(str(a))
            if tags:
                self.mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_model(
        self,
        *,
        model: Any,
        checkpoint_sha256: str,
        input_example: Any,
        metrics: dict[str, Any],
        config: dict[str, Any],
        class_names: list[str] | None = None,
    ) -> None:
        if not self.cfg["register"]:
            return
        with tracking_errors(self.cfg["uri"], "registering the model"):
            register_model(
                self.mlflow,
                name=self.cfg["registered_model"],
                model=model,
                run_id=self.run_id,
                checkpoint_sha256=checkpoint_sha256,
                input_example=input_example,
                metrics=metrics,
                stage=self.stage,
                generation=self.generation,
                champion_metric=self.cfg["champion_metric"],
                arch=str(config.get("arch", "")),
                config=config,
                class_names=class_names,
            )


def _replicate_tags(replicate: dict[str, Any] | None) -> dict[str, str]:
    """A replicate's pipeline run hangs under its replicate-set run (``params.yaml`` ``replicate:``)."""
    if not replicate:
        return {}
    tags = {
        "nsp.replicate": str(replicate["index"]),
        "nsp.config_hash": str(replicate["config_hash"]),
    }
    if replicate.get("parent_run_id"):
        tags["mlflow.parentRunId"] = str(replicate["parent_run_id"])
    return tags


def _parent_run(
    mlflow: Any,
    exp_id: str,
    stage: str,
    tags: dict[str, Any],
    replicate: dict[str, Any] | None = None,
) -> str:
    if stage != "teacher" and PARENT_FILE.exists():
        info = json.loads(PARENT_FILE.read_text())
        try:
            if mlflow.get_run(info["run_id"]).info.experiment_id == exp_id:
                return info["run_id"]
        except Exception:
            pass
    run = mlflow.MlflowClient().create_run(
        exp_id,
        run_name="pipeline" if not replicate else f"pipeline r{replicate['index']}",
        tags={
            "nsp.kind": "pipeline",
            "data_manifest_sha256": str(tags.get("data_manifest_sha256", "")),
            "git_commit": git_commit(),
            **_replicate_tags(replicate),
        },
    )
    write_json(PARENT_FILE, {"run_id": run.info.run_id, "experiment_id": exp_id})
    return run.info.run_id


@contextlib.contextmanager
def null_run() -> Iterator[Any]:
    """A tracker that records nothing (tracking disabled, or a non-zero torchrun rank)."""
    yield _NullTracker()


@contextlib.contextmanager
def stage_run(
    *,
    params: dict[str, Any],
    stage: str,
    generation: int,
    config: dict[str, Any],
    tags: dict[str, Any],
) -> Iterator[Any]:
    """A nested MLflow run for one stage under the pipeline run; FAILED if the body raises."""
    cfg = settings(params)
    if not cfg["enabled"]:
        if stage == "teacher":  # still a DVC output of the teacher stage: say there is no run
            write_json(PARENT_FILE, {"run_id": None, "tracking": "disabled"})
        yield _NullTracker()
        return
    mlflow = connect(cfg["uri"])
    with tracking_errors(cfg["uri"], "starting the stage run"):
        exp_id = _experiment_id(mlflow, cfg["experiment"], cfg["uri"])
        parent = _parent_run(mlflow, exp_id, stage, tags, params.get("replicate"))
        client = mlflow.MlflowClient()
        child = client.create_run(
            exp_id,
            run_name=stage,
            tags={
                "mlflow.parentRunId": parent,
                "nsp.kind": "stage",
                "nsp.stage": stage,
                "generation": str(generation),
                "git_commit": git_commit(),
                **{k: str(v) for k, v in tags.items()},
            },
        )
    run_id = child.info.run_id
    with tracking_errors(cfg["uri"], "starting the stage run"):
        active = mlflow.start_run(run_id=run_id)
    with active:
        try:
            with tracking_errors(cfg["uri"], "logging the resolved config"):
                mlflow.log_params({k: str(v)[:500] for k, v in _flatten(config).items()})
                mlflow.log_dict(
                    {"stage": stage, "config": config, "tags": tags}, "resolved_config.json"
                )
            yield _Tracker(mlflow, run_id, cfg, stage, generation)
        except BaseException:
            # end_run pops the run first, so a server that is gone cannot make this raise twice
            with contextlib.suppress(Exception):
                mlflow.end_run(status="FAILED")
            raise


def replicate_set_run(
    params: dict[str, Any], *, config_hash: str, count: int, run_id: str | None = None
) -> str | None:
    """The MLflow run that groups a replicate set's pipeline runs: ``run_id`` reopened, else a new one.

    Returns None when tracking is disabled.
    """
    cfg = settings(params)
    if not cfg["enabled"]:
        return None
    mlflow = connect(cfg["uri"])
    with tracking_errors(cfg["uri"], "opening the replicate-set run"):
        client = mlflow.MlflowClient()
        if run_id:
            try:
                client.update_run(run_id, status="RUNNING")
                client.set_tag(run_id, "nsp.replicate_count", str(count))
                return run_id
            except Exception:
                pass  # gone (another tracking store): open a new one
        exp_id = _experiment_id(mlflow, cfg["experiment"], cfg["uri"])
        run = client.create_run(
            exp_id,
            run_name=f"replicates {config_hash}",
            tags={
                "nsp.kind": "replicates",
                "nsp.config_hash": config_hash,
                "nsp.replicate_count": str(count),
                "git_commit": git_commit(),
            },
        )
        return run.info.run_id


def end_replicate_set_run(params: dict[str, Any], *, run_id: str | None, status: str) -> None:
    """Close the replicate-set run (``FINISHED`` / ``FAILED``); no-op without tracking."""
    cfg = settings(params)
    if not cfg["enabled"] or not run_id:
        return
    mlflow = connect(cfg["uri"])
    with tracking_errors(cfg["uri"], "closing the replicate-set run"):
        mlflow.MlflowClient().set_terminated(run_id, status=status)
