"""DVC tracks all the code that decides a stage's output: each stage's ``deps`` in dvc.yaml cover every
``nsp`` module its command imports, transitively (module- and function-level imports, found with ast)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _module_file(root: Path, name: str) -> Path | None:
    base = root / Path(*name.split("."))
    for f in (base.with_suffix(".py"), base / "__init__.py"):
        if f.is_file():
            return f
    return None


def _imported(root: Path, path: Path) -> set[str]:
    """Every ``nsp...`` module ``path`` imports anywhere (``from nsp.a import b`` -> nsp.a.b if b is
    a module, else nsp.a), plus the packages Python runs on the way (nsp, nsp.a)."""
    here = list(path.relative_to(root).parent.parts)  # the package a relative import starts from
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                parts = here[: len(here) - node.level + 1]
                mod = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            names.add(mod)
            names |= {f"{mod}.{a.name}" for a in node.names}
    out = set()
    for n in names:
        if n != "nsp" and not n.startswith("nsp."):
            continue
        parts = n.split(".")
        for i in range(1, len(parts) + 1):  # the packages on the way are imported (run) too
            if _module_file(root, ".".join(parts[:i])) is not None:
                out.add(".".join(parts[:i]))
    return out


def stage_modules(root: Path, command: str) -> set[Path]:
    """Files of every nsp module ``nsp <command>`` imports, from nsp/cli.py and its command module."""
    from nsp.cli import COMMANDS

    todo = ["nsp.cli", "nsp.commands", f"nsp.commands.{COMMANDS[command]}"]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        f = _module_file(root, name)
        if f is not None:
            todo += sorted(_imported(root, f) - seen)
    return {_module_file(root, n).relative_to(root) for n in seen if _module_file(root, n)}


def uncovered(dvc: dict, root: Path) -> dict[str, list[str]]:
    """stage -> the imported nsp files no ``deps`` entry (file or folder) of that stage covers."""
    out: dict[str, list[str]] = {}
    for stage, spec in dvc["stages"].items():
        body = spec.get("do", spec)
        cmd = body["cmd"].split()
        if cmd[0] != "nsp":
            continue
        deps = [Path(d) for d in body.get("deps", []) if str(d).startswith("nsp")]
        missing = [
            str(f)
            for f in sorted(stage_modules(root, cmd[1]))
            if not any(f == d or d in f.parents for d in deps)
        ]
        if missing:
            out[stage] = missing
    return out


def test_every_stage_depends_on_all_the_code_it_imports():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert uncovered(dvc, REPO) == {}


def test_import_graph_sees_function_level_imports():
    mods = stage_modules(REPO, "report")
    # nsp/commands/report.py imports nsp.report inside run(); nsp.report imports nsp.config
    assert {Path("nsp/commands/report.py"), Path("nsp/report.py"), Path("nsp/config.py")} <= mods
    assert Path("nsp/cli.py") in mods and Path("nsp/__init__.py") in mods


@pytest.mark.parametrize(
    ("stage", "dep"),
    [("report", "nsp/report.py"), ("teacher", "nsp/config.py"), ("evaluate", "nsp/train")],
)
def test_removing_a_dep_fails_the_check(stage, dep):
    """On a modified copy of dvc.yaml, dropping one code dep is reported for that stage only."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    body = dvc["stages"][stage].get("do", dvc["stages"][stage])
    assert dep in body["deps"]
    body["deps"].remove(dep)
    missing = uncovered(dvc, REPO)
    assert set(missing) == {stage}
    assert missing[stage] and all(m == dep or m.startswith(dep + "/") for m in missing[stage])
