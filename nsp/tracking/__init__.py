"""The only package that talks to MLflow: pipeline/stage runs, lineage tags, the model registry.

* :mod:`nsp.tracking.store`: where the tracking store is (settings, connect) and shared helpers;
* :mod:`nsp.tracking.runs`: the pipeline run and one nested run per stage;
* :mod:`nsp.tracking.registry`: model registration, aliases, the champion, list / pull / load;
* :mod:`nsp.tracking.studies`: the MLflow side of Optuna studies (import it directly).

The engine never imports mlflow; callers use the names re-exported here (``tracking.stage_run``).
"""

from nsp.tracking.registry import (
    ALIAS_OF_STAGE,
    elect_champion,
    list_registry,
    pull_model,
    register_model,
    resolve_version,
    teacher_from_registry,
)
from nsp.tracking.runs import (
    PARENT_FILE,
    end_replicate_set_run,
    null_run,
    replicate_set_run,
    stage_run,
)
from nsp.tracking.store import connect, git_commit, settings, tracking_errors

__all__ = [
    "ALIAS_OF_STAGE",
    "PARENT_FILE",
    "connect",
    "elect_champion",
    "end_replicate_set_run",
    "git_commit",
    "list_registry",
    "null_run",
    "pull_model",
    "register_model",
    "replicate_set_run",
    "resolve_version",
    "settings",
    "stage_run",
    "teacher_from_registry",
    "tracking_errors",
]
