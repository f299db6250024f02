"""The package's layout, checked from its source: wings in one order, no circles, imports at the top.

Every project module belongs to a wing. A wing may import itself and the wings before it in
:data:`WING_ORDER`, never one after it, so an import against the order fails here before it can
hide a circle inside a function body. Project imports sit at module level (an import circle then
fails at import time, not in a rarely taken branch); a function may import only a heavy third-party
module, kept off the page's import path, with its reason on the line (a comment).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests import waiting

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "framepack_history"

#: lowest first. The foundation is the package's own leaf modules (no project imports of their own).
WING_ORDER = ["foundation", "config", "hub", "backbones", "history", "lora", "memory", "generation",
              "jobs", "training", "cli", "ui", "app"]
FOUNDATION = {"framepack_history", "framepack_history.errors", "framepack_history.fsio", "framepack_history.device",
              "framepack_history.sampling"}
#: what the page may import: no model code (torch, the backbones, the generator) on its import path
UI_MAY_IMPORT = {"foundation", "config", "hub", "jobs", "ui"}
#: torch-free modules of other wings the page uses: listing LoRA files, joining finished segments (ffmpeg)
UI_MAY_ALSO_IMPORT = {"framepack_history.lora.files", "framepack_history.generation.video"}


def modules() -> dict[str, Path]:
    out = {"app": ROOT / "app.py"}
    for p in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = p.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


MODULES = modules()


def wing(module: str) -> str:
    if module == "app":
        return "app"
    if module == "framepack_history.__main__":
        return "cli"
    if module in FOUNDATION:
        return "foundation"
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in WING_ORDER:
        raise AssertionError(f"{module} is in no wing: put it in one of {WING_ORDER[1:-1]} or the foundation")
    return parts[1]


def _target(module: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The project modules an import statement loads (a ``from pkg import submodule`` names the submodule)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            raise AssertionError(f"{module}: relative import at line {node.lineno}; write the absolute name")
        names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module or ""
                 for a in node.names]
    out = []
    for n in names:
        while n and n not in MODULES:
            n = n.rpartition(".")[0]
        if n and (n == PACKAGE or n.startswith(PACKAGE + ".")) or n == "app":
            out.append(n)
    return out


def _imports(module: str) -> list[tuple[ast.stmt, bool, list[str]]]:
    """(statement, inside a function, project modules it loads) for every import of a module."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, in_function, _target(module, child)))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return found


def _graph() -> dict[str, set[str]]:
    return {m: {t for _, _, ts in _imports(m) for t in ts if t != m} for m in MODULES}


def test_every_module_is_in_a_wing():
    for m in MODULES:
        wing(m)


def test_no_import_runs_against_the_wing_order():
    bad = []
    for m in MODULES:
        for node, _, targets in _imports(m):
            for t in targets:
                if WING_ORDER.index(wing(t)) > WING_ORDER.index(wing(m)):
                    bad.append(f"{MODULES[m].name}:{node.lineno} ({wing(m)}) imports {t} ({wing(t)})")
    assert not bad, "imports against the wing order " + " < ".join(WING_ORDER) + ":\n" + "\n".join(bad)


def test_the_page_imports_no_model_code():
    bad = [f"{MODULES[m].relative_to(ROOT)}:{node.lineno} imports {t}"
           for m in MODULES if wing(m) == "ui" for node, _, targets in _imports(m) for t in targets
           if wing(t) not in UI_MAY_IMPORT and t not in UI_MAY_ALSO_IMPORT]
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                dfs(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            dfs(m)


def test_project_imports_sit_at_module_level():
    """A project import inside a function is allowed only to keep torch off a light module's import path.

    Light modules (the page's, the CLI's, the job API's) must import without torch; they defer the
    modules that load it. Every other project import sits at the top of its module.
    """
    deferring = sorted({m for m in MODULES for _, inside, ts in _imports(m) if inside and ts})
    code = ("import sys\n" + "".join(f"import {m}\n" for m in deferring)
            + "print(sorted(k for k in ('torch', 'diffusers') if k in sys.modules))")
    out = waiting.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", (f"a module that defers project imports loads torch anyway: import them at the "
                                        f"top instead ({', '.join(deferring)})")


def test_imports_inside_functions_say_why():
    """An import deferred into a function carries its reason as a comment on the line."""
    bad = []
    for m, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node, inside, targets in _imports(m):
            if inside and not any("#" in line for line in lines[node.lineno - 1:node.end_lineno]):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not bad, "deferred imports without a reason:\n" + "\n".join(bad)


def test_no_private_name_crosses_a_wing():
    """A wing uses another wing's public names only (a ``_name`` is free to change inside its wing)."""
    bad = []
    for m in MODULES:
        for node, _, targets in _imports(m):
            if isinstance(node, ast.ImportFrom) and targets and wing(targets[0]) != wing(m):
                bad += [f"{MODULES[m].relative_to(ROOT)}:{node.lineno} takes {node.module}.{a.name}"
                        for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above can fail: a made-up upward import and a made-up circle are caught."""
    fake = {**MODULES, "framepack_history.config.fake": tmp_path / "fake.py",
            "framepack_history.hub.fake": tmp_path / "hubfake.py"}
    (tmp_path / "fake.py").write_text("from framepack_history.hub.fake import x\n")
    (tmp_path / "hubfake.py").write_text("from framepack_history.config.fake import y\n")
    monkeypatch.setitem(globals(), "MODULES", fake)
    try:
        test_no_import_circle()
    except AssertionError as e:
        assert "framepack_history.config.fake -> framepack_history.hub.fake" in str(e)
    else:
        raise AssertionError("the circle went unseen")
    try:
        test_no_import_runs_against_the_wing_order()
    except AssertionError as e:
        assert "fake.py:1 (config) imports framepack_history.hub.fake (hub)" in str(e), str(e)
    else:
        raise AssertionError("the upward import went unseen")
