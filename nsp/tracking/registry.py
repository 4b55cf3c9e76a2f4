"""The MLflow model registry: register a stage's model, aliases and the champion, list / pull / load versions.

Every registered version carries, beside the MLflow model, ``extra_files/model.safetensors`` and
``extra_files/nsp_model.json`` (:func:`nsp.checkpoint.save_safetensors`). NSP itself (``nsp registry
pull``, a ``models:/`` teacher or study reference) only ever rebuilds the model from those two files,
so loading a version from a shared registry runs no code from it. The MLflow model itself is still
logged (pickled, ``mlflow.pytorch``) for users who choose to ``mlflow.pytorch.load_model`` it: that
unpickles the artifact, so do it only for a registry you trust.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from nsp.errors import NSPError
from nsp.io import write_json
from nsp.tracking.store import _numeric, connect, settings

ALIAS_OF_STAGE = {"teacher": "teacher", "baseline": "baseline"}


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
    config: dict[str, Any] | None = None,
    class_names: list[str] | None = None,
) -> str:
    """Log + register ``model`` once per checkpoint hash; set aliases and re-elect the champion.

    The version holds the pickled MLflow model and, as extra files, the safetensors weights and
    resolved config NSP rebuilds it from (``config``: the stage's resolved training config)."""
    import mlflow.pytorch
    import timm
    import torch

    from nsp.checkpoint import save_safetensors

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
        cfg = dict(config or {"arch": arch})
        with tempfile.TemporaryDirectory(prefix="nsp-register-") as tmp:
            extra = save_safetensors(
                tmp,
                model=model,
                arch=cfg.get("arch") or arch,
                num_classes=int(model.net.num_classes),
                in_chans=_in_chans(model),
                config=cfg,
                class_names=list(class_names or []),
            )
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                serialization_format="pickle",
                pip_requirements=reqs,
                input_example=input_example,
                code_paths=[nsp_dir],
                registered_model_name=name,
                extra_files=[str(f) for f in extra],
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


def _in_chans(model: Any) -> int:
    return int(next(p for p in model.parameters() if p.ndim == 4).shape[1])


def load_version(mlflow: Any, mv: Any, *, dst: str | Path | None = None) -> tuple[Any, dict]:
    """Rebuild a registered version's model from its safetensors weights + resolved config.

    Downloads the version's files (into ``dst``, else a temp dir) and never unpickles them; a
    version without the safetensors files, or with altered ones, is a one-line NSPError."""
    from nsp.checkpoint import load_safetensors

    uri = f"models:/{mv.name}/{mv.version}"

    def _load(where: str) -> tuple[Any, dict]:
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=where)
        except Exception as exc:
            raise NSPError(
                f"{uri}: cannot download the registered files ({type(exc).__name__})"
            ) from None
        model, meta = load_safetensors(Path(local) / "extra_files")
        return model, {**meta, "local": str(Path(local).resolve())}

    if dst is not None:
        return _load(str(dst))
    with tempfile.TemporaryDirectory(prefix="nsp-pull-") as tmp:
        return _load(tmp)


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
    """Download a registered version: ``model.pt`` (an NSP checkpoint rebuilt from the version's
    safetensors weights and resolved config, nothing unpickled), ``config.json``, the MLflow model dir."""
    from nsp.checkpoint import save_checkpoint

    mlflow, client = _client_for(params)
    mv = resolve_version(client, ref)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, meta = load_version(mlflow, mv, dst=out_dir / "mlflow_model")
    train_cfg = meta["config"]
    num_classes, in_chans = meta["num_classes"], meta["in_chans"]
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
        class_names=meta["class_names"],
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
        "mlflow_model": meta["local"],
    }
    write_json(out_dir / "config.json", info)
    return info


def teacher_from_registry(*, ref: str, params: dict[str, Any]) -> Any:
    """``models:/NAME@ALIAS`` rebuilt as a torch module from its safetensors weights (used when
    ``teacher.source`` is a registry URI); returns ``(model, model_version)``."""
    mlflow, client = _client_for(params)
    mv = resolve_version(client, ref)
    model, _meta = load_version(mlflow, mv)
    return model, mv
