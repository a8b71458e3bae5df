"""The documentation a user reads points at things that exist and cites sources the user can reach.

- every ``docs/<page>.md`` named in src/, docs/, README.md or BENCHMARKS.md exists, and every page name a docs page
  mentions on its own (``phantom.md``) exists in docs/ or at the repository root;
- every relative Markdown link in README.md and docs/*.md resolves;
- no user-facing text cites files outside the repository (the project's internal notes, ``../shared/...``);
- docs/published.md and ``cxrmtl.eval.published`` hold the same numbers and sources.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cxrmtl import labels as L
from cxrmtl.eval.published import PUBLISHED

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
TOP_PAGES = (REPO / "README.md", REPO / "BENCHMARKS.md")
DOC_PATH = re.compile(r"(?<![\w./-])docs/([\w./-]+?\.md)\b")
PAGE_NAME = re.compile(r"(?<![\w./-])([\w-]+\.md)\b")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# Files the commands write, named in the docs.
OUTPUT_FILES = {"report.md", "ablation.md", "localization.md", "MODEL_CARD.md", "triage.md"}
# Files users of the package do not have: the project's internal design notes and the shared folder of the machine it
# was developed on. A number's source is its paper or the NIH release, cited where the number is.
FOREIGN = re.compile(r"FACTS\.md|DESIGN\.md|\.\./shared/")


def _user_text_files() -> list[Path]:
    return [*sorted((REPO / "src").rglob("*.py")), *sorted(DOCS.glob("*.md")), *TOP_PAGES]


def _lines(path: Path) -> list[tuple[int, str]]:
    return list(enumerate(path.read_text(encoding="utf-8").splitlines(), 1))


def test_every_cited_docs_page_exists() -> None:
    missing = [
        f"{path.relative_to(REPO)}:{n}: docs/{name}"
        for path in _user_text_files()
        for n, line in _lines(path)
        for name in DOC_PATH.findall(line)
        if not (DOCS / name).is_file()
    ]
    assert not missing, "cited but absent:\n" + "\n".join(missing)


def test_page_names_inside_docs_exist() -> None:
    missing = [
        f"{path.relative_to(REPO)}:{n}: {name}"
        for path in sorted(DOCS.glob("*.md"))
        for n, line in _lines(path)
        for name in PAGE_NAME.findall(DOC_PATH.sub("", line))
        if name not in OUTPUT_FILES and not (DOCS / name).is_file() and not (REPO / name).is_file()
    ]
    assert not missing, "page names that resolve nowhere:\n" + "\n".join(missing)


def test_relative_links_resolve() -> None:
    broken = []
    for path in [*sorted(DOCS.glob("*.md")), *TOP_PAGES]:
        for n, line in _lines(path):
            for target in LINK.findall(line):
                if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                    continue  # a URL or an anchor on the same page
                if not (path.parent / target.split("#", 1)[0]).exists():
                    broken.append(f"{path.relative_to(REPO)}:{n}: {target}")
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_no_user_facing_text_cites_files_users_do_not_have() -> None:
    cited = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in _user_text_files()
        for n, line in _lines(path)
        # The one allowed mention: where tests look for real NIH files by default (README, "Tests").
        if FOREIGN.search(line) and "CXRMTL_NIH_ROOT" not in line
    ]
    assert not cited, "cite the original source (paper, URL, NIH release) instead:\n" + "\n".join(cited)


def _published_rows() -> dict[str, list[float]]:
    rows = {}
    for line in (DOCS / "published.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and (cells[0] in L.FINDINGS or cells[0] == "mean (as reported)") and len(cells) == len(PUBLISHED) + 1:
            rows[cells[0]] = [float(c) for c in cells[1:]]
    return rows


def test_published_page_matches_the_package() -> None:
    rows = _published_rows()
    assert set(rows) == {*L.FINDINGS, "mean (as reported)"}
    for k, paper in enumerate(PUBLISHED):
        assert [rows[f][k] for f in L.FINDINGS] == pytest.approx(list(paper.auroc), abs=5e-5), paper.title
        assert rows["mean (as reported)"][k] == pytest.approx(paper.mean, abs=5e-4), paper.title
    text = (DOCS / "published.md").read_text(encoding="utf-8")
    for paper in PUBLISHED:
        assert paper.source in text and paper.title in text
    for finding, accuracy in L.WANG_IOBB05_ACCURACY.items():
        assert f"| {finding} | {accuracy:.3f} |" in text


def test_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """The patterns find a cited missing page, a foreign file and a broken link (no vacuous pass)."""
    assert DOC_PATH.findall("see docs/demo.md and docs/nope.md.") == ["demo.md", "nope.md"]
    assert FOREIGN.search("numbers from FACTS.md") and FOREIGN.search("in ../shared/data/nih")
    assert LINK.findall("[a](published.md) and [b](https://x.org/y) [c](#top)") == ["published.md", "https://x.org/y",
                                                                                    "#top"]
    assert PAGE_NAME.findall("user docs in `phantom.md`; see docs/cache.md") == ["phantom.md"]
