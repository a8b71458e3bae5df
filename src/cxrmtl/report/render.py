"""The evaluation report: report.md and a self-contained report.html built from metrics.json and figures.

Every part of the report is a ``Section`` (title, Markdown body, HTML body, figures). The core sections are made
from the metrics document here; other modules (localization, ablation) make their own Sections and pass them to
``render_report(..., sections=[...])``. report.html inlines figures as base64 PNG and its CSS, so it opens offline
and makes no external request; report.md refers to the same PNGs written to ``figures/``.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cxrmtl.errors import EvaluationError
from cxrmtl.eval.published import PUBLISHED, PUBLISHED_FINDINGS
from cxrmtl.fsio import atomic_write_bytes


@dataclass(frozen=True)
class Figure:
    """One image of the report: a caption, PNG bytes and a file stem (``figures/<name>.png`` next to report.md)."""

    caption: str
    png: bytes
    name: str = ""

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass(frozen=True)
class Section:
    """A report section: Markdown for report.md, a trusted HTML fragment for report.html, optional figures."""

    title: str
    markdown: str
    html: str
    figures: tuple[Figure, ...] = ()
    note: str = ""

    def to_json(self) -> dict[str, object]:
        """JSON form (figures base64) so a section made by another command can be passed as a file."""
        return {
            "title": self.title,
            "markdown": self.markdown,
            "html": self.html,
            "note": self.note,
            "figures": [
                {"caption": f.caption, "name": f.name, "png": base64.b64encode(f.png).decode("ascii")}
                for f in self.figures
            ],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, object], *, where: str = "section") -> Section:
        """Inverse of to_json; EvaluationError naming ``where`` and the field when the document is malformed."""
        try:
            figures = tuple(
                Figure(caption=str(f["caption"]), png=base64.b64decode(str(f["png"]), validate=True),
                       name=str(f.get("name", "")))
                for f in doc.get("figures", [])  # type: ignore[union-attr]
            )
            return cls(title=str(doc["title"]), markdown=str(doc.get("markdown", "")), html=str(doc.get("html", "")),
                       figures=figures, note=str(doc.get("note", "")))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise EvaluationError(f"{where}: malformed section document ({exc.__class__.__name__}: {exc})") from exc


def load_section(path: Path) -> Section:
    """Read a Section written with ``Section.to_json`` (e.g. by ``cxrmtl ablate``)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvaluationError(f"{path}: cannot read section JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise EvaluationError(f"{path}: a section file must hold one JSON object")
    return Section.from_json(doc, where=str(path))


def _cell(value: object) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; None shows as n/a, floats with 3 decimals, '|' escaped."""

    def esc(value: object) -> str:
        return _cell(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Cell:
    """A table cell with a CSS class (e.g. "flag" to highlight a flagged subgroup)."""

    text: object
    css: str = ""
    sub: str = ""  # a second, smaller line in HTML (appended in parentheses in Markdown)

    def __str__(self) -> str:
        return _cell(self.text) + (f" ({self.sub})" if self.sub else "")


def html_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, classes: str = "") -> str:
    """An HTML table with escaped content; a ``Cell`` carries its own CSS class."""

    def td(value: object) -> str:
        if not isinstance(value, Cell):
            return f"<td>{html.escape(_cell(value))}</td>"
        css = f' class="{html.escape(value.css)}"' if value.css else ""
        sub = f'<br><span class="sub">{html.escape(value.sub)}</span>' if value.sub else ""
        return f"<td{css}>{html.escape(_cell(value.text))}{sub}</td>"

    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(td(v) for v in row) + "</tr>" for row in rows)
    cls = f' class="{html.escape(classes)}"' if classes else ""
    return f'<div class="scroll"><table{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def table_section(
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    *,
    note: str = "",
    intro: str = "",
    outro: str = "",
    figures: Sequence[Figure] = (),
) -> Section:
    """The common case: a table with a sentence before and after (plain text, escaped in HTML)."""
    md_rows = [[str(v) if isinstance(v, Cell) else v for v in row] for row in rows]
    markdown = "\n\n".join(p for p in (intro, markdown_table(headers, md_rows), outro) if p)
    parts = [f"<p>{html.escape(intro)}</p>" if intro else "", html_table(headers, rows)]
    parts.append(f'<p class="small">{html.escape(outro)}</p>' if outro else "")
    return Section(title=title, markdown=markdown, html="".join(parts), figures=tuple(figures), note=note)


@dataclass(frozen=True)
class ReportData:
    """What the core report is made from: the metrics.json document and the figures drawn for it."""

    metrics: Mapping[str, object]
    figures: tuple[Figure, ...] = ()
    title: str = "cxrmtl evaluation"


@dataclass(frozen=True)
class ReportPaths:
    markdown: Path
    html: Path
    figures: tuple[Path, ...] = field(default_factory=tuple)


# ------------------------------------------------------------------------------------------------ core sections
def _ci(interval: Mapping[str, object] | None) -> str:
    if not interval or interval.get("value") is None:
        return "n/a"
    low, high = interval.get("low"), interval.get("high")
    ci = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{interval['value']:.3f}{ci}"


def _ci_row(row: Mapping[str, object]) -> str:
    """_ci of a subgroup or expert row, whose point estimate is stored under "auroc"."""
    return _ci({"value": row.get("auroc"), "low": row.get("low"), "high": row.get("high")})


def _tasks(metrics: Mapping[str, object]) -> Mapping[str, Mapping[str, object]]:
    return metrics.get("tasks", {})  # type: ignore[return-value]


def _findings(metrics: Mapping[str, object]) -> Mapping[str, object]:
    return metrics.get("findings", {}) or {}  # type: ignore[return-value]


def _data(metrics: Mapping[str, object]) -> Mapping[str, object]:
    return metrics.get("data", {}) or {}  # type: ignore[return-value]


def comparable(metrics: Mapping[str, object]) -> bool:
    """True only when the numbers come from the complete official NIH test split (``eval.datakind``)."""
    data = _data(metrics)
    if "comparable" in data:
        return bool(data["comparable"])
    return data.get("kind") == "nih" and metrics.get("split") == "test"


def data_label(metrics: Mapping[str, object]) -> str:
    """Human label of the data and split, shown next to every number (``eval.datakind.DataDescription.label``)."""
    data = _data(metrics)
    if data.get("label"):
        return str(data["label"])
    kind = {"nih": "NIH ChestX-ray14", "phantom": "PHANTOM", "subset": "NIH-layout subset"}.get(
        str(data.get("kind")), "unknown data"
    )
    split = str(metrics.get("split", "?"))
    return f"{kind}, {'official test split' if comparable(metrics) else f'{split} split'}"


def banners(metrics: Mapping[str, object]) -> list[tuple[str, str]]:
    """(css class, text) warnings shown above everything: phantom data, partial data, validation split."""
    data = _data(metrics)
    kind = data.get("kind")
    out = []
    if data.get("banner"):
        out.append(("danger" if kind == "phantom" else "warn", str(data["banner"])))
    elif kind == "phantom":
        out.append(("danger", "PHANTOM DATA: not comparable to published numbers"))
    elif not comparable(metrics):
        n = metrics.get("n_images")
        out.append(("warn", f"SUBSET: {n} images evaluated, not the complete official NIH test split: not "
                            "comparable to published numbers"))
    if metrics.get("split") != "test":
        out.append(("warn", f"Evaluated on the {metrics.get('split')} split, not the official test split"))
    return out


def _summary_section(metrics: Mapping[str, object]) -> Section | None:
    tasks, findings = _tasks(metrics), _findings(metrics)
    items: list[tuple[str, str]] = []
    if findings.get("auroc_mean"):
        mean = findings["auroc_mean"]
        items.append(("Mean AUROC", _ci(mean)))
        items.append(("Findings evaluated", f"{mean.get('n_outputs', 0)} of {len(findings.get('names', []))}"))
    auprc = tasks.get("findings", {}).get("summary", {}).get("auprc_mean")
    if auprc:
        items.append(("Mean AUPRC", _ci(auprc)))
    for task, key, label in (("abnormal", "auroc", "Abnormal AUROC"), ("sex", "auroc", "Sex AUROC"),
                             ("view", "auroc", "View AUROC"), ("age", "mae", "Age MAE (years)")):
        outputs = tasks.get(task, {}).get("outputs", {})
        if outputs:
            items.append((label, _ci(next(iter(outputs.values())).get(key))))
    flagged = [r for r in findings.get("subgroups", []) if r.get("flagged")]
    if findings.get("subgroups"):
        items.append(("Flagged subgroups", str(len(flagged))))
    items.append(("Images / patients", f"{metrics.get('n_images')} / {metrics.get('n_patients')}"))
    markdown = "\n".join(f"- **{k}**: {v}" for k, v in items) + "\n"
    cards = "".join(f'<div class="card"><div class="k">{html.escape(k)}</div><div class="v">{html.escape(v)}</div>'
                    "</div>" for k, v in items)
    note = f"{data_label(metrics)}; 95 % CIs from a patient-clustered bootstrap"
    return Section(title="Summary", markdown=markdown, html=f'<div class="cards">{cards}</div>', note=note)


def _classification_rows(task: Mapping[str, object]) -> list[list[object]]:
    rows = []
    for name, out in task.get("outputs", {}).items():
        cal = out.get("calibration", {})
        temp = cal.get("temperature")
        temp_text = "n/a" if temp is None else f"{temp:.3g}" + (" (bound)" if cal.get("temperature_at_bound") else "")
        rows.append([name, out.get("n_pos"), out.get("prevalence"), _ci(out.get("auroc")), _ci(out.get("auprc")),
                     cal.get("ece"), cal.get("ece_scaled"), temp_text])
    return rows


def _findings_section(metrics: Mapping[str, object]) -> Section | None:
    rows = []
    for name, task in _tasks(metrics).items():
        if task.get("kind") in ("multilabel", "binary"):
            rows += [[name, *row] for row in _classification_rows(task)]
    if not rows:
        return None
    headers = ["task", "output", "positives", "prevalence", "AUROC [95% CI]", "AUPRC [95% CI]", "ECE",
               "ECE after T", "T"]
    outro = ("n/a = undefined (no positives or no negatives in this split) or not available (no validation "
             "predictions for temperature scaling). T = temperature fitted on the validation split; (bound) = the fit "
             "hit its search limit, i.e. one temperature cannot calibrate this output.")
    return table_section("Per-output discrimination and calibration", headers, rows, note=data_label(metrics),
                         outro=outro)


def mean_label(mean: Mapping[str, object] | None, names: Sequence[str]) -> str:
    """The mean row's label: says when ours averages fewer findings than the papers' 14."""
    n_defined = int((mean or {}).get("n_outputs", len(names)) or 0)
    total = len(PUBLISHED_FINDINGS)
    if n_defined == total:
        return f"mean over {total} findings"
    parts = [f"{len(names) - n_defined} undefined"] if n_defined < len(names) else []
    parts += [f"{total - len(names)} not predicted"] if len(names) < total else []
    return f"mean over {n_defined} of {total} findings ({', '.join(parts)})"


def _published_rows(auroc: Mapping[str, object], mean: Mapping[str, object] | None, *, ours: bool) -> list[list]:
    """Per finding, then the papers' reported means; when ours covers fewer findings, also the papers' mean over
    exactly the findings ours is defined on, so a like-for-like mean sits next to ours."""
    names = list(auroc)
    if not ours:
        rows = [[name, *(p.by_finding()[name] for p in PUBLISHED)] for name in names]
        return [*rows, [f"mean over {len(PUBLISHED_FINDINGS)} findings", *(p.mean for p in PUBLISHED)]]
    rows = [[name, _ci(auroc.get(name)), *(p.by_finding()[name] for p in PUBLISHED)] for name in names]
    rows.append([mean_label(mean, names), _ci(mean), *(p.mean for p in PUBLISHED)])
    defined = [n for n in names if (auroc.get(n) or {}).get("value") is not None]
    if 0 < len(defined) < len(PUBLISHED_FINDINGS):
        same = [sum(p.by_finding()[n] for n in defined) / len(defined) for p in PUBLISHED]
        rows.append([f"papers' mean over the same {len(defined)} findings", "", *same])
    return rows


def _published_section(metrics: Mapping[str, object]) -> Section | None:
    auroc = _findings(metrics).get("auroc", {})
    if not auroc:
        return None
    mean = _findings(metrics).get("auroc_mean")
    papers = [f"{p.title} ({p.split} split)" for p in PUBLISHED]
    outro = "Sources: " + "; ".join(p.source for p in PUBLISHED) + " (docs/published.md)."
    if not comparable(metrics):
        # Never side by side with ours: these numbers are not comparable (phantom, a subset, or another split).
        intro = (f"For reference only. Our numbers are not listed here: they come from {data_label(metrics)}, and "
                 "only the complete official NIH test split is comparable with these papers. Numbers on the official "
                 "split and on a random patient split are not comparable with each other either.")
        return table_section("Published results (reference only)", ["finding", *papers],
                             _published_rows(auroc, mean, ours=False), intro=intro, outro=outro,
                             note="not comparable with this evaluation")
    intro = ("Published per-finding AUROC. Numbers on the official split and on a random patient split are not "
             "comparable with each other; ours are on the official test split.")
    headers = ["finding", f"ours ({data_label(metrics)})", *papers]
    return table_section("Comparison with published results", headers, _published_rows(auroc, mean, ours=True),
                         intro=intro, outro=outro, note=data_label(metrics))


def _operating_section(metrics: Mapping[str, object]) -> Section | None:
    rows = []
    for tname, task in _tasks(metrics).items():
        for name, out in task.get("outputs", {}).items():
            for method, op in (out.get("operating_points") or {}).items():
                rows.append([f"{tname}/{name}" if tname != "findings" else name, method, op.get("threshold"),
                             op.get("sensitivity"), op.get("specificity"), op.get("ppv"), op.get("npv"), op.get("f1")])
    if not rows:
        return None
    source = metrics.get("thresholds_from")
    intro = (f"Thresholds chosen on the {source} split only (Youden's J, and the most specific threshold reaching "
             f"the target sensitivity), then applied unchanged to the {metrics.get('split')} split.")
    headers = ["output", "rule", "threshold", "sensitivity", "specificity", "PPV", "NPV", "F1"]
    return table_section("Operating points", headers, rows, intro=intro)


def _regression_section(metrics: Mapping[str, object]) -> Section | None:
    rows = [[tname, name, out.get("n"), _ci(out.get("mae"))]
            for tname, task in _tasks(metrics).items() if task.get("kind") == "regression"
            for name, out in task.get("outputs", {}).items()]
    if not rows:
        return None
    return table_section("Regression tasks", ["task", "output", "n", "MAE [95% CI]"], rows)


def _subgroup_section(metrics: Mapping[str, object]) -> Section | None:
    sub = _findings(metrics).get("subgroups", [])
    if not sub:
        return None
    groups = list(dict.fromkeys((r["attribute"], r["group"]) for r in sub))
    table: dict[str, dict[tuple[str, str], Mapping[str, object]]] = {}
    for r in sub:
        table.setdefault(r["finding"], {})[(r["attribute"], r["group"])] = r
    headers = ["finding", "overall"] + [f"{a}: {g}" for a, g in groups]
    rows = []
    for finding, cells in table.items():
        first = next(iter(cells.values()))
        row: list[object] = [finding, _cell(first.get("overall"))]
        for key in groups:
            r = cells.get(key)
            if r is None:
                row.append(Cell("n/a"))
                continue
            ci = f"[{r['low']:.2f}, {r['high']:.2f}] " if r.get("low") is not None else ""
            row.append(Cell(r.get("auroc"), "flag" if r.get("flagged") else "", f"{ci}n+={r.get('n_pos')}"))
        rows.append(row)
    n_flag = sum(bool(r.get("flagged")) for r in sub)
    intro = (f"AUROC per finding within each subgroup, with 95 % CIs from the same patient bootstrap. {n_flag} "
             "cell(s) flagged: a subgroup is flagged (highlighted, marked with *) when the upper end of its CI lies "
             "below the finding's overall AUROC.")
    md_rows = [[str(c) + (" *" if isinstance(c, Cell) and c.css == "flag" else "") for c in row] for row in rows]
    section = table_section("Subgroups", headers, rows, intro=intro)
    md = "\n\n".join([intro, markdown_table(headers, md_rows)])
    return Section(title=section.title, markdown=md, html=section.html, note=data_label(metrics))


def _expert_section(metrics: Mapping[str, object]) -> Section | None:
    rows = [[r["label"], " / ".join(r["findings"]), r["n"], r["n_pos"], _ci_row(r)]
            for r in _findings(metrics).get("expert", [])]
    if not rows:
        return None
    intro = ("AUROC against Google's expert labels (Majkowska et al., Radiology 2020) on the images of this split "
             "they cover. Each expert label is scored by the maximum probability of the listed findings; Fracture "
             "has no ChestX-ray14 counterpart.")
    headers = ["expert label", "max of findings", "images", "positives", "AUROC [95% CI]"]
    return table_section("Expert labels", headers, rows, intro=intro, note=data_label(metrics))


def _figures_section(figures: Sequence[Figure]) -> Section | None:
    if not figures:
        return None
    return Section(title="Figures", markdown="", html="", figures=tuple(figures))


CORE_SECTIONS: tuple[Callable[[Mapping[str, object]], Section | None], ...] = (
    _summary_section,
    _findings_section,
    _published_section,
    _operating_section,
    _regression_section,
    _subgroup_section,
    _expert_section,
)


# ------------------------------------------------------------------------------------------------ rendering
_CSS = """
:root{--fg:#1d2330;--muted:#5b6475;--line:#e2e6ee;--accent:#2356c7;--bg:#f6f8fb}
*{box-sizing:border-box}body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
main{max-width:1200px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:0 0 6px;color:var(--accent)}
.meta{color:var(--muted);font-size:12px;margin-bottom:14px}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:16px 20px;margin:16px 0;
box-shadow:0 1px 2px rgba(0,0,0,.04)}
.note{color:var(--muted);font-size:12px;margin:-2px 0 10px}.small{color:var(--muted);font-size:12px}
.banner{padding:12px 16px;border-radius:8px;font-weight:700;margin:10px 0;letter-spacing:.2px}
.banner.danger{background:#fde8e8;color:#9b1c1c;border:2px solid #e02424}
.banner.warn{background:#fdf6b2;color:#723b13;border:1px solid #e3a008}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:10px}
.card{border:1px solid var(--line);border-radius:8px;padding:10px 12px;background:#fbfcfe}
.card .k{font-size:12px;color:var(--muted)}.card .v{font-size:16px;font-weight:600}
.scroll{overflow-x:auto}.sub{font-size:11px;color:var(--muted)}td.flag .sub{color:#9b1c1c}
table{border-collapse:collapse;width:100%;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:5px 9px;border-bottom:1px solid var(--line);text-align:left;white-space:nowrap}
th{background:#f0f3f9;position:sticky;top:0;font-weight:600}tbody tr:nth-child(even){background:#fafbfd}
tbody tr:hover{background:#eef3ff}td.flag{background:#fde8e8;color:#9b1c1c;font-weight:600}
figure{margin:14px 0}figure img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px}
figcaption{color:var(--muted);font-size:12px;margin-top:4px}
nav a{color:var(--accent);text-decoration:none;margin-right:12px;font-size:13px}
"""


def _anchor(index: int) -> str:
    return f"s{index}"


def _html_document(data: ReportData, sections: Sequence[Section]) -> str:
    m = data.metrics
    meta = " · ".join(html.escape(str(x)) for x in (
        f"run: {m.get('run', '?')}", f"split: {m.get('split', '?')}", f"data: {data_label(m)}",
        f"code: {m.get('code_version', '?')}", f"created: {m.get('created', '?')}") if x)
    parts = [f"<h1>{html.escape(data.title)}</h1>", f'<div class="meta">{meta}</div>']
    parts += [f'<div class="banner {css}">{html.escape(text)}</div>' for css, text in banners(m)]
    parts.append("<nav>" + "".join(f'<a href="#{_anchor(i)}">{html.escape(s.title)}</a>'
                                   for i, s in enumerate(sections)) + "</nav>")
    for i, s in enumerate(sections):
        note = f'<div class="note">{html.escape(s.note)}</div>' if s.note else ""
        figs = "".join(f'<figure><img src="{f.data_uri()}" alt="{html.escape(f.caption)}">'
                       f"<figcaption>{html.escape(f.caption)}</figcaption></figure>" for f in s.figures)
        parts.append(f'<section id="{_anchor(i)}"><h2>{html.escape(s.title)}</h2>{note}{s.html}{figs}</section>')
    body = "\n".join(parts)
    # The CSP forbids every network fetch: the page can only use what it carries (inline style, data: images).
    csp = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(data.title)}</title><style>{_CSS}</style></head>"
            f"<body><main>\n{body}\n</main></body></html>\n")


def _markdown_document(data: ReportData, sections: Sequence[Section], figure_files: Mapping[int, str]) -> str:
    m = data.metrics
    lines = [f"# {data.title}", "",
             f"run: `{m.get('run', '?')}` · split: {m.get('split', '?')} · data: {data_label(m)} · "
             f"code: {m.get('code_version', '?')} · created: {m.get('created', '?')}", ""]
    lines += [f"> **{text}**\n" for _, text in banners(m)]
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.note:
            lines += [f"_{s.note}_", ""]
        if s.markdown:
            lines += [s.markdown.rstrip(), ""]
        lines += [f"![{f.caption}]({figure_files[id(f)]})\n" for f in s.figures]
    return "\n".join(lines).rstrip() + "\n"


def _write_figures(sections: Sequence[Section], folder: Path) -> tuple[dict[int, str], list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    names: dict[int, str] = {}
    written: list[Path] = []
    used: set[str] = set()
    for i, s in enumerate(sections):
        for j, f in enumerate(s.figures):
            stem = f.name or f"section{i}_figure{j}"
            while stem in used:
                stem += "_"
            used.add(stem)
            path = folder / f"{stem}.png"
            atomic_write_bytes(path, f.png)
            names[id(f)] = f"{folder.name}/{path.name}"
            written.append(path)
    return names, written


def build_sections(data: ReportData, extra: Sequence[Section] = ()) -> list[Section]:
    """Core sections (those with content) + the figures + extra sections, in report order."""
    core = [s for s in (make(data.metrics) for make in CORE_SECTIONS) if s is not None]
    figures = _figures_section(data.figures)
    return core + ([figures] if figures else []) + list(extra)


def render_report(data: ReportData, *, out_dir: Path, sections: Sequence[Section] = ()) -> ReportPaths:
    """Write out_dir/report.md, out_dir/report.html and out_dir/figures/*.png (each file atomically)."""
    for s in sections:
        if not isinstance(s, Section):
            raise EvaluationError(f"sections: expected Section objects, got {type(s).__name__}")
    out_dir = Path(out_dir)
    all_sections = build_sections(data, sections)
    names, written = _write_figures(all_sections, out_dir / "figures")
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    atomic_write_bytes(md_path, _markdown_document(data, all_sections, names).encode("utf-8"))
    atomic_write_bytes(html_path, _html_document(data, all_sections).encode("utf-8"))
    return ReportPaths(markdown=md_path, html=html_path, figures=tuple(written))
