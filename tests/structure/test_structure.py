"""The package's shape: no import circles, the library never imports the app, arrows point down the pipeline.

Every ``import`` in ``simdiff_core`` is read with ``ast`` (lazy imports inside functions count too: a
circle through a function-level import is still a circle), plus ``importlib.import_module("...")``
calls and strings naming a module (the CLI's ``COMMAND_MODULES``). Nothing is imported, so the check
costs a fraction of a second and cannot be fooled by import order.

Stage folders, bottom to top (a module may import its own stage and the stages below it, never one
above): see ``STAGES``. Modules still at the package top (before the layout existed) are exempt from
the stage rule but not from the circle rule; the package root (``__init__``/``__main__``) is the public
façade above everything, and library modules may take only ``__version__`` from it.

The tests mirror the package (``TEST_FOLDERS``): ``tests/<stage>/`` for each stage, plus ``app/``
(pages, ui/, AppTest), ``browser/`` (headless Chromium), ``structure/`` (this file: the repository's
shape, packaging, images) and ``support/`` (helpers that are not tests). No test module sits flat in
tests/, and no module imports a test module (or conftest): shared code goes through ``tests.support``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "simdiff_core"
STAGES = ["common", "models", "data", "analysis", "pruning", "repair", "evaluation", "methods", "export", "runs",
          "workflows", "cli"]
FORBIDDEN = {"streamlit", "ui", "pages", "bench", "app", "tests", "conftest"}
_MODULE_STRING = re.compile(r"simdiff_core(\.\w+)+")
TESTS = ROOT / "tests"
TEST_FOLDERS = STAGES + ["app", "browser", "structure", "support"]


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return mods


def _imports(name: str, path: Path, is_pkg: bool, mods) -> list[tuple[str, str, int]]:
    """(imported module or top-level name, the imported attribute or '', line) for every import."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, "", node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.append((sub, "", node.lineno) if sub in mods else (mod, a.name, node.lineno))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                out.append((node.args[0].value, "", node.lineno))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.fullmatch(node.value):
            if node.value in mods:
                out.append((node.value, "", node.lineno))
    return out


def _graph():
    """{module: {imported simdiff_core module: first line}}, and every import as (module, target, attr, line)."""
    mods = _modules()
    graph, raw = {m: {} for m in mods}, []
    for m, (path, is_pkg) in mods.items():
        for target, attr, line in _imports(m, path, is_pkg, mods):
            raw.append((m, target, attr, line))
            t = target
            while t not in mods and "." in t:
                t = t.rsplit(".", 1)[0]
            if t in mods and t != m and t != "simdiff_core":
                graph[m].setdefault(t, line)
    return mods, graph, raw


def _cycles(graph: dict[str, dict]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, comps, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1
                    stack.append(w); on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop(); on.discard(w); comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        comps.append(sorted(comp))
    return comps


def _stage(module: str) -> int | None:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


def test_the_checker_sees_lazy_and_string_imports():
    """The parser finds what the rules below rely on (a checker that sees nothing passes everything)."""
    mods, graph, raw = _graph()
    assert len(mods) > 20 and sum(map(len, graph.values())) > 50
    # lazy (function-level) imports are edges too: cli/common.py loads the model only inside a function
    common = next(m for m in mods if m.endswith("common") and "cli" in m)
    assert any(t.endswith(".load") for t in graph[common])
    # the CLI registry names its subcommand modules as strings: those are edges as well
    registry = next(m for m in mods if m.split(".")[-1] in ("cli", "main") and "cli" in m
                    and any("ground_truth" in t for t in graph[m]))
    assert sum("cli" in t for t in graph[registry]) >= 4
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]


def test_no_import_circles():
    _, graph, _ = _graph()
    cycles = _cycles(graph)
    detail = ["  " + " <-> ".join(c) + ": " + "; ".join(f"{m} -> {t} (line {graph[m][t]})" for m in c
                                                           for t in graph[m] if t in c) for c in cycles]
    assert not cycles, "import circles in simdiff_core:\n" + "\n".join(detail)


def test_library_never_imports_the_app_or_benchmarks():
    _, _, raw = _graph()
    bad = [f"{m} line {line}: imports {t}" for m, t, _, line in raw if t.split(".")[0] in FORBIDDEN]
    assert not bad, "simdiff_core must stay a pure library:\n" + "\n".join(bad)


def test_library_takes_only_the_version_from_the_package_root():
    """The root ``__init__`` is the public façade above every stage; importing from it would be upward."""
    _, _, raw = _graph()
    bad = [f"{m} line {line}: from simdiff_core import {a or '(module)'}" for m, t, a, line in raw
           if t == "simdiff_core" and m not in ("simdiff_core", "simdiff_core.__main__") and a != "__version__"]
    assert not bad, "\n".join(bad)


def test_imports_point_down_the_pipeline():
    """A stage imports only itself and the stages below it (e.g. analysis never imports cli or export)."""
    _, graph, _ = _graph()
    bad = [f"{m} ({STAGES[_stage(m)]}) -> {t} ({STAGES[_stage(t)]}), line {line}"
           for m, targets in graph.items() for t, line in targets.items()
           if _stage(m) is not None and _stage(t) is not None and _stage(t) > _stage(m)]
    assert not bad, f"upward imports (stage order {' < '.join(STAGES)}):\n" + "\n".join(bad)


def test_every_module_lives_in_a_stage_once_the_layout_exists():
    if not (PKG / "cli" / "__init__.py").exists():
        return  # the flat layout: nothing to check yet
    mods = _modules()
    loose = [m for m in mods if m not in ("simdiff_core", "simdiff_core.__main__") and _stage(m) is None]
    assert not loose, f"modules outside the stage folders {STAGES}: {loose}"


def test_readme_layout_and_contributing_match_the_tree():
    """CONTRIBUTING.md's Layout lists every stage folder in STAGES order and every test folder in TEST_FOLDERS
    order; every path it or its Contributing section names exists."""
    if not (PKG / "cli" / "__init__.py").exists():
        return  # the flat layout: CONTRIBUTING.md describes it in prose
    guide = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    layout = re.search(r"^## Layout\n(.*?)^## ", guide, flags=re.S | re.M)
    contributing = re.search(r"^## Contributing\n(.*?)(?:^## |\Z)", guide, flags=re.S | re.M)
    assert layout and contributing, "CONTRIBUTING.md needs '## Layout' and '## Contributing' sections"
    tree = re.search(r"```\n(.*?)```", layout.group(1), flags=re.S).group(1)
    blocks, top = {}, None  # top-level entry -> the names indented under it
    for line in tree.splitlines():
        if line and not line[0].isspace():
            top = line.split()[0]
            blocks[top] = []
        elif (m := re.match(r"^  (\w+)(?:/|\.py)\s", line)) and top:
            blocks[top].append(m.group(1))
    listed = blocks.get("simdiff_core/", [])
    test_folders = [d for d in TEST_FOLDERS if (TESTS / d).is_dir()]
    assert blocks.get("tests/") == test_folders, \
        f"CONTRIBUTING.md Layout must list the test folders in this order: {test_folders} (got {blocks.get('tests/')})"
    stages_on_disk = [s for s in STAGES if (PKG / s).is_dir() or (PKG / f"{s}.py").is_file()]
    assert [s for s in listed if s in STAGES] == stages_on_disk, (listed, stages_on_disk)
    folders = sorted(p.parent.name for p in PKG.glob("*/__init__.py"))
    assert set(folders) <= set(listed), f"folders missing from CONTRIBUTING.md Layout: {set(folders) - set(listed)}"
    for path in re.findall(r"`((?:simdiff_core|tests|pages|ui|bench|scripts)/[\w./<>-]+)`",
                           layout.group(1) + contributing.group(1)):
        if "<" not in path:
            assert (ROOT / path).exists(), f"CONTRIBUTING.md names {path}, which does not exist"


def _is_test_module(path: Path) -> bool:
    return path.name.startswith("test_") or path.name == "conftest.py"


def test_test_folders_mirror_the_package():
    """Every folder under tests/ is a stage (or app/browser/structure/support) and a package; none is flat."""
    folders = sorted(p.name for p in TESTS.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert set(folders) <= set(TEST_FOLDERS), f"test folders that are no stage: {set(folders) - set(TEST_FOLDERS)}"
    assert "support" in folders and len(folders) > 5, folders
    for d in folders:
        assert (TESTS / d / "__init__.py").is_file(), f"tests/{d}/ needs an __init__.py (unique module names)"
        sub = [p.name for p in (TESTS / d).iterdir() if p.is_dir() and p.name != "__pycache__"]
        assert not sub, f"tests/{d}/ has sub-folders {sub}: keep one level"
    flat = sorted(p.name for p in TESTS.glob("test_*.py"))
    assert not flat, f"test files flat in tests/ (put them in the folder of the stage they test): {flat}"
    assert not list((TESTS / "support").glob("test_*.py")), "tests/support/ holds helpers, not tests"


def test_nothing_imports_a_test_module():
    """Tests, benchmarks and scripts share code only through ``tests.support`` (never a test module,
    never conftest, never a bare helper name that works only with tests/ on sys.path)."""
    local = {p.stem for p in TESTS.rglob("*.py")} | {"tests"}
    files = [*TESTS.rglob("*.py"), *(ROOT / "bench").rglob("*.py"), *(ROOT / "scripts").rglob("*.py")]
    bad, seen = [], 0
    for f in files:
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level and TESTS in f.parents:
                    bad.append(f"{f.relative_to(ROOT)} line {node.lineno}: relative import (use tests.support.*)")
                    continue
                if node.level:
                    continue
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names
                                              if node.module in ("tests", "tests.support")]
            else:
                continue
            for n in names:
                parts = n.split(".")
                if parts[0] == "tests":
                    seen += 1
                    if len(parts) < 2 or parts[1] != "support" or (len(parts) > 2 and parts[2].startswith("test_")):
                        bad.append(f"{f.relative_to(ROOT)} line {node.lineno}: imports {n}")
                elif parts[0] in local:
                    bad.append(f"{f.relative_to(ROOT)} line {node.lineno}: imports {n} (use tests.support.{parts[0]})")
    assert seen > 10, "the checker found no tests.support imports at all"
    assert not bad, "\n".join(bad)
