"""Optuna storage, sampler and pruner from a spec; creating / resuming a study safely.

* ``sqlite:///...`` / ``postgresql://...``: :class:`optuna.storages.RDBStorage` with heartbeats.
* ``journal:<path>``: a JournalFileBackend file. Optuna's journal storage has no heartbeat, so
  :class:`HeartbeatJournalStorage` adds one (a ``nsp_heartbeat`` system attr per trial).

A killed worker's trial stops beating; after ``grace_period`` the next worker to start a trial marks
it FAIL and :class:`~optuna.storages.RetryHeartbeatStaleTrialCallback` re-queues its parameters.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from nsp.errors import NSPError
from nsp.io import sqlite_file_lock
from nsp.study.spec import StudySpec

optuna.logging.set_verbosity(optuna.logging.WARNING)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Optuna's ExperimentalWarning (heartbeats, retry callback, metric names)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


HEARTBEAT_ATTR = "nsp_heartbeat"
StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """JournalStorage whose RUNNING trials beat (system attr) so dead workers' trials go stale."""

    def __init__(
        self,
        backend: Any,
        *,
        heartbeat_interval: int,
        grace_period: int,
        stale_callback: StaleCallback | None,
    ) -> None:
        super().__init__(backend)
        self._hb_interval = heartbeat_interval
        self._hb_grace = grace_period
        self._hb_callback = stale_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
            pass  # the trial finished (or was failed as stale) meanwhile

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            last = t.system_attrs.get(HEARTBEAT_ATTR)
            if last is None and t.datetime_start is not None:
                last = t.datetime_start.timestamp()
            if last is not None and now - float(last) > self._hb_grace:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._hb_interval

    def get_heartbeat_stale_trial_callback(self) -> StaleCallback | None:
        return self._hb_callback


def _sqlite_parent(url: str) -> None:
    if url.startswith("sqlite:///") and not url.startswith("sqlite:///:memory:"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)


def make_storage(
    url: str,
    *,
    heartbeat: dict[str, Any] | None = None,
    stale_callback: StaleCallback | None = None,
) -> BaseStorage:
    """Storage for ``url``; with ``heartbeat`` ({interval, grace_period}) dead trials go stale."""
    hb = heartbeat or {}
    interval = hb.get("interval") if heartbeat else None
    grace = hb.get("grace_period") if heartbeat else None
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url[len("journal:") :])
        if not str(path):
            raise NSPError(f"storage {url!r}: journal needs a file path (journal:studies/x.log)")
        path.parent.mkdir(parents=True, exist_ok=True)
        # Absolute: Optuna's lock is a symlink to this path, and a relative target resolves against
        # the link's folder, so a lock left by a killed worker could never be stat-ed (and broken
        # after its grace period): the other workers would spin on it forever.
        backend = JournalFileBackend(str(path.resolve()))
        if interval is None:
            return JournalStorage(backend)
        return HeartbeatJournalStorage(
            backend,
            heartbeat_interval=int(interval),
            grace_period=int(grace),
            stale_callback=stale_callback,
        )
    _sqlite_parent(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:"):
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    for attempt in range(3):
        try:
            with sqlite_file_lock(url), quiet():
                return RDBStorage(
                    url,
                    heartbeat_interval=None if interval is None else int(interval),
                    grace_period=None if grace is None else int(grace),
                    heartbeat_stale_trial_callback=stale_callback if interval is not None else None,
                    **kwargs,
                )
        except (ImportError, ModuleNotFoundError) as exc:
            raise NSPError(
                f"storage {url!r}: database driver missing ({exc.name}); pip install it "
                "(e.g. psycopg2-binary for postgresql://)"
            ) from None
        except Exception as exc:  # sqlalchemy.exc.ArgumentError / OperationalError
            if "already exists" in str(exc) and attempt < 2:
                time.sleep(1.0)  # another process created the schema at the same moment
                continue
            raise NSPError(
                f"storage {url!r} cannot be opened ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0]}); fix storage: in the study spec"
            ) from None
    raise AssertionError("unreachable")


def make_sampler(
    spec: StudySpec, worker_index: int = 0, n_existing: int = 0
) -> optuna.samplers.BaseSampler:
    """Seeded TPE. The seed mixes in the worker index and the number of trials already in the
    study, so parallel workers and resumed runs do not replay the same random proposals."""
    s = spec.sampler
    seed = (int(s.get("seed", 0)) + 1000 * int(worker_index) + 7919 * int(n_existing)) % 2**31
    kwargs: dict[str, Any] = {"seed": seed}
    if s.get("n_startup_trials") is not None:
        kwargs["n_startup_trials"] = int(s["n_startup_trials"])
    if s.get("multivariate"):
        kwargs["multivariate"] = True
    return optuna.samplers.TPESampler(**kwargs)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    if spec.pruner is None:
        return optuna.pruners.NopPruner()
    p = spec.pruner
    return optuna.pruners.MedianPruner(
        n_startup_trials=int(p.get("n_startup_trials", 5)),
        n_warmup_steps=int(p.get("n_warmup_steps", 0)),
        interval_steps=int(p.get("interval_steps", 1)),
    )


def _check_resume(study: optuna.Study, spec: StudySpec) -> None:
    have = [d.name.lower() for d in study.directions]
    names = study.user_attrs.get("nsp_objectives")
    if have != spec.directions or (names is not None and list(names) != spec.metric_names):
        got = ", ".join(f"{d} {m}" for d, m in zip(have, names or ["?"] * len(have), strict=False))
        raise NSPError(
            f"{spec.where}: study {spec.name!r} in {spec.storage} was created with objectives "
            f"[{got}] but the spec asks for [{', '.join(f'{d} {m}' for m, d in spec.objectives)}]; "
            "resume with the original objectives or give the study a new name"
        )


def open_study(
    spec: StudySpec,
    *,
    params: dict[str, Any],
    worker_index: int = 0,
    heartbeat: bool = True,
    stale_callback: StaleCallback | None = None,
    create: bool = True,
) -> tuple[optuna.Study, bool]:
    """Create or resume ``spec.name``; returns (study, created_by_this_call).

    Only the creating call enqueues the params.yaml baseline (creation is atomic in the storage),
    so many workers / machines / reruns enqueue it once; a rerun re-enqueues it only if it is missing.
    """
    storage = make_storage(
        spec.storage,
        heartbeat=spec.heartbeat if heartbeat else None,
        stale_callback=stale_callback,
    )
    sampler, pruner = make_sampler(spec, worker_index), make_pruner(spec)
    created = False
    if create:
        try:
            study = optuna.create_study(
                storage=storage,
                study_name=spec.name,
                directions=spec.directions,
                sampler=sampler,
                pruner=pruner,
            )
            created = True
        except optuna.exceptions.DuplicatedStudyError:
            study = optuna.load_study(
                study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner
            )
    else:
        try:
            study = optuna.load_study(
                study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner
            )
        except KeyError:
            raise NSPError(
                f"study {spec.name!r} not found in {spec.storage}; run `nsp study run` first"
            ) from None
    if created:
        study.set_user_attr("nsp_objectives", spec.metric_names)
        study.set_user_attr("nsp_keys", spec.key_map())
        study.set_user_attr("nsp_generation", spec.generation)
        with quiet():
            study.set_metric_names(spec.metric_names)
    else:
        _check_resume(study, spec)
    if create and (created or not study.user_attrs.get("nsp_baseline_enqueued")):
        study.enqueue_trial(spec.baseline(params), skip_if_exists=True)
        study.set_user_attr("nsp_baseline_enqueued", True)
    study.sampler = make_sampler(spec, worker_index, len(study.get_trials(deepcopy=False)))
    return study, created


def load_study_readonly(spec_storage: str, name: str) -> optuna.Study:
    """Open an existing study for reading (no heartbeat, no sampler state)."""
    storage = make_storage(spec_storage)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise NSPError(
            f"study {name!r} not found in {spec_storage}; check the name or pass --spec"
        ) from None


def trial_time(t: FrozenTrial) -> float | None:
    if t.datetime_start is None or t.datetime_complete is None:
        return None
    return (t.datetime_complete - t.datetime_start).total_seconds()
