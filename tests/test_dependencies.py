"""pyproject.toml declares every third-party package the code imports (a missing one breaks a fresh install)."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src" / "cxrmtl"
# Import names whose distribution is not installed here (optional extras) and so unknown to importlib.metadata.
KNOWN_DISTRIBUTIONS: dict[str, str] = {"cv2": "opencv-python-headless", "PIL": "pillow", "sklearn": "scikit-learn",
                                       "yaml": "pyyaml", "pytorch_grad_cam": "grad-cam"}
# Submodules that need a package of their own although their top-level package is torch.
INDIRECT: dict[str, str] = {"torch.utils.tensorboard": "tensorboard"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = [*project["dependencies"], *(s for extra in project["optional-dependencies"].values() for s in extra)]
    return {normalise(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]) for spec in specs}


def imported_modules() -> dict[str, set[str]]:
    """Every absolute import in src/cxrmtl (top level and inside functions) -> the files that import it."""
    found: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                found.setdefault(name, set()).add(str(path.relative_to(REPO)))
    return found


def distributions_for(module: str, installed: dict[str, list[str]]) -> set[str]:
    top = module.split(".")[0]
    names = set(installed.get(top, ()))
    if top in KNOWN_DISTRIBUTIONS:
        names.add(KNOWN_DISTRIBUTIONS[top])
    return {normalise(n) for n in names} or {normalise(top)}


def test_every_third_party_import_is_declared() -> None:
    have, installed = declared(), packages_distributions()  # the latter scans every installed package: once
    missing = {}
    for module, files in imported_modules().items():
        top = module.split(".")[0]
        if top in sys.stdlib_module_names or top in ("cxrmtl", "__future__"):
            continue
        needed = {normalise(INDIRECT[module])} if module in INDIRECT else distributions_for(module, installed)
        if not needed & have:
            missing[module] = (sorted(needed), sorted(files))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_cli_library_is_pinned_to_a_tested_minor() -> None:
    """An unbounded ``typer>=`` broke the CLI once (typer 0.29 vendored its own click): keep an upper bound."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    typer = [spec for spec in project["dependencies"] if normalise(spec).startswith("typer")]
    assert len(typer) == 1 and "<" in typer[0], typer
