"""The only module that talks to MLflow: pipeline/stage runs, lineage tags, the model registry.

Tracking URI: ``MLFLOW_TRACKING_URI`` > ``tracking.uri`` in params.yaml > ``sqlite:///<cwd>/mlflow.db``
(artifacts in ``<cwd>/mlartifacts``). Stages are separate processes: the pipeline (parent) run id is
kept in ``outputs/pipeline_run.json``; the teacher stage opens a new parent (the data or the first
stage changed), later stages nest under it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

from nsp.errors import NSPError  # noqa: E402
from nsp.io import write_json  # noqa: E402

PARENT_FILE = Path("outputs") / "pipeline_run.json"
ALIAS_OF_STAGE = {"teacher": "teacher", "baseline": "baseline"}


def settings(params: dict[str, Any]) -> dict[str, Any]:
    t = dict(params.get("tracking") or {})
    return {
        "enabled": bool(t.get("enabled", True)),
        "uri": os.environ.get("MLFLOW_TRACKING_URI")
        or t.get("uri")
        or f"sqlite:///{Path.cwd() / 'mlflow.db'}",
        "experiment": t.get("experiment", "nsp"),
        "registered_model": t.get("registered_model", "nsp"),
        "champion_metric": t.get("champion_metric", "val_acc"),
        "register": bool(t.get("register", True)),
    }


def connect(uri: str) -> Any:
    """Point mlflow at ``uri``; a server that does not answer is a clear error (no silent fallback)."""
    import mlflow

    if uri.startswith(("http://", "https://")):
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).read()
        except Exception as exc:
            raise NSPError(
                f"MLflow tracking server {uri} is unreachable ({type(exc).__name__}); start it "
                "(mlflow server --host 127.0.0.1) or set MLFLOW_TRACKING_URI / tracking.uri"
            ) from None
    mlflow.set_tracking_uri(uri)
    return mlflow


def _experiment_id(mlflow: Any, name: str, uri: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri:
        location = (Path.cwd() / "mlartifacts").resolve().as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def git_commit() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
            or "unknown"
        )
    except OSError:
        return "unknown"


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


def _numeric(d: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@contextlib.contextmanager
def tracking_errors(uri: str, what: str) -> Iterator[None]:
    """Turn an MLflow failure (server gone mid-run, store error) into one clear NSPError line."""
    try:
        yield
    except NSPError:
        raise
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise NSPError(
            f"MLflow tracking at {uri} failed while {what} ({type(exc).__name__}: {first}); "
            "bring the server back (or set tracking.enabled: false) and rerun the stage; "
            "training resumes from its last saved epoch"
        ) from None


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
            )


def _parent_run(mlflow: Any, exp_id: str, stage: str, tags: dict[str, Any]) -> str:
    if stage != "teacher" and PARENT_FILE.exists():
        info = json.loads(PARENT_FILE.read_text())
        try:
            if mlflow.get_run(info["run_id"]).info.experiment_id == exp_id:
                return info["run_id"]
        except Exception:
            pass
    run = mlflow.MlflowClient().create_run(
        exp_id,
        run_name="pipeline",
        tags={
            "nsp.kind": "pipeline",
            "data_manifest_sha256": str(tags.get("data_manifest_sha256", "")),
            "git_commit": git_commit(),
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
        parent = _parent_run(mlflow, exp_id, stage, tags)
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


def _alias_for(stage: str, generation: int) -> list[str]:
    if stage in ALIAS_OF_STAGE:
        return [ALIAS_OF_STAGE[stage]]
    if stage.startswith("student@"):
        return [f"gen-{generation}", "latest-student"]
    return []


def register_model(
    mlflow: Any,
    *,
    name: str,
    model: Any,
    run_id: str,
    checkpoint_sha256: str,
    input_example: Any,
    metrics: dict[str, Any],
    stage: str,
    generation: int,
    champion_metric: str,
    arch: str = "",
) -> str:
    """Log + register ``model`` once per checkpoint hash; set aliases and re-elect the champion."""
    import mlflow.pytorch
    import timm
    import torch

    client = mlflow.MlflowClient()
    existing = None
    try:
        for mv in client.search_model_versions(f"name='{name}'"):
            if mv.tags.get("checkpoint_sha256") == checkpoint_sha256:
                existing = mv
                break
    except Exception:
        existing = None
    if existing is None:
        reqs = [f"torch=={torch.__version__.split('+')[0]}", f"timm=={timm.__version__}", "numpy"]
        nsp_dir = str(Path(__file__).resolve().parent)
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            serialization_format="pickle",
            pip_requirements=reqs,
            input_example=input_example,
            code_paths=[nsp_dir],
            registered_model_name=name,
        )
        version = str(info.registered_model_version)
    else:
        version = str(existing.version)
    vtags = {
        "arch": arch,
        "checkpoint_sha256": checkpoint_sha256,
        "stage": stage,
        "generation": str(generation),
        "run_id": run_id,
        **{k: f"{v:.6g}" if isinstance(v, float) else str(v) for k, v in _numeric(metrics).items()},
    }
    for k, v in vtags.items():
        client.set_model_version_tag(name, version, k, v)
    for alias in _alias_for(stage, generation):
        client.set_registered_model_alias(name, alias, version)
    elect_champion(client, name=name, metric=champion_metric)
    return version


def elect_champion(client: Any, *, name: str, metric: str) -> str | None:
    best, best_v = None, None
    for mv in client.search_model_versions(f"name='{name}'"):
        try:
            val = float(mv.tags.get(metric, "nan"))
        except ValueError:
            continue
        if val == val and (best is None or val > best):
            best, best_v = val, mv.version
    if best_v is not None:
        client.set_registered_model_alias(name, "champion", str(best_v))
    return best_v


def _client_for(params: dict[str, Any] | None) -> tuple[Any, Any]:
    cfg = settings(params or {})
    mlflow = connect(cfg["uri"])
    return mlflow, mlflow.MlflowClient()


def list_registry(
    *, params: dict[str, Any] | None = None, name: str | None = None
) -> list[dict[str, Any]]:
    """Rows (model, version, aliases, stage, generation, metrics) for one or all registered models."""
    _, client = _client_for(params)
    models = client.search_registered_models()
    names = [m.name for m in models]
    if name is not None and name not in names:
        raise NSPError(
            f"registered model {name!r} not found; registered models: {', '.join(names) or 'none'}"
        )
    rows = []
    for m in models:
        if name is not None and m.name != name:
            continue
        by_version: dict[str, list[str]] = {}
        for alias, v in (m.aliases or {}).items():
            by_version.setdefault(str(v), []).append(alias)
        for mv in sorted(
            client.search_model_versions(f"name='{m.name}'"), key=lambda v: int(v.version)
        ):
            rows.append(
                {
                    "model": m.name,
                    "version": int(mv.version),
                    "aliases": ",".join(sorted(by_version.get(str(mv.version), []))),
                    "stage": mv.tags.get("stage"),
                    "generation": mv.tags.get("generation"),
                    "val_acc": mv.tags.get("val_acc"),
                    "test_acc": mv.tags.get("test_acc"),
                    "params": mv.tags.get("params"),
                    "run_id": mv.tags.get("run_id"),
                }
            )
    return rows


def resolve_version(client: Any, ref: str) -> Any:
    """``NAME@ALIAS`` or ``NAME/VERSION`` (or ``models:/...``) -> ModelVersion, with clear errors."""
    ref = ref.removeprefix("models:/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
    elif "/" in ref:
        name, alias = ref.rsplit("/", 1)[0], None
    else:
        raise NSPError(f"model reference {ref!r}: use NAME@ALIAS or NAME/VERSION")
    names = [m.name for m in client.search_registered_models()]
    if name not in names:
        raise NSPError(
            f"registered model {name!r} not found; registered models: {', '.join(names) or 'none'}"
        )
    rm = client.get_registered_model(name)
    if alias is not None:
        if alias not in (rm.aliases or {}):
            raise NSPError(
                f"{name}: alias {alias!r} not found; aliases: {', '.join(sorted(rm.aliases or {})) or 'none'}"
            )
        return client.get_model_version_by_alias(name, alias)
    version = ref.rsplit("/", 1)[1]
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
    if not version.isdigit() or int(version) not in versions:
        raise NSPError(f"{name}: version {version!r} not found; versions: {versions}")
    return client.get_model_version(name, version)


def pull_model(
    *, ref: str, out_dir: str | Path, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Download a registered version: ``model.pt`` (an NSP checkpoint), ``config.json``, the MLflow model dir."""
    from nsp.checkpoint import save_checkpoint

    mlflow, client = _client_for(params)
    mv = resolve_version(client, ref)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    uri = f"models:/{mv.name}/{mv.version}"
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=str(out_dir / "mlflow_model")
    )
    model = mlflow.pytorch.load_model(local)
    resolved = client.download_artifacts(mv.tags["run_id"], "resolved_config.json", str(out_dir))
    train_cfg = json.loads(Path(resolved).read_text())["config"]
    num_classes = int(model.net.num_classes)
    in_chans = int(next(p for p in model.parameters() if p.ndim == 4).shape[1])
    metrics = {
        k: float(v) for k, v in mv.tags.items() if k in ("val_acc", "test_acc", "params", "steps")
    }
    save_checkpoint(
        out_dir / "model.pt",
        model=model,
        arch=train_cfg["arch"],
        num_classes=num_classes,
        in_chans=in_chans,
        config=train_cfg,
        metrics=metrics,
        class_names=[],
    )
    info = {
        "model": mv.name,
        "version": int(mv.version),
        "arch": train_cfg["arch"],
        "run_id": mv.tags["run_id"],
        "stage": mv.tags.get("stage"),
        "metrics": metrics,
        "config": train_cfg,
        "checkpoint_sha256": mv.tags.get("checkpoint_sha256"),
        "mlflow_model": str(Path(local).resolve()),
    }
    write_json(out_dir / "config.json", info)
    return info


def teacher_from_registry(*, ref: str, params: dict[str, Any]) -> Any:
    """Load ``models:/NAME@ALIAS`` as a torch module (used when ``teacher.source`` is a registry URI)."""
    mlflow, client = _client_for(params)
    mv = resolve_version(client, ref)
    return mlflow.pytorch.load_model(f"models:/{mv.name}/{mv.version}"), mv
