"""``cxrmtl serve RUN``: the triage service (HTTP API + the radiologist's worklist page) on one trained run.

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart); without it the command says what to install. Binds to
127.0.0.1 unless told otherwise, and refuses any other address without an API key file. API and page: docs/serve.md.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

ORDER = 70
log = logging.getLogger(__name__)


def serve_command(
    run: Path = typer.Argument(..., help="Run folder made by `cxrmtl train` (evaluated: thresholds, temperatures)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; other than loopback needs a key."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    db: Path | None = typer.Option(None, "--db", help="Worklist database (default RUN/serve/worklist.sqlite); "
                                                      "files go to a folder beside it."),
    api_key_file: Path | None = typer.Option(None, "--api-key-file", help="File with API key(s), one per line; "
                                                                          "required when --host is not loopback."),
    max_upload_mb: float = typer.Option(50.0, "--max-upload-mb", help="Largest upload accepted (MB)."),
    backend: str = typer.Option("auto", "--backend", help="auto, torch or onnx (as `cxrmtl predict`)."),
    upper_limit_minutes: float = typer.Option(60.0, "--upper-limit-minutes",
                                              help="A study waiting longer goes to the top of the worklist "
                                                   "(0: no limit)."),
    max_batch: int = typer.Option(16, "--max-batch", help="Most images per forward pass."),
    batch_window_ms: float = typer.Option(10.0, "--batch-window-ms",
                                          help="How long the first waiting image waits for others to join it."),
    decode_workers: int = typer.Option(2, "--decode-workers", help="Threads decoding uploads."),
    which: str = typer.Option("best", "--checkpoint", help="Checkpoint: best or last."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error."),
) -> None:
    """Serve the run: POST /v1/predict, the worklist under /v1/studies, /healthz, /metrics, the page at /."""
    from cxrmtl.errors import ConfigError
    from cxrmtl.serve import require_extra
    from cxrmtl.serve.security import check_bind, load_api_keys

    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level: {log_level!r} is not one of debug, info, warning, error")
    if which not in ("best", "last"):
        raise ConfigError(f"--checkpoint: {which!r} is not best or last")
    _check_numbers(port=port, max_upload_mb=max_upload_mb, upper_limit_minutes=upper_limit_minutes,
                   max_batch=max_batch, batch_window_ms=batch_window_ms, decode_workers=decode_workers)
    require_extra()
    keys = load_api_keys(api_key_file) if api_key_file is not None else ()
    check_bind(host, keys)  # before loading anything: an unsafe bind never starts
    if not run.is_dir():
        raise ConfigError(f"{run}: no such run folder")
    from cxrmtl.infer.engine import BACKENDS  # imports torch: after the cheap checks

    if backend not in BACKENDS:
        raise ConfigError(f"--backend: {backend!r} is not one of {', '.join(BACKENDS)}")

    import uvicorn

    from cxrmtl.serve.app import build_service, create_app
    from cxrmtl.serve.service import ServeSettings

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _silence_pydicom()
    settings = ServeSettings(max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_batch=max_batch,
                             batch_window_ms=batch_window_ms, upper_limit_minutes=upper_limit_minutes or None,
                             api_keys=keys, decode_workers=decode_workers, checkpoint=which)
    service = build_service(run, db=db or run / "serve" / "worklist.sqlite", settings=settings, backend=backend,
                            device=device)
    app = create_app(service)
    mode = f"API key required ({len(keys)} key(s))" if keys else "no API key (loopback only)"
    log.info("worklist database %s; %s; page at http://%s:%d/", service.store.db, mode,
             host if ":" not in host else f"[{host}]", port)
    uvicorn.run(app, host=host, port=port, log_level=log_level, log_config=None, server_header=False,
                timeout_keep_alive=5, timeout_graceful_shutdown=10)


def _check_numbers(*, port: int, max_upload_mb: float, upper_limit_minutes: float, max_batch: int,
                   batch_window_ms: float, decode_workers: int) -> None:
    """Range checks with one-line errors (ConfigError), before anything loads."""
    from cxrmtl.errors import ConfigError

    checks = [("--port", port, 0 <= port <= 65535, "between 0 and 65535"),
              ("--max-upload-mb", max_upload_mb, max_upload_mb > 0, "positive"),
              ("--upper-limit-minutes", upper_limit_minutes, upper_limit_minutes >= 0, "0 (no limit) or positive"),
              ("--max-batch", max_batch, max_batch >= 1, "at least 1"),
              ("--batch-window-ms", batch_window_ms, batch_window_ms >= 0, "0 or positive"),
              ("--decode-workers", decode_workers, decode_workers >= 1, "at least 1")]
    for name, value, ok, rule in checks:
        if not ok:
            raise ConfigError(f"{name}: must be {rule}, got {value}")


def _silence_pydicom() -> None:
    """pydicom's validation warnings quote element values (names, dates, ids): keep them out of the service log."""
    import warnings

    logging.getLogger("pydicom").disabled = True
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
