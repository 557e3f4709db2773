"""The house rules, checked on the import graph of every module — transitively, not only on each
module's own imports (STYLE.md "Rules that keep it honest", README "Architecture").

- The pure core (``services/recommender/engine``, ``shared/domain``) reaches no web, database,
  HTTP or logging library, and reads no file and no clock.
- ``shared/`` never reaches ``services/``.
- The two services reach each other only through the composition roots (``services/server.py``,
  ``services/cli.py``), which nothing imports.
- Route modules (``api.py``) are imported only by the composition root.
- Ingest's intake depends on its subscriptions, never the other way.
- No import circles.
- FHIR models are imported only by ``shared/fhir/resources.py``.
- Imports sit at module top, except deliberate lazy loading marked ``# lazy``.

The graph counts every import a module executes: its own (top level and inside functions) and the
``__init__`` of every package on the way; ``if TYPE_CHECKING:`` blocks execute nothing.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("services", "shared")
WEB_DB_HTTP_LOG = (
    "fastapi",
    "starlette",
    "sqlmodel",
    "sqlalchemy",
    "httpx",
    "alembic",
    "uvicorn",
    "psycopg",
    "logging",
    "structlog",
    "prometheus_client",
)
#: What reads files, the clock or the environment: not for the pure core.
IO_MODULES = ("os", "pathlib", "io", "time", "shutil", "tempfile", "glob")
CLOCK_CALLS = frozenset({"now", "utcnow", "today", "time", "monotonic", "perf_counter"})
FILE_CALLS = frozenset({"open", "read_text", "read_bytes", "write_text", "write_bytes"})
PURE_CORE = ("services.recommender.engine", "shared.domain")
ROOTS = frozenset({"services.server", "services.cli"})


@dataclass
class Module:
    name: str
    path: Path
    imports: set[str] = field(default_factory=set)  # every name imported, resolved where possible
    unmarked_lazy: list[int] = field(default_factory=list)  # lines of in-function imports without "# lazy"
    io_calls: list[str] = field(default_factory=list)


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _function_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return lines


def parse(root: Path, path: Path) -> Module:
    source = path.read_text()
    tree = ast.parse(source, filename=str(path))
    text = source.splitlines()
    module = Module(_module_name(root, path), path)
    skipped = _type_checking_lines(tree)
    inside = _function_lines(tree)
    package = module.name if path.name == "__init__.py" else module.name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            if node.lineno in skipped:
                continue
            if node.lineno in inside and "# lazy" not in text[node.lineno - 1]:
                module.unmarked_lazy.append(node.lineno)
        if isinstance(node, ast.Import):
            module.imports.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            module.imports.add(base)
            module.imports.update(f"{base}.{alias.name}" for alias in node.names)  # may be submodules
        elif isinstance(node, ast.Call):
            func = node.func
            name = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else ""
            )
            if name in CLOCK_CALLS | FILE_CALLS:
                module.io_calls.append(f"{name}() at line {node.lineno}")
    return module


@dataclass
class Graph:
    modules: dict[str, Module]

    @classmethod
    def of(cls, root: Path, packages: Iterable[str] = PACKAGES) -> Graph:
        found = {}
        for package in packages:
            for path in sorted((root / package).rglob("*.py")):
                if "migrations" in path.parts:
                    continue
                module = parse(root, path)
                found[module.name] = module
        return cls(found)

    def edges(self, name: str) -> set[str]:
        """Project modules that importing ``name`` executes directly (parent packages included)."""
        out: set[str] = set()
        for imported in self.modules[name].imports:
            target = imported
            while target and target not in self.modules:
                target = target.rpartition(".")[0]
            if not target:
                continue
            parts = target.split(".")
            out.update(
                ".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in self.modules
            )
        out.discard(name)
        return out

    def external(self, name: str) -> set[str]:
        """Top-level names of libraries (and stdlib modules) that ``name`` imports itself."""
        return {i.split(".")[0] for i in self.modules[name].imports if i.split(".")[0] not in PACKAGES}

    def reach(self, start: str) -> dict[str, list[str]]:
        """Every project module ``start`` executes, each with one import path to it."""
        paths = {start: [start]}
        todo = [start]
        while todo:
            current = todo.pop()
            for nxt in sorted(self.edges(current)):
                if nxt not in paths:
                    paths[nxt] = [*paths[current], nxt]
                    todo.append(nxt)
        return paths

    def under(self, prefix: str) -> list[str]:
        return sorted(n for n in self.modules if n == prefix or n.startswith(prefix + "."))

    def circles(self) -> list[list[str]]:
        """Strongly connected components of more than one module (Tarjan), each sorted."""
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on: set[str] = set()
        found: list[list[str]] = []
        counter = [0]

        def visit(v: str) -> None:
            index[v] = low[v] = counter[0]
            counter[0] += 1
            stack.append(v)
            on.add(v)
            for w in self.edges(v):
                if w.startswith(v + "."):  # a package importing its own submodule is no circle
                    continue
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

        for name in sorted(self.modules):
            if name not in index:
                visit(name)
        return found


def reaching(graph: Graph, sources: Iterable[str], bad: tuple[str, ...]) -> list[str]:
    """``module -> ... -> module imports lib`` for every path from ``sources`` to a ``bad`` library."""
    problems = []
    for source in sources:
        for reached, path in graph.reach(source).items():
            for lib in sorted(graph.external(reached) & set(bad)):
                problems.append(" -> ".join(path) + f" imports {lib}")
    return problems


def climbing(graph: Graph, sources: Iterable[str], forbidden: str) -> list[str]:
    """Import paths from ``sources`` into the ``forbidden`` package."""
    problems = []
    for source in sources:
        for reached, path in graph.reach(source).items():
            if reached == forbidden or reached.startswith(forbidden + "."):
                problems.append(" -> ".join(path))
                break
    return problems


@pytest.fixture(scope="module")
def graph() -> Graph:
    return Graph.of(ROOT)


# ----------------------------------------------------------------------------- the rules


@pytest.mark.parametrize("core", PURE_CORE)
def test_the_pure_core_reaches_no_web_database_http_or_logging_library(graph: Graph, core: str) -> None:
    assert reaching(graph, graph.under(core), WEB_DB_HTTP_LOG) == []


@pytest.mark.parametrize("core", PURE_CORE)
def test_the_pure_core_reads_no_file_and_no_clock(graph: Graph, core: str) -> None:
    problems = reaching(graph, graph.under(core), IO_MODULES)
    for name in graph.under(core):
        reached = graph.reach(name)
        problems += [f"{m}: {call}" for m in reached for call in graph.modules[m].io_calls]
    assert sorted(set(problems)) == []


def test_shared_never_reaches_services(graph: Graph) -> None:
    assert climbing(graph, graph.under("shared"), "services") == []


def test_the_services_reach_each_other_only_through_the_composition_roots(graph: Graph) -> None:
    assert climbing(graph, graph.under("services.ingest"), "services.recommender") == []
    assert climbing(graph, graph.under("services.recommender"), "services.ingest") == []
    importers = [m for m in graph.modules if ROOTS & graph.edges(m)]
    assert sorted(set(importers) - ROOTS) == [], "the composition roots are imported by nothing"


def test_intake_and_subscriptions_depend_one_way(graph: Graph) -> None:
    """Intake routes notifications to the subscription bookkeeping; the subscription worker stores
    what it fetches through the store the composition root hands it."""
    assert climbing(graph, graph.under("services.ingest.subscriptions"), "services.ingest.intake") == []


def test_route_modules_are_imported_only_by_the_composition_root(graph: Graph) -> None:
    routes = {n for n in graph.modules if n.rpartition(".")[2] == "api"}
    bad = [
        f"{m} imports {r}" for m in graph.modules if m not in ROOTS for r in sorted(graph.edges(m) & routes)
    ]
    assert bad == []


def test_no_import_circles(graph: Graph) -> None:
    assert graph.circles() == []


def test_fhir_models_only_through_shared_fhir_resources(graph: Graph) -> None:
    bad = [
        n
        for n, m in graph.modules.items()
        if n != "shared.fhir.resources" and any(i.startswith("fhir.") for i in m.imports)
    ]
    assert bad == []


def test_imports_inside_functions_are_marked_lazy(graph: Graph) -> None:
    bad = [f"{m.path.relative_to(ROOT)}:{line}" for m in graph.modules.values() for line in m.unmarked_lazy]
    assert bad == []


# ----------------------------------------------------------------------------- the checker itself


def _tree(tmp_path: Path, files: dict[str, str]) -> Graph:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
        for folder in [p for p in (tmp_path / package).rglob("*") if p.is_dir()] + [tmp_path / package]:
            (folder / "__init__.py").touch()
    return Graph.of(tmp_path)


def test_the_checker_finds_a_planted_circle_and_a_climb(tmp_path: Path) -> None:
    graph = _tree(
        tmp_path,
        {
            "services/ingest/a.py": "from services.ingest import b\n",
            "services/ingest/b.py": "def f():\n    from services.ingest.c import x  # lazy\n",
            "services/ingest/c.py": "import services.ingest.a\nx = 1\n",
            "services/ingest/up.py": "from services.server import build\n",
            "services/server.py": "from services.recommender import core\nbuild = 1\n",
            "services/recommender/core.py": "",
            "shared/util.py": "from services.ingest.up import x\n",
        },
    )
    assert graph.circles() == [["services.ingest.a", "services.ingest.b", "services.ingest.c"]]
    assert climbing(graph, ["services.ingest.up"], "services.recommender") == [
        "services.ingest.up -> services.server -> services.recommender"
    ]
    assert climbing(graph, ["shared.util"], "services") != []


def test_the_checker_follows_libraries_io_and_lazy_marks_transitively(tmp_path: Path) -> None:
    graph = _tree(
        tmp_path,
        {
            "shared/domain/rules.py": "from shared.domain import helper\n",
            "shared/domain/helper.py": "from shared import web\n",
            "shared/web.py": "import httpx\nimport datetime\nnow = datetime.datetime.now()\n",
            "shared/late.py": "def f():\n    import json\n",
            "shared/fhirish.py": "from fhir.resources.R4B import get_fhir_model_class\n",
        },
    )
    assert reaching(graph, ["shared.domain.rules"], WEB_DB_HTTP_LOG) == [
        "shared.domain.rules -> shared.domain.helper -> shared.web imports httpx"
    ]
    assert "now() at line 3" in graph.modules["shared.web"].io_calls
    assert graph.modules["shared.late"].unmarked_lazy == [2]
    assert any(i.startswith("fhir.") for i in graph.modules["shared.fhirish"].imports)
