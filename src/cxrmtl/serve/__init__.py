"""The triage service: FastAPI app, SQLite worklist store, dynamic batching, the radiologist's page.

Modules: ``app`` (routes), ``service`` (what the routes do: decode, score, store, heatmaps), ``store`` (SQLite +
content-addressed files), ``batching`` (dynamic batcher on the model thread), ``imaging`` (upload sniffing, DICOM
metadata, display and heatmap PNGs), ``security`` (API key, body limit, headers), ``metrics`` (Prometheus text),
``errors`` (the JSON error vocabulary), ``apidocs`` (the offline /docs page), ``static/`` (the page).
Only ``app`` and the middlewares import FastAPI/Starlette (the ``serve`` extra); ``require_extra`` says what to
install when they are missing. User guide: docs/serve.md.
"""

from __future__ import annotations

from cxrmtl.serve.errors import ServeError

# Import name -> distribution of the `serve` extra (pyproject.toml).
EXTRA_MODULES: dict[str, str] = {"fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart"}


def require_extra() -> None:
    """Raise ServeError naming the install command when a package of the ``serve`` extra cannot be imported."""
    import importlib

    missing = []
    for module, dist in EXTRA_MODULES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(dist)
    if missing:
        raise ServeError(f"the service needs the serve extra (missing: {', '.join(missing)}): "
                         'pip install "cxrmtl[serve]"')
