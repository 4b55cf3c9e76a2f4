"""Where the MLflow tracking store is and how to reach it, plus helpers shared by every tracking module.

Tracking URI: ``MLFLOW_TRACKING_URI`` > ``tracking.uri`` in params.yaml > ``sqlite:///<cwd>/mlflow.db``
(artifacts in ``<cwd>/mlartifacts``). mlflow itself is imported lazily, inside the functions.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nsp.errors import NSPError

# set before mlflow is first imported (lazily, below): every nsp.tracking module imports this one
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


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
