"""The /docs page: the OpenAPI document rendered as plain HTML on the server (no script, no CDN, works offline).

FastAPI's default /docs (Swagger UI) loads its script and CSS from a CDN; a hospital network may not reach it and
the page must not make requests elsewhere, so the service renders its own reference from ``app.openapi()`` and
serves the raw document at /openapi.json for tools.
"""

from __future__ import annotations

import html
from typing import Any

from cxrmtl.serve.errors import ERRORS

METHODS: tuple[str, ...] = ("get", "post", "put", "patch", "delete")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _schema_text(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " | ".join(_schema_text(s) for s in schema["anyOf"])
    text = schema.get("type", schema.get("$ref", "").rsplit("/", 1)[-1] or "any")
    extras = [f"{k} {schema[k]}" for k in ("pattern", "minimum", "maximum", "default") if k in schema]
    return text + (f" ({', '.join(extras)})" if extras else "")


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    rows = []
    for p in op.get("parameters", []):
        rows.append(f"<tr><td><code>{_e(p['name'])}</code></td><td>{_e(p['in'])}</td>"
                    f"<td>{'yes' if p.get('required') else 'no'}</td><td>{_e(_schema_text(p.get('schema', {})))}</td>"
                    f"<td>{_e(p.get('description', ''))}</td></tr>")
    body = op.get("requestBody", {}).get("content", {})
    if body:
        rows.append(f"<tr><td><code>body</code></td><td>{_e(', '.join(body))}</td>"
                    f"<td>{'yes' if op['requestBody'].get('required') else 'no'}</td><td colspan=2></td></tr>")
    params = ("<table><thead><tr><th>name</th><th>in</th><th>required</th><th>type</th><th>meaning</th></tr>"
              f"</thead><tbody>{''.join(rows)}</tbody></table>") if rows else ""
    responses = ", ".join(f"{_e(code)} {_e(r.get('description', ''))}" for code, r in op.get("responses", {}).items())
    return (f"<section class='op'><h3><span class='method {method}'>{method.upper()}</span> <code>{_e(path)}</code>"
            f"</h3><p>{_e(op.get('description') or op.get('summary', ''))}</p>{params}"
            f"<p class='muted'>Responses: {responses}</p></section>")


def docs_html(spec: dict[str, Any]) -> str:
    """A self-contained HTML reference of an OpenAPI document (links: /openapi.json, the page)."""
    ops = [_operation(path, m, item[m]) for path, item in spec.get("paths", {}).items() for m in METHODS if m in item]
    errors = "".join(f"<tr><td><code>{_e(code)}</code></td><td>{status}</td><td>{_e(text)}</td></tr>"
                     for code, (status, text) in ERRORS.items())
    info = spec.get("info", {})
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(info.get('title', 'API'))} {_e(info.get('version', ''))}: API reference</title>
<link rel="icon" href="data:,"><link rel="stylesheet" href="/static/style.css"></head>
<body class="docs"><main class="docs-main">
<h1>{_e(info.get('title', 'API'))} <span class="muted">{_e(info.get('version', ''))}</span></h1>
<p>{_e(info.get('description', ''))}</p>
<p>Machine-readable: <a href="/openapi.json">/openapi.json</a>. Worklist page: <a href="/">/</a>.
In API-key mode send <code>X-API-Key: KEY</code> with every request except <code>/healthz</code>.</p>
{''.join(ops)}
<section class="op"><h2>Errors</h2>
<p>Every error answer is <code>{{"error": {{"code": ..., "message": ...}}}}</code>.</p>
<table><thead><tr><th>code</th><th>status</th><th>when</th></tr></thead><tbody>{errors}</tbody></table></section>
</main></body></html>"""
