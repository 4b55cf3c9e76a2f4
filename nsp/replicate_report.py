"""``nsp report --replicates``: per model and column mean, s.d., 95 % CI over the finished replicates
of a configuration, and paired comparisons by replicate (final student vs baseline, each generation vs
its teacher) with Holm-corrected p-values and a won / tied / lost verdict (see :mod:`nsp.stats`).

JSON (``outputs/replicates.json``)::

    {"config_hash", "replicates": [finished indices], "planned": R, "set_dir",
     "models": {model: {column: {mean, sd, ci95: [low, high], n, values: [...]}}},
     "comparisons": {"g3 vs baseline": {column: {diff, sd, ci95, p, p_holm, verdict, n, better,
                                                 zero_variance}}}}

``values`` follows ``replicates`` (None where a replicate lacks the column).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nsp import config as C
from nsp.errors import NSPError
from nsp.replicates import DEFAULT_DIR, DONE_FILE, SET_FILE, config_hash
from nsp.report import ROBUST_COLUMNS, generation_table
from nsp.stats import compare_columns, describe

MODEL_COLUMNS = ("test_acc", "val_acc", "pseudo_label_acc", *ROBUST_COLUMNS)
COMPARE_COLUMNS = ("test_acc", *ROBUST_COLUMNS)


def find_set(params: dict[str, Any], *, base: Path = DEFAULT_DIR, path: Path | None = None) -> Path:
    """The replicate set of ``params`` (or ``path``): ``<base>/<config hash>`` holding ``set.json``."""
    sdir = path or (base / config_hash(params))
    if path is None and not (sdir / SET_FILE).is_file():
        varied = base / config_hash(params, vary_data=True)
        sdir = varied if (varied / SET_FILE).is_file() else sdir
    if not (sdir / SET_FILE).is_file():
        raise NSPError(
            f"{sdir / SET_FILE} not found: no replicates of this params.yaml yet; run "
            "`nsp replicates run --r 3` (or pass --set replicates/<hash>)"
        )
    return sdir


def pairs(params: dict[str, Any]) -> list[tuple[str, str]]:
    """(a, b) compared as a - b: the final student vs the baseline, each generation vs its teacher."""
    gens = C.generation_keys(params)
    out = [(gens[-1], "baseline")] if gens else []
    return out + [(g, C.teacher_of(params, g)) for g in gens]


def collect(sdir: Path) -> tuple[dict[str, Any], dict[int, dict[str, dict[str, Any]]]]:
    """(set record, {replicate index: {model: report row}}) for the finished replicates."""
    record = json.loads((sdir / SET_FILE).read_text())
    rows: dict[int, dict[str, dict[str, Any]]] = {}
    for ws in sorted(
        sdir.glob("r*"), key=lambda p: int(p.name[1:]) if p.name[1:].isdigit() else -1
    ):
        if not ws.name[1:].isdigit() or not (ws / DONE_FILE).is_file():
            continue
        params_r = C.load_params(ws / "params.yaml")
        rows[int(ws.name[1:])] = {r["model"]: r for r in generation_table(params_r, ws / "outputs")}
    return record, rows


def summarize(sdir: Path) -> dict[str, Any]:
    """The replicate statistics of the set in ``sdir`` (JSON-ready, schema in the module doc)."""
    record, rows = collect(sdir)
    params = record["params"]
    idx = sorted(rows)
    models = ["teacher", *C.generation_keys(params), "baseline"]

    def series(model: str, col: str) -> list[float | None]:
        return [rows[k].get(model, {}).get(col) for k in idx]

    out_models: dict[str, Any] = {}
    for m in models:
        cols = {}
        for c in MODEL_COLUMNS:
            vals = series(m, c)
            if any(v is not None for v in vals):
                cols[c] = {**describe(vals), "values": vals}
        if cols:
            out_models[m] = cols
    comparisons = {
        f"{a} vs {b}": compare_columns(
            {c: series(a, c) for c in COMPARE_COLUMNS}, {c: series(b, c) for c in COMPARE_COLUMNS}
        )
        for a, b in pairs(params)
    }
    return {
        "config_hash": record["config_hash"],
        "set_dir": str(sdir),
        "planned": record["count"],
        "replicates": idx,
        "seed_stride": record.get("seed_stride"),
        "vary_data": record.get("vary_data", False),
        "models": out_models,
        "comparisons": {k: v for k, v in comparisons.items() if v},
    }


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def format_summary(s: dict[str, Any]) -> str:
    """Two text tables (all values in %): mean [95 % CI] per model, then the paired comparisons."""
    n = len(s["replicates"])
    lines = [
        f"replicates of config {s['config_hash']}: {n} finished of {s['planned']} planned "
        f"({s['set_dir']}); all values in %, mean [95 % CI]"
        + ("; one replicate: no CI, nothing tested" if n < 2 else "")
    ]
    cols = [c for c in MODEL_COLUMNS if any(c in m for m in s["models"].values())]
    table = [["model", *cols]]
    for model, m in s["models"].items():
        cells = [model]
        for c in cols:
            e = m.get(c)
            if e is None or e["mean"] is None:
                cells.append("-")
            elif e["ci95"] is None:
                cells.append(_pct(e["mean"]))
            else:
                cells.append(f"{_pct(e['mean'])} [{_pct(e['ci95'][0])}, {_pct(e['ci95'][1])}]")
        table.append(cells)
    lines += _render(table)
    if s["comparisons"]:
        lines.append("")
        lines.append("paired by replicate: difference (a - b) in points, Holm p, verdict for a")
        ccols = [c for c in COMPARE_COLUMNS if any(c in v for v in s["comparisons"].values())]
        table = [["a vs b", *ccols]]
        for name, comp in s["comparisons"].items():
            cells = [name]
            for c in ccols:
                e = comp.get(c)
                if e is None:
                    cells.append("-")
                    continue
                p = "" if e["p_holm"] is None else f" p={e['p_holm']:.3g}"
                cells.append(f"{100 * e['diff']:+.2f}{p} {e['verdict']}")
            table.append(cells)
        lines += _render(table)
    return "\n".join(lines)


def _render(table: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]


# ------------------------------------------------------------------ two configurations (A vs B)


def flat_params(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": value}`` for every leaf of a nested params dict (an empty dict is a leaf)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def param_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[Any]]:
    """``{key: [value in a, value in b]}`` for every params.yaml key that differs (tracking left out)."""
    fa, fb = flat_params(a), flat_params(b)
    return {
        k: [fa.get(k), fb.get(k)]
        for k in sorted(set(fa) | set(fb))
        if fa.get(k) != fb.get(k) and not k.startswith("tracking.")
    }


def _gain_values(s: dict[str, Any], a: str, b: str, col: str) -> list[float | None]:
    va = s["models"].get(a, {}).get(col, {}).get("values")
    vb = s["models"].get(b, {}).get(col, {}).get("values")
    if va is None or vb is None:
        return []
    return [None if x is None or y is None else x - y for x, y in zip(va, vb, strict=True)]


def compare_summaries(sa: dict[str, Any], sb: dict[str, Any]) -> dict[str, Any]:
    """Configuration A vs configuration B from their replicate summaries (:func:`summarize`):
    per model and column Welch's t on the per-replicate values (``diff`` = mean A - mean B, Holm
    across each model's columns), and the same for each within-set comparison's per-replicate
    difference (e.g. the final student's gain over the baseline: is it larger in A than in B?)."""
    models = {}
    for m in [m for m in sa["models"] if m in sb["models"]]:
        va = {c: e["values"] for c, e in sa["models"][m].items() if c in COMPARE_COLUMNS}
        vb = {c: e["values"] for c, e in sb["models"][m].items() if c in COMPARE_COLUMNS}
        models[m] = compare_columns(va, vb, matched=False)
    gains = {}
    for name in [n for n in sa["comparisons"] if n in sb["comparisons"]]:
        a, b = name.split(" vs ")
        ga = {c: _gain_values(sa, a, b, c) for c in COMPARE_COLUMNS}
        gb = {c: _gain_values(sb, a, b, c) for c in COMPARE_COLUMNS}
        gains[name] = compare_columns(
            {c: v for c, v in ga.items() if v}, {c: v for c, v in gb.items() if v}, matched=False
        )
    return {
        "a": {k: sa[k] for k in ("config_hash", "set_dir", "replicates")},
        "b": {k: sb[k] for k in ("config_hash", "set_dir", "replicates")},
        "models": models,
        "gains": gains,
    }


def format_comparison(c: dict[str, Any], params_diff: dict[str, list[Any]] | None = None) -> str:
    """Text tables of :func:`compare_summaries` (points; verdicts are for A)."""
    lines = [
        f"A = {c['a']['set_dir']} ({len(c['a']['replicates'])} replicates), "
        f"B = {c['b']['set_dir']} ({len(c['b']['replicates'])} replicates); Welch t, "
        "difference A - B in points, Holm p over each row's columns, verdict for A"
    ]
    for key, value in (params_diff or {}).items():
        lines.append(f"  {key}: A {value[0]!r}, B {value[1]!r}")
    for title, block in (("model", c["models"]), ("gain (a - b per replicate)", c["gains"])):
        if not block:
            continue
        cols = [k for k in COMPARE_COLUMNS if any(k in v for v in block.values())]
        table = [[title, *cols]]
        for name, comp in block.items():
            cells = [name]
            for col in cols:
                e = comp.get(col)
                if e is None or e["diff"] is None:
                    cells.append("-")
                    continue
                p = "" if e["p_holm"] is None else f" p={e['p_holm']:.3g}"
                cells.append(f"{100 * e['diff']:+.2f}{p} {e['verdict']}")
            table.append(cells)
        lines += ["", *_render(table)]
    return "\n".join(lines)
