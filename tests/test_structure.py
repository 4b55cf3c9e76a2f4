"""Package structure: no import circles among the project's modules, no cross-package private imports.

The checks parse every ``.py`` file under ``nsp/`` and ``app/`` with :mod:`ast`; nothing is executed,
so the Streamlit scripts (``app/Home.py``, ``app/pages/*``) are checked too. A last test imports every
module that is not such a script, in a fresh interpreter.

Definitions:

* module names: ``nsp/a/b.py`` is ``nsp.a.b``, ``nsp/a/__init__.py`` is ``nsp.a``. A module's
  *package* is its dotted parent (``nsp.a`` for ``nsp.a.b``); a package's ``__init__`` belongs to the
  package itself.
* an import edge: every ``import x.y`` / ``from x import y`` naming a project module, relative imports
  resolved. ``from pkg import name`` points at ``pkg.name`` when that is a module, else at ``pkg``.
  **Function-level (lazy) imports count as well as module-level ones**: a lazy import does not fail
  at import time, but it is still a dependency, and ``nsp.data.sources`` <-> ``nsp.data.cifar`` (a
  lazy import one way, a module-level one back) is exactly the kind of circle this test exists to
  keep out. Imports under ``if TYPE_CHECKING:`` would count too (there are none).
* a circle: modules that reach each other through import edges (a strongly connected component of
  two or more modules), including a package and its own submodules.
* a private import: an import path whose first ``_name`` component (not a ``__dunder__``) is owned by
  a package other than the importer's: ``from nsp.train.engine import _Ema`` in ``nsp/bench.py``
  (``_Ema`` belongs to package ``nsp.train``, the importer to ``nsp``), or ``from nsp.robustness
  import _c_ops`` outside ``nsp.robustness``. Within one package it is allowed. Private names of
  third-party libraries are out of scope.
"""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("nsp", "app")
SCRIPTS = ("app.Home", "app.pages")  # Streamlit scripts: they run the page on import


# --------------------------------------------------------------------------------- the detector


def find_modules(root: Path, packages: Iterable[str] = PROJECT) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root/<package>``."""
    mods: dict[str, Path] = {}
    for top in packages:
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def package_of(name: str, mods: dict[str, Path]) -> str:
    """The package a module belongs to: itself for a package ``__init__``, else its dotted parent."""
    if name in mods and mods[name].name == "__init__.py":
        return name
    return name.rpartition(".")[0]


@functools.cache
def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def imported_paths(name: str, mods: dict[str, Path]) -> Iterator[tuple[int, str]]:
    """(line, absolute dotted path) for every import anywhere in module ``name`` (lazy ones too)."""
    for node in ast.walk(_parse(mods[name])):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package_of(name, mods).split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                yield node.lineno, base if alias.name == "*" else f"{base}.{alias.name}"


def _module_for(path: str, mods: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted import path that is a project module."""
    parts = path.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in mods:
            return ".".join(parts[:n])
    return None


def import_graph(mods: dict[str, Path]) -> dict[str, dict[str, int]]:
    """module -> {imported project module: first line importing it}."""
    graph: dict[str, dict[str, int]] = {m: {} for m in mods}
    for m in mods:
        for line, path in imported_paths(m, mods):
            target = _module_for(path, mods)
            if target is not None and target != m:
                graph[m].setdefault(target, line)
    return graph


def find_circles(mods: dict[str, Path]) -> list[list[str]]:
    """Sorted groups of modules that import each other (directly or through others)."""
    graph = import_graph(mods)

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reachable = {m: reach(m) for m in graph}
    circles, done = [], set()
    for m in sorted(graph):
        if m in done or m not in reachable[m]:
            continue
        group = sorted({m} | {o for o in reachable[m] if m in reachable[o]})
        done.update(group)
        circles.append(group)
    return circles


def describe_circle(group: list[str], mods: dict[str, Path], root: Path) -> str:
    graph = import_graph(mods)
    edges = [
        f"{a} -> {b} ({mods[a].relative_to(root)}:{line})"
        for a in group
        for b, line in sorted(graph[a].items())
        if b in group
    ]
    return "circle " + " <-> ".join(group) + ":\n    " + "\n    ".join(edges)


def find_private_imports(
    mods: dict[str, Path], packages: Iterable[str] = PROJECT
) -> list[tuple[str, int, str]]:
    """(importer, line, imported path) for each private name imported from another package."""
    tops = set(packages)
    found = []
    for m in sorted(mods):
        for line, path in imported_paths(m, mods):
            parts = path.split(".")
            if parts[0] not in tops:
                continue
            private = [
                i
                for i, p in enumerate(parts)
                if p.startswith("_") and not (p.startswith("__") and p.endswith("__"))
            ]
            if not private:
                continue
            owner = ".".join(parts[: private[0]])
            if package_of(owner, mods) != package_of(m, mods):
                found.append((m, line, path))
    return sorted(found)


# ------------------------------------------------------------------ the detector fires at all


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_detector_finds_a_synthetic_circle_and_private_imports(tmp_path: Path) -> None:
    """A throw-away package with known findings: the checks below cannot pass vacuously."""
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg.b import f\n",  # module level one way ...
            "pkg/b.py": "def f():\n    from pkg import a\n    return a\n",  # ... lazy back
            "pkg/c.py": "from .d import _helper\nfrom pkg import _hidden\nfrom os import _exit\n",
            "pkg/d.py": "def _helper(): ...\n",
            "pkg/_hidden.py": "",
            "pkg/sub/__init__.py": "from pkg.sub.e import _inner\n",
            "pkg/sub/e.py": "from pkg.d import _helper\nimport pkg._hidden\n\ndef _inner(): ...\n",
            "pkg/sub/f.py": "from . import e\nfrom ..d import __doc__\n\ndef g():\n    from ..d import _helper\n",
            "pkg/x.py": "from pkg.y import z\n",
            "pkg/y.py": "from pkg.w import v\n",
            "pkg/w.py": "import pkg.x\n",
        },
    )
    mods = find_modules(tmp_path, ["pkg"])
    assert len(mods) == 12
    assert find_circles(mods) == [["pkg.a", "pkg.b"], ["pkg.w", "pkg.x", "pkg.y"]]
    assert "pkg/b.py:2" in describe_circle(["pkg.a", "pkg.b"], mods, tmp_path)
    assert find_private_imports(mods, ["pkg"]) == [
        ("pkg.sub.e", 1, "pkg.d._helper"),
        ("pkg.sub.e", 2, "pkg._hidden"),
        ("pkg.sub.f", 5, "pkg.d._helper"),
    ]


def test_detector_sees_the_real_tree() -> None:
    mods = find_modules(ROOT)
    assert {"nsp.stages", "nsp.tracking", "nsp.tracking.studies", "app.data"} <= set(mods)
    graph = import_graph(mods)
    assert "nsp.tracking" in graph["nsp.stages"]  # a lazy `from nsp import tracking`
    assert "nsp.errors" in graph["nsp.data.sources"]


# ----------------------------------------------------------------------------- the real tree


def test_no_import_circles() -> None:
    mods = find_modules(ROOT)
    circles = find_circles(mods)
    assert not circles, "\n".join(describe_circle(c, mods, ROOT) for c in circles)


def test_no_private_names_imported_across_packages() -> None:
    mods = find_modules(ROOT)
    found = find_private_imports(mods)
    assert not found, "private names imported from another package:\n" + "\n".join(
        f"  {mods[m].relative_to(ROOT)}:{line}: {path}" for m, line, path in found
    )


def test_every_module_imports() -> None:
    """Every non-script module imports in a fresh interpreter (catches a name lost in a move)."""
    names = [
        m for m in find_modules(ROOT) if not any(m == s or m.startswith(s + ".") for s in SCRIPTS)
    ]
    assert "app.data" in names and "nsp.tracking.registry" in names
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    proc = subprocess.run(
        [sys.executable, "-c", code, *names],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_mlflow_is_imported_only_by_nsp_tracking() -> None:
    """The engine never imports mlflow: inside ``nsp`` only ``nsp.tracking.*`` may."""
    mods = find_modules(ROOT, ["nsp"])
    offenders = [
        f"{mods[m].relative_to(ROOT)}:{line}"
        for m in sorted(mods)
        if m != "nsp.tracking" and not m.startswith("nsp.tracking.")
        for line, path in imported_paths(m, mods)
        if path == "mlflow" or path.startswith("mlflow.")
    ]
    assert not offenders, f"mlflow imported outside nsp.tracking: {offenders}"


# ====================================================================================
# Golden digests: reserved section. A test comparing pipeline outputs with the recorded
# digests (tests/golden.py, tests/data/) is added below this line separately; the structure
# checks above do not depend on it.
# ====================================================================================
