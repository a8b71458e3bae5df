"""Layers point one way: a package of src/cxrmtl imports only packages below it, and modules of one package do not
import each other in a cycle.

This list is the one source of the order (docs/architecture.md, "Layers", draws it). Every import counts: module
level, inside functions and under ``if TYPE_CHECKING``, because each of them is a dependency of the upper package
on the lower one. A new package fails here until it is placed in the order.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cxrmtl"

# Top to bottom. A package may import itself and any package after it in this list, never one before it.
LAYERS: tuple[str, ...] = (
    "cli",  # the command line (and __main__): the only place that parses arguments
    "demo",  # the main job on the phantom
    "serve",  # the service (FastAPI, store, page)
    "triage",  # urgency, worklist, reading-room simulation
    "ablate",  # multitask vs single-task, paired comparisons
    "localize",  # Grad-CAM, Wang et al. boxes and scores, gallery
    "report",  # report.md/.html, figures, run-level evaluation
    "eval",  # metrics, bootstrap, calibration, thresholds, subgroups, expert labels, data kind
    "infer",  # predictor over a loaded run
    "train",  # loop, weighting, optimiser, EMA, augmentation
    "runs",  # run folder layout, checkpoints, load_run, predictions
    "tasks",  # one Task per kind, losses
    "models",  # backbone, heads, MultiTaskNet
    "phantom",  # the synthetic dataset in the NIH layout
    "data",  # NIH index, images, cache, loader, check
    "base",  # labels, config, errors, fsio, version, distributed, the package __init__
)
# Top-level modules of cxrmtl that are not packages, and the layer they belong to.
MODULE_LAYERS: dict[str, str] = {
    "__main__": "cli",
    "__init__": "base",
    "labels": "base",
    "config": "base",
    "errors": "base",
    "fsio": "base",
    "version": "base",
    "distributed": "base",
}


@dataclass(frozen=True)
class Import:
    source: str  # dotted module name of the importer, e.g. cxrmtl.eval.evaluate
    target: str  # dotted name of the imported cxrmtl module (a package __init__ as the package name)
    file: Path
    line: int


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(dotted: str, root: Path) -> bool:
    rel = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, root: Path = SRC) -> list[Import]:
    """Every cxrmtl import in the file, wherever it stands (module level, function, TYPE_CHECKING block)."""
    source = module_name(path, root)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node, source, path.name == "__init__.py")
            # "from cxrmtl.pkg import mod" imports the module pkg.mod; "from cxrmtl.pkg import name" the package.
            targets = [f"{module}.{a.name}" if _is_module(f"{module}.{a.name}", root) else module for a in node.names]
        else:
            continue
        found += [Import(source, t, path, node.lineno) for t in targets if t == "cxrmtl" or t.startswith("cxrmtl.")]
    return found


def layer_of(dotted: str, root: Path = SRC) -> str:
    """The layer of a cxrmtl module: its package, or MODULE_LAYERS for a top-level module."""
    parts = dotted.split(".")
    if len(parts) == 1:
        return "base"  # the package __init__
    top = parts[1]
    if (root / top).is_dir() or top in LAYERS:  # a package, or a one-module layer such as demo.py
        return top
    return MODULE_LAYERS.get(top, f"<unplaced module {top}>")


def all_imports(root: Path = SRC) -> list[Import]:
    paths = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    return [imp for path in paths for imp in imports_of(path, root)]


def violations(imports: list[Import], root: Path = SRC) -> list[str]:
    rank = {name: k for k, name in enumerate(LAYERS)}
    out = []
    for imp in imports:
        src, dst = layer_of(imp.source, root), layer_of(imp.target, root)
        where = f"{imp.file.relative_to(root.parents[1])}:{imp.line}"
        if src not in rank or dst not in rank:
            unknown = src if src not in rank else dst
            out.append(f"{where}: package {unknown!r} is not in the layer order (tests/test_layers.py LAYERS)")
        elif rank[dst] < rank[src]:
            out.append(f"{where}: {imp.source} imports {imp.target}, but {src} sits below {dst} "
                       f"(a package imports only packages below it: {' > '.join(LAYERS)})")
    return out


def cycles(imports: list[Import], root: Path = SRC) -> list[list[str]]:
    """Import cycles between modules of one package (each cycle once, as a list of module names)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target != imp.source and layer_of(imp.source, root) == layer_of(imp.target, root):
            graph.setdefault(imp.source, set()).add(imp.target)
    found, seen = [], set()
    for start in sorted(graph):
        stack = [(start, [start])]
        while stack:
            node, trail = stack.pop()
            for nxt in sorted(graph.get(node, ())):
                if nxt == start:
                    key = frozenset(trail)
                    if key not in seen:
                        seen.add(key)
                        found.append([*trail, start])
                elif nxt not in trail and nxt > start:  # each cycle found once, from its smallest module
                    stack.append((nxt, [*trail, nxt]))
    return found


def test_every_package_is_placed_in_the_order() -> None:
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    modules = {p.stem for p in SRC.glob("*.py")}
    unplaced = sorted((packages - set(LAYERS)) | (modules - set(MODULE_LAYERS) - set(LAYERS)))
    assert not unplaced, f"place these in tests/test_layers.py LAYERS (and docs/architecture.md): {unplaced}"


def test_packages_import_only_packages_below_them() -> None:
    imports = all_imports()
    assert len(imports) > 100  # the walk sees the code (a broken parser would pass vacuously)
    problems = violations(imports)
    assert not problems, "layer violations:\n" + "\n".join(problems)


def test_no_import_cycle_inside_a_package() -> None:
    imports = all_imports()
    found = cycles(imports)
    assert not found, "import cycles inside a package:\n" + "\n".join(" -> ".join(c) for c in found)


# ------------------------------------------------------------------------------------- the checker checks itself
def _write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_checker_sees_function_level_and_type_checking_imports_and_cycles(tmp_path: Path) -> None:
    fake = tmp_path / "src" / "cxrmtl"
    for rel in ("__init__.py", "eval/__init__.py", "report/__init__.py"):
        _write(fake, rel, "")
    _write(fake, "report/render.py", "X = 1\n")
    path = _write(fake, "eval/evaluate.py", (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from cxrmtl.report.render import X\n"
        "def f():\n"
        "    from cxrmtl.report import render\n"
        "    import cxrmtl.report.render\n"
        "from cxrmtl.eval import evaluate\n"
    ))
    found = violations(imports_of(path, fake), fake)
    assert [p.split(":")[1] for p in found] == ["3", "5", "6"]
    assert "eval sits below report" in found[0] and found[0].startswith("src/cxrmtl/eval/evaluate.py:3: ")
    _write(fake, "eval/a.py", "from cxrmtl.eval import b\n")
    _write(fake, "eval/b.py", "def g():\n    from .a import h\n")
    assert cycles(all_imports(fake), fake) == [["cxrmtl.eval.a", "cxrmtl.eval.b", "cxrmtl.eval.a"]]
    _write(fake, "newpkg/__init__.py", "from cxrmtl.eval import a\n")
    assert any("'newpkg' is not in the layer order" in p for p in violations(all_imports(fake), fake))
