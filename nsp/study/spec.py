"""Study specs (``studies/*.yaml``): parsing, validation against params.yaml, and the key mapping.

Every search-space entry maps a short Optuna parameter name to a params.yaml key path (e.g.
``ra_magnitude -> student.noise.ra_magnitude``). The same mapping builds each trial's params and
writes a chosen trial back into params.yaml (``nsp study apply``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nsp import config as C
from nsp.errors import NSPError

METRICS = {"val_acc": "maximize", "corruption_error": "minimize"}
DIRECTIONS = ("maximize", "minimize")
SPEC_KEYS = {
    "name",
    "description",
    "storage",
    "sampler",
    "pruner",
    "objectives",
    "n_trials",
    "timeout",
    "heartbeat",
    "generation",
    "teacher",
    "budget",
    "robustness",
    "search_space",
    "repeats",
}
PARAM_KEYS = {"key", "type", "low", "high", "step", "log", "choices", "when"}
PARAM_TYPES = ("int", "float", "categorical", "bool")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(C.TrainConfig)} - {"name", "noise"}
_NOISE_FIELDS = {f.name for f in dataclasses.fields(C.NoiseConfig)}
_PSEUDO_FIELDS = {f.name for f in dataclasses.fields(C.PseudoConfig)}


@dataclass
class SearchParam:
    """One search-space dimension: Optuna name, params.yaml key path and distribution."""

    name: str
    key: str
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[Any] | None = None
    when: dict[str, Any] = field(default_factory=dict)

    def active(self, values: dict[str, Any]) -> bool:
        """Whether this dimension applies given the values sampled so far (its ``when`` holds)."""
        return all(values.get(k) == v for k, v in self.when.items())

    def contains(self, value: Any) -> bool:
        if self.type in ("categorical", "bool"):
            return value in (self.choices or [])
        return self.low <= value <= self.high  # type: ignore[operator]

    def coerce(self, value: Any) -> Any:
        if self.type == "int":
            return int(value)
        if self.type == "float":
            return float(value)
        return value


@dataclass
class Budget:
    """Per-trial budget: epochs, total optimizer-step cap, unlabeled subset size (None = all)."""

    epochs: int | None = None
    max_steps: int | None = None
    unlabeled_subset: int | None = None
    seed: int = 0


@dataclass
class Robustness:
    """The cheap -C proxy behind ``corruption_error``: a fixed val subset x corruptions x severity."""

    images: int = 200
    corruptions: list[str] = field(
        default_factory=lambda: ["gaussian_noise", "defocus_blur", "contrast", "jpeg_compression"]
    )
    severity: int = 3
    seed: int = 0


@dataclass
class StudySpec:
    """A parsed, validated ``studies/<name>.yaml``."""

    name: str
    path: Path | None
    storage: str
    objectives: list[tuple[str, str]]  # (metric, direction)
    search_space: list[SearchParam]
    teacher: str
    generation: str = "g1"
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe", "seed": 0})
    pruner: dict[str, Any] | None = None
    n_trials: int = 10
    timeout: float | None = None
    heartbeat: dict[str, Any] = field(
        default_factory=lambda: {"interval": 10, "grace_period": 60, "max_retry": 2}
    )
    budget: Budget = field(default_factory=Budget)
    robustness: Robustness = field(default_factory=Robustness)
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)
    # each trial trains `repeats` students (seeds + j * SEED_STRIDE); objective = their mean
    repeats: int = 1

    @property
    def directions(self) -> list[str]:
        return [d for _, d in self.objectives]

    @property
    def metric_names(self) -> list[str]:
        return [m for m, _ in self.objectives]

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    def key_map(self) -> dict[str, str]:
        return {p.name: p.key for p in self.search_space}

    def sample(self, trial: Any) -> dict[str, Any]:
        """Draw this trial's values (in declaration order, skipping inactive conditional dims)."""
        values: dict[str, Any] = {}
        for p in self.search_space:
            if not p.active(values):
                continue
            if p.type == "int":
                step = int(p.step or 1)
                values[p.name] = trial.suggest_int(
                    p.name, int(p.low), int(p.high), step=step, log=p.log
                )
            elif p.type == "float":
                values[p.name] = trial.suggest_float(
                    p.name, float(p.low), float(p.high), step=p.step, log=p.log
                )
            else:
                values[p.name] = trial.suggest_categorical(p.name, p.choices)
        return values

    def apply(self, params: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        """A deep copy of ``params`` with each sampled value written at its key path."""
        out = copy.deepcopy(params)
        keys = self.key_map()
        for name, value in values.items():
            set_path(out, keys[name], value)
        return out

    def baseline(self, params: dict[str, Any]) -> dict[str, Any]:
        """The params.yaml values of the search-space keys (the first, enqueued trial)."""
        values: dict[str, Any] = {}
        for p in self.search_space:
            if not p.active(values):
                continue
            value = p.coerce(effective_value(params, p.key, self.generation))
            if not p.contains(value):
                where = "choices " + str(p.choices) if p.choices else f"[{p.low}, {p.high}]"
                raise NSPError(
                    f"{self.where}: search_space.{p.name}: the params.yaml value {p.key}={value!r} "
                    f"lies outside {where}; widen the range so the baseline can be enqueued"
                )
            values[p.name] = value
        return values

    @property
    def where(self) -> str:
        return str(self.path) if self.path else f"study {self.name}"


# ------------------------------------------------------------------------------------ key paths


def get_path(params: dict[str, Any], key: str) -> Any:
    """Value at dotted ``key`` (KeyError if any part is missing)."""
    node: Any = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def set_path(params: dict[str, Any], key: str, value: Any) -> None:
    """Write ``value`` at dotted ``key``, creating missing intermediate mappings."""
    parts = key.split(".")
    node = params
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def effective_value(params: dict[str, Any], key: str, gen: str) -> Any:
    """The value a key path has for generation ``gen`` (generation overrides inherit from student)."""
    try:
        return get_path(params, key)
    except KeyError:
        pass
    parts = key.split(".")
    if parts[0] == "generations" and len(parts) >= 3:
        rest = parts[2:]
        if rest[0] == "pseudo":
            return getattr(C.pseudo_config(params, parts[1]), rest[-1])
        cfg = C.student_config(params, parts[1])
        return getattr(cfg.noise if rest[-1] in _NOISE_FIELDS else cfg, rest[-1])
    raise KeyError(key)


def _key_error(spec_where: str, name: str, key: str, gen: str, why: str) -> NSPError:
    return NSPError(
        f"{spec_where}: search_space.{name}: key {key!r} {why}; use a params.yaml path under "
        f"student. or generations.{gen}. (e.g. student.noise.ra_magnitude)"
    )


def check_key(params: dict[str, Any], *, key: str, name: str, gen: str, where: str) -> None:
    """A key must exist in params.yaml (or be a valid generation override) and affect ``gen``."""
    parts = key.split(".")
    if parts[0] == "student":
        rel = parts[1:]
    elif parts[0] == "generations" and len(parts) >= 3:
        if parts[1] != gen:
            raise _key_error(where, name, key, gen, f"belongs to another generation than {gen}")
        rel = parts[2:]
    else:
        raise _key_error(where, name, key, gen, "does not affect the trial's student")
    if rel == ["arch"] or (len(rel) == 1 and rel[0] in _TRAIN_FIELDS | _NOISE_FIELDS):
        ok = True
    elif len(rel) == 2 and rel[0] == "noise":
        ok = rel[1] in _NOISE_FIELDS
    elif len(rel) == 2 and rel[0] == "pseudo":
        ok = rel[1] in _PSEUDO_FIELDS
    else:
        ok = False
    if not ok:
        raise _key_error(where, name, key, gen, "is not a known student/noise/pseudo parameter")
    if parts[0] == "student":
        try:
            get_path(params, key)
        except KeyError:
            raise _key_error(where, name, key, gen, "is not in params.yaml") from None


# -------------------------------------------------------------------------------------- parsing


def _num(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise NSPError(f"{where} must be a finite number (got {value!r}); fix the study spec")
    return value


def _parse_param(name: str, raw: Any, where: str, earlier: set[str]) -> SearchParam:
    w = f"{where}: search_space.{name}"
    if not _NAME_RE.match(str(name)):
        raise NSPError(f"{w}: invalid name; use letters, digits, '_', '-' or '.'")
    if not isinstance(raw, dict):
        raise NSPError(f"{w} must be a mapping with key/type/low/high or choices")
    unknown = set(raw) - PARAM_KEYS
    if unknown:
        raise NSPError(f"{w}: unknown field(s) {sorted(unknown)}; valid: {sorted(PARAM_KEYS)}")
    key = raw.get("key", name if "." in str(name) else None)
    if not isinstance(key, str) or not key:
        raise NSPError(f"{w}: missing key (the params.yaml path, e.g. student.noise.dropout)")
    ptype = raw.get("type")
    if ptype is None:
        ptype = "categorical" if "choices" in raw else None
    if ptype not in PARAM_TYPES:
        raise NSPError(f"{w}: type {ptype!r} unknown; use one of {', '.join(PARAM_TYPES)}")
    when = raw.get("when") or {}
    if not isinstance(when, dict) or any(k not in earlier for k in when):
        raise NSPError(
            f"{w}: when must map names of earlier search_space entries to values (got {when!r})"
        )
    p = SearchParam(name=name, key=key, type=ptype, when=dict(when))
    if ptype == "bool":
        p.choices = [True, False]
        return p
    if ptype == "categorical":
        choices = raw.get("choices")
        if (
            not isinstance(choices, list)
            or not choices
            or len(set(map(repr, choices))) != len(choices)
        ):
            raise NSPError(f"{w}: choices must be a non-empty list of distinct values")
        if any(not isinstance(c, (str, int, float, bool)) for c in choices):
            raise NSPError(f"{w}: choices must be strings, numbers or booleans")
        p.choices = list(choices)
        return p
    for k in ("low", "high"):
        if k not in raw:
            raise NSPError(f"{w}: missing {k} (a {ptype} range needs low and high)")
    p.low, p.high = _num(raw["low"], f"{w}.low"), _num(raw["high"], f"{w}.high")
    p.log = bool(raw.get("log", False))
    p.step = None if raw.get("step") is None else _num(raw["step"], f"{w}.step")
    if not p.low < p.high:
        raise NSPError(f"{w}: bad range low={p.low} >= high={p.high}; low must be below high")
    if p.log and p.low <= 0:
        raise NSPError(f"{w}: bad range: log=true needs low > 0 (got {p.low})")
    if p.step is not None and (p.step <= 0 or p.log):
        raise NSPError(f"{w}: step must be > 0 and cannot be combined with log=true")
    if ptype == "int" and any(
        v is not None and float(v) != int(v) for v in (p.low, p.high, p.step)
    ):
        raise NSPError(f"{w}: an int range needs integer low/high/step")
    return p


def _parse_objectives(raw: Any, where: str) -> list[tuple[str, str]]:
    if raw is None:
        raw = ["maximize val_acc"]
    if isinstance(raw, (str, dict)):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise NSPError(f"{where}: objectives must be a list like ['maximize val_acc']")
    out: list[tuple[str, str]] = []
    for i, item in enumerate(raw):
        w = f"{where}: objectives[{i}]"
        if isinstance(item, str) and len(item.split()) == 2:
            direction, metric = item.split()
        elif isinstance(item, dict) and set(item) <= {"metric", "direction"}:
            direction, metric = item.get("direction"), item.get("metric")
        else:
            raise NSPError(f"{w}: write 'maximize val_acc' or {{metric: ..., direction: ...}}")
        if direction not in DIRECTIONS:
            raise NSPError(f"{w}: unknown direction {direction!r}; use maximize or minimize")
        if metric not in METRICS:
            raise NSPError(f"{w}: unknown metric {metric!r}; use one of {', '.join(METRICS)}")
        if any(m == metric for m, _ in out):
            raise NSPError(f"{w}: metric {metric} listed twice")
        out.append((metric, direction))
    return out


def _int_field(d: dict[str, Any], key: str, where: str, *, minimum: int) -> int | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise NSPError(f"{where}.{key} must be an integer >= {minimum} (got {v!r})")
    return v


def parse_spec(raw: dict[str, Any], *, path: Path | None = None) -> StudySpec:
    """Validate a spec mapping (structure only; see :func:`check_against_params`)."""
    where = str(path) if path else "study spec"
    if not isinstance(raw, dict):
        raise NSPError(f"{where}: expected a mapping at top level")
    unknown = set(raw) - SPEC_KEYS
    if unknown:
        raise NSPError(f"{where}: unknown key(s) {sorted(unknown)}; valid: {sorted(SPEC_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_-]*$", name):
        raise NSPError(f"{where}: name must be set (letters, digits, '_' or '-')")
    storage = raw.get("storage") or f"sqlite:///studies/{name}.db"
    if not isinstance(storage, str) or not (storage.startswith("journal:") or "://" in storage):
        raise NSPError(
            f"{where}: storage {storage!r} must be an SQLAlchemy URL (sqlite:///..., "
            "postgresql://...) or journal:<path>"
        )
    objectives = _parse_objectives(raw.get("objectives"), where)
    sampler = dict(raw.get("sampler") or {"type": "tpe"})
    if sampler.get("type", "tpe") != "tpe" or set(sampler) - {
        "type",
        "seed",
        "n_startup_trials",
        "multivariate",
    }:
        raise NSPError(
            f"{where}: sampler must be {{type: tpe, seed: S, n_startup_trials: N, multivariate: B}}"
        )
    sampler.setdefault("type", "tpe")
    sampler.setdefault("seed", 0)
    _int_field(sampler, "seed", f"{where}: sampler", minimum=0)
    _int_field(sampler, "n_startup_trials", f"{where}: sampler", minimum=0)
    pruner_raw = raw.get("pruner")
    pruner: dict[str, Any] | None = None
    if pruner_raw not in (None, "none", False):
        pruner = {"type": pruner_raw} if isinstance(pruner_raw, str) else dict(pruner_raw)
        if pruner.get("type") != "median" or set(pruner) - {
            "type",
            "n_startup_trials",
            "n_warmup_steps",
            "interval_steps",
        }:
            raise NSPError(
                f"{where}: pruner must be none or {{type: median, n_startup_trials, n_warmup_steps}}"
            )
        for k in ("n_startup_trials", "n_warmup_steps", "interval_steps"):
            _int_field(pruner, k, f"{where}: pruner", minimum=0 if k != "interval_steps" else 1)
        if len(objectives) > 1:
            raise NSPError(
                f"{where}: pruner: multi-objective studies cannot prune (Optuna reports one value "
                "per step); set pruner: none"
            )
    n_trials = _int_field(raw, "n_trials", where, minimum=1) or 10
    timeout = raw.get("timeout")
    if timeout is not None and (_num(timeout, f"{where}: timeout") <= 0):
        raise NSPError(f"{where}: timeout must be > 0 seconds (or null)")
    hb = {"interval": 10, "grace_period": None, "max_retry": 2, **(raw.get("heartbeat") or {})}
    if set(hb) - {"interval", "grace_period", "max_retry"}:
        raise NSPError(f"{where}: heartbeat takes interval, grace_period and max_retry")
    _int_field(hb, "interval", f"{where}: heartbeat", minimum=1)
    _int_field(hb, "grace_period", f"{where}: heartbeat", minimum=1)
    _int_field(hb, "max_retry", f"{where}: heartbeat", minimum=0)
    if hb["grace_period"] is None:
        hb["grace_period"] = 2 * hb["interval"]
    if hb["grace_period"] <= hb["interval"]:
        raise NSPError(f"{where}: heartbeat.grace_period must exceed heartbeat.interval")
    braw = dict(raw.get("budget") or {})
    if set(braw) - {"epochs", "max_steps", "unlabeled_subset", "seed"}:
        raise NSPError(f"{where}: budget takes epochs, max_steps, unlabeled_subset and seed")
    budget = Budget(
        epochs=_int_field(braw, "epochs", f"{where}: budget", minimum=1),
        max_steps=_int_field(braw, "max_steps", f"{where}: budget", minimum=1),
        unlabeled_subset=_int_field(braw, "unlabeled_subset", f"{where}: budget", minimum=1),
        seed=_int_field(braw, "seed", f"{where}: budget", minimum=0) or 0,
    )
    rraw = dict(raw.get("robustness") or {})
    if set(rraw) - {"images", "corruptions", "severity", "seed"}:
        raise NSPError(f"{where}: robustness takes images, corruptions, severity and seed")
    robust = Robustness(**rraw)
    from nsp.robustness.corruptions import CORRUPTIONS

    bad = [c for c in robust.corruptions if c not in CORRUPTIONS]
    if bad or not robust.corruptions or robust.severity not in (1, 2, 3, 4, 5):
        raise NSPError(
            f"{where}: robustness: corruptions must be names from nsp.robustness.corruptions "
            f"(bad: {bad}) and severity in 1..5"
        )
    teacher = raw.get("teacher")
    if not isinstance(teacher, str) or not teacher:
        raise NSPError(
            f"{where}: teacher must be a checkpoint path (outputs/models/teacher/model.pt) or "
            "models:/NAME@ALIAS"
        )
    space_raw = raw.get("search_space")
    if not isinstance(space_raw, dict) or not space_raw:
        raise NSPError(f"{where}: search_space must be a non-empty mapping")
    space: list[SearchParam] = []
    for pname, praw in space_raw.items():
        space.append(_parse_param(str(pname), praw, where, {p.name for p in space}))
    keys = [p.key for p in space]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise NSPError(f"{where}: search_space maps several names to the same key(s) {dup}")
    return StudySpec(
        name=name,
        path=path,
        storage=storage,
        objectives=objectives,
        search_space=space,
        teacher=teacher,
        generation=str(raw.get("generation", "g1")),
        sampler=sampler,
        pruner=pruner,
        n_trials=n_trials,
        timeout=None if timeout is None else float(timeout),
        heartbeat=hb,
        budget=budget,
        robustness=robust,
        description=str(raw.get("description") or ""),
        raw=raw,
        repeats=_int_field(raw, "repeats", where, minimum=1) or 1,
    )


def load_spec(path: str | Path) -> StudySpec:
    """Read and structurally validate ``studies/<name>.yaml``."""
    path = Path(path)
    if not path.is_file():
        raise NSPError(f"{path}: study spec not found; pass a file like studies/noise.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise NSPError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    return parse_spec(raw, path=path)


def check_against_params(spec: StudySpec, params: dict[str, Any]) -> None:
    """Every key exists and affects the trial; both ends of each range give valid configs."""
    gen = spec.generation
    if gen not in (params.get("generations") or {}):
        raise NSPError(
            f"{spec.where}: generation {gen!r} is not a key of generations: in params.yaml"
        )
    for p in spec.search_space:
        check_key(params, key=p.key, name=p.name, gen=gen, where=spec.where)
    for p in spec.search_space:
        probes = p.choices if p.choices is not None else [p.low, p.high]
        for value in probes:
            trial_params = copy.deepcopy(params)
            set_path(trial_params, p.key, p.coerce(value))
            try:
                cfg = C.student_config(trial_params, gen)
                C.pseudo_config(trial_params, gen)
                if p.key.endswith(".arch"):
                    from nsp.models.factory import build_model

                    build_model(arch=cfg.arch, num_classes=2, in_chans=1)
            except NSPError as exc:
                raise NSPError(
                    f"{spec.where}: search_space.{p.name}: value {value!r} for {p.key} is invalid "
                    f"({exc}); fix the range"
                ) from None
    spec.baseline(params)


def find_spec(name: str, spec_path: str | Path | None = None) -> StudySpec | None:
    """The spec for study ``name``: ``spec_path``, else the ``studies/*.yaml`` whose name matches."""
    if spec_path is not None:
        spec = load_spec(spec_path)
        if spec.name != name:
            raise NSPError(f"{spec_path}: its name is {spec.name!r}, not {name!r}")
        return spec
    d = Path("studies")
    candidates = [d / f"{name}.yaml", *sorted(d.glob("*.yaml"))] if d.is_dir() else []
    for f in candidates:
        if not f.is_file():
            continue
        try:
            raw = yaml.safe_load(f.read_text())
        except yaml.YAMLError:
            continue
        if isinstance(raw, dict) and raw.get("name") == name:
            return parse_spec(raw, path=f)
    return None
