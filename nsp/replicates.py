"""Replicates: the whole pipeline (teacher included) R times with independent seeds, resumably.

Mechanism: replicate ``k`` of the ``params.yaml`` configuration with hash ``H`` is its own DVC project,
``replicates/H/r<k>/``: a copy of ``dvc.yaml`` and ``nsp/`` and a ``params.yaml`` whose every seed is
offset by ``k * SEED_STRIDE`` (replicate 0 = the plain ``make run`` configuration), reproduced by
``dvc repro``. DVC decides what is up to date, so a killed run resumes where it stopped (finished
stages are skipped, a training stage continues from its last epoch) and a finished replicate, marked by
``done.json`` with the fingerprint of its params, code and ``dvc.yaml``, is not even re-checked. One
replicate runs at a time: R replicates cost R single runs (plus a ``dvc init`` each); ``--only K``
workers run chosen indices side by side, sharing only ``set.json`` (under a file lock).

Every replicate logs to the project's MLflow store: its pipeline run (tags ``nsp.replicate``,
``nsp.config_hash``) is a child of one replicate-set run (``nsp.kind =
replicates``); the registry is left alone (``tracking.register: false`` in replicates).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from nsp import config as C
from nsp.errors import NSPError
from nsp.io import file_lock, sha256_file, write_bytes, write_json

SEED_STRIDE = 1000
DEFAULT_DIR = Path("replicates")
SET_FILE = "set.json"
DONE_FILE = "done.json"
_RUNNING = re.compile(r"Running stage '([^']+)'")


def config_hash(params: dict[str, Any], *, vary_data: bool = False) -> str:
    """12 hex digits naming a configuration: params.yaml without ``tracking``/``replicate``."""
    core = {k: v for k, v in params.items() if k not in ("tracking", "replicate")}
    if vary_data:
        core["__vary_data__"] = True
    blob = json.dumps(core, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def stage_seeds(params: dict[str, Any]) -> dict[str, int]:
    """The seed each stage resolves from ``params`` (what a replicate must change)."""
    from nsp.robustness.stage import sets_config

    seeds = {"prepare": int((params.get("prepare") or {}).get("seed", 0))}
    seeds["teacher"] = C.teacher_config(params).seed
    for g in C.generation_keys(params):
        seeds[f"pseudo_label@{g}"] = C.pseudo_config(params, g).seed
        seeds[f"student@{g}"] = C.student_config(params, g).seed
    seeds["baseline"] = C.baseline_config(params).seed
    if params.get("robustness") is not None:
        sets = sets_config(params)
        seeds["robustness"] = sets.seed
        seeds["robustness.a_reference"] = sets.reference.seed
    return seeds


def _ensure_section(params: dict[str, Any], path: str) -> dict[str, Any] | None:
    """The mapping at dotted ``path``, created below an existing top-level section; else None."""
    parts = path.split(".")
    if not isinstance(params.get(parts[0]), dict):
        return None
    node = params[parts[0]]
    for part in parts[1:]:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    return node


def offset_seeds(params: dict[str, Any], *, offset: int, vary_data: bool = False) -> dict[str, Any]:
    """A copy of ``params`` with every ``seed`` key (any depth) plus ``offset``; ``prepare.seed``
    (the data split) only with ``vary_data``. Seeds left to their defaults are written explicitly."""
    from nsp.robustness.stage import sets_config

    out = copy.deepcopy(params)
    if offset == 0:
        return out
    defaults = {
        "teacher": C.teacher_config(params).seed,
        "student": int((params.get("student") or {}).get("seed", C.TrainConfig.seed)),
        "student.pseudo": C.PseudoConfig.seed,
        "baseline": C.baseline_config(params).seed,
    }
    if params.get("robustness") is not None:
        sets = sets_config(params)
        defaults |= {"robustness": sets.seed, "robustness.a_reference": sets.reference.seed}
    for path, seed in defaults.items():
        sec = _ensure_section(out, path)
        if sec is not None:
            sec.setdefault("seed", seed)

    def walk(node: Any, path: str) -> None:
        for key, value in node.items():
            here = f"{path}.{key}" if path else key
            if key == "seed" and isinstance(value, int) and not isinstance(value, bool):
                if here != "prepare.seed" or vary_data:
                    node[key] = value + offset
            elif isinstance(value, dict) and here not in ("tracking", "replicate"):
                walk(value, here)

    walk(out, "")
    return out


def replicate_params(
    params: dict[str, Any],
    *,
    index: int,
    chash: str,
    parent_run_id: str | None,
    tracking_uri: str,
    vary_data: bool = False,
) -> dict[str, Any]:
    """Replicate ``index``'s params.yaml: seeds offset, registry off, a ``replicate:`` section."""
    out = offset_seeds(params, offset=index * SEED_STRIDE, vary_data=vary_data)
    out["tracking"] = {**(out.get("tracking") or {}), "uri": tracking_uri, "register": False}
    data_dir = (out.get("prepare") or {}).get("data_dir")
    if data_dir and not Path(data_dir).is_absolute():
        out["prepare"]["data_dir"] = str(Path(data_dir).resolve())
    out["replicate"] = {  # no count: adding replicates later leaves finished ones finished
        "index": index,
        "config_hash": chash,
        "parent_run_id": parent_run_id,
        "seed_offset": index * SEED_STRIDE,
    }
    return out


def absolute_tracking_uri(params: dict[str, Any]) -> str:
    """The project's tracking URI with a relative sqlite path made absolute (replicates run elsewhere)."""
    from nsp.tracking import settings

    uri = settings(params)["uri"]
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str(Path(uri[len(prefix) :]).resolve())
    return uri


# ------------------------------------------------------------------------------------ workspaces


def tree_hash(path: Path) -> str:
    """sha256 over the relative names and contents of ``path``'s files (``__pycache__`` skipped)."""
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts:
            h.update(f.relative_to(path).as_posix().encode())
            h.update(sha256_file(f).encode())
    return h.hexdigest()


def sync_tree(src: Path, dst: Path) -> int:
    """Make ``dst`` a copy of ``src`` touching only files that differ (DVC keeps its hashes); returns
    the number of files written or removed."""
    changed = 0
    wanted = set()
    for f in sorted(src.rglob("*")):
        if not f.is_file() or "__pycache__" in f.parts:
            continue
        rel = f.relative_to(src)
        wanted.add(rel)
        target = dst / rel
        if not target.is_file() or target.read_bytes() != f.read_bytes():
            target.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(target, f.read_bytes())
            changed += 1
    if dst.is_dir():
        for f in sorted(dst.rglob("*"), reverse=True):
            if f.is_file() and "__pycache__" not in f.parts and f.relative_to(dst) not in wanted:
                f.unlink()
                changed += 1
    return changed


def _dvc(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    dvc = str(Path(sys.executable).parent / "dvc")
    p = subprocess.run([dvc, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [""]
        raise NSPError(f"{cwd}: `dvc {' '.join(args)}` failed ({tail[0][:200]}); fix and rerun")


def prepare_workspace(
    *, root: Path, ws: Path, params_r: dict[str, Any], env: dict[str, str]
) -> str:
    """Create/refresh replicate workspace ``ws``; returns its fingerprint (params, code, dvc.yaml)."""
    ws.mkdir(parents=True, exist_ok=True)
    if not (ws / ".dvc").is_dir():
        _dvc(["init", "--no-scm", "-q"], ws, env)
        _dvc(["config", "core.analytics", "false"], ws, env)
        _dvc(["config", "cache.type", "reflink,hardlink,copy"], ws, env)  # no second copy of sets
    sync_tree(root / "nsp", ws / "nsp")
    for name in ("dvc.yaml",):
        src = (root / name).read_bytes()
        if not (ws / name).is_file() or (ws / name).read_bytes() != src:
            write_bytes(ws / name, src)
    text = yaml.safe_dump(params_r, sort_keys=False)
    if not (ws / "params.yaml").is_file() or (ws / "params.yaml").read_text() != text:
        write_bytes(ws / "params.yaml", text.encode())
    fp = hashlib.sha256()
    for part in (text.encode(), tree_hash(ws / "nsp").encode(), (ws / "dvc.yaml").read_bytes()):
        fp.update(part)
    return fp.hexdigest()


def is_done(ws: Path, fingerprint: str) -> bool:
    f = ws / DONE_FILE
    return f.is_file() and json.loads(f.read_text()).get("fingerprint") == fingerprint


# ---------------------------------------------------------------------------------------- running


def set_dir(params: dict[str, Any], *, base: Path = DEFAULT_DIR, vary_data: bool = False) -> Path:
    """``<base>/<config hash>``: where the replicates of this configuration live."""
    return base / config_hash(params, vary_data=vary_data)


def _run_dvc_repro(
    *, ws: Path, env: dict[str, str], label: str, echo: Callable[[str], None]
) -> dict[str, Any]:
    """``dvc repro`` in ``ws``, its output appended to ``ws/repro.log``, one progress line per stage."""
    dvc = str(Path(sys.executable).parent / "dvc")
    t0, ran = time.perf_counter(), []
    with open(ws / "repro.log", "a") as log:
        log.write(f"\n=== dvc repro {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        proc = subprocess.Popen(
            [dvc, "repro"], cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1,
        )  # fmt: skip
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            m = _RUNNING.search(line)
            if m:
                ran.append(m.group(1))
                echo(f"{label} stage {m.group(1)} (+{time.perf_counter() - t0:.0f} s)")
        code = proc.wait()
    if code != 0:
        where = f"stage {ran[-1]}" if ran else "before any stage"
        raise NSPError(
            f"{label}: `dvc repro` in {ws} failed in {where} (exit {code}); see {ws / 'repro.log'}, "
            "fix the cause and rerun the same command to resume"
        )
    return {"seconds": time.perf_counter() - t0, "stages_run": ran}


def _update_set(sdir: Path, update: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Re-read ``set.json`` under the lock, apply ``update`` and write it back (workers share it)."""
    sdir.mkdir(parents=True, exist_ok=True)
    with file_lock(sdir / ".set.lock"):
        f = sdir / SET_FILE
        record = json.loads(f.read_text()) if f.is_file() else {}
        update(record)
        write_json(f, record)
    return record


def _indices(count: int, only: Sequence[int] | None) -> list[int]:
    if only is None:
        return list(range(count))
    bad = [k for k in only if not 0 <= k < count]
    if bad:
        raise NSPError(f"--only {bad[0]}: replicate indices run from 0 to --r - 1 = {count - 1}")
    return sorted(set(only))


def _run_one(
    params: dict[str, Any],
    *,
    index: int,
    count: int,
    sdir: Path,
    root: Path,
    parent: str | None,
    uri: str,
    env: dict[str, str],
    vary_data: bool,
    echo: Callable[[str], None],
) -> None:
    """Replicate ``index``: skipped when done, else ``dvc repro`` then ``done.json`` and its
    ``set.json`` entry."""
    k = index
    label = f"[replicates] r{k} ({k + 1}/{count})"
    ws = sdir / f"r{k}"
    params_r = replicate_params(
        params, index=k, chash=sdir.name, parent_run_id=parent, tracking_uri=uri,
        vary_data=vary_data,
    )  # fmt: skip
    wenv = {**env, "PYTHONPATH": str(ws)}
    fp = prepare_workspace(root=root, ws=ws, params_r=params_r, env=wenv)
    if is_done(ws, fp):
        echo(f"{label} done earlier: skipped")
        return
    echo(f"{label} running `dvc repro` in {ws}")
    res = _run_dvc_repro(ws=ws, env=wenv, label=label, echo=echo)
    run_file = ws / "outputs" / "pipeline_run.json"
    run_id = json.loads(run_file.read_text()).get("run_id") if run_file.is_file() else None
    done = {"fingerprint": fp, "pipeline_run_id": run_id, "seeds": stage_seeds(params_r), **res}
    write_json(ws / DONE_FILE, done)
    entry = {"seconds": res["seconds"], "pipeline_run_id": run_id}
    _update_set(sdir, lambda r: r["replicates"].update({str(k): entry}))
    echo(f"{label} finished in {res['seconds']:.0f} s ({len(res['stages_run'])} stage(s) run)")


def run_replicates(
    params: dict[str, Any],
    *,
    count: int = 3,
    only: Sequence[int] | None = None,
    root: Path | None = None,
    base: Path = DEFAULT_DIR,
    vary_data: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) replicates 0..count-1 of ``params`` one after another, or just the indices in
    ``only`` (a parallel worker: each replicate is its own DVC project, so workers on different
    indices share nothing but ``set.json``, updated under a lock); returns the set record."""
    from nsp import tracking

    if count < 1:
        raise NSPError(f"--r must be >= 1 (got {count})")
    indices = _indices(count, only)
    root = (root or Path.cwd()).resolve()
    for need in ("dvc.yaml", "nsp"):
        if not (root / need).exists():
            raise NSPError(f"{root / need} not found; run `nsp replicates` from the project root")
    stage_seeds(params)  # resolves every stage config: a bad params.yaml fails before any work
    chash = config_hash(params, vary_data=vary_data)
    sdir = (root / base / chash).resolve()

    def open_set(record: dict[str, Any]) -> None:
        count_all = max(count, int(record.get("count", 0)))
        parent = tracking.replicate_set_run(
            params, config_hash=chash, count=count_all, run_id=record.get("parent_run_id")
        )
        record.update(
            config_hash=chash, count=count_all, seed_stride=SEED_STRIDE, vary_data=vary_data,
            parent_run_id=parent, params=params, replicates=record.get("replicates", {}),
        )  # fmt: skip

    record = _update_set(sdir, open_set)
    parent, count_all = record["parent_run_id"], record["count"]
    uri = absolute_tracking_uri(params)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "MLFLOW_TRACKING_URI": uri}
    which = f"{count}" if only is None else f"{len(indices)} of {count} (--only)"
    echo(f"[replicates] config {chash}: {which} replicate(s) in {sdir} (MLflow parent {parent})")
    status = "FAILED"
    try:
        for k in indices:
            _run_one(
                params, index=k, count=count, sdir=sdir, root=root, parent=parent, uri=uri,
                env=env, vary_data=vary_data, echo=echo,
            )  # fmt: skip
        status = "FINISHED"
    finally:
        left = [k for k in range(count_all) if not (sdir / f"r{k}" / DONE_FILE).is_file()]
        if status != "FINISHED" or (count >= count_all and not left):
            tracking.end_replicate_set_run(params, run_id=parent, status=status)
    if only is None:
        echo(f"[replicates] {count} replicate(s) complete; `nsp report --replicates` compares them")
    else:
        done = " ".join(map(str, indices))
        echo(f"[replicates] --only {done} complete; not done yet: {left or 'none'}")
    return json.loads((sdir / SET_FILE).read_text())
