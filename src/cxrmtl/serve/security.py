"""Who may talk to the service and how much they may send: API keys, bind policy, body limits, response headers.

- Binding: loopback (127.0.0.1, ::1, localhost) by default. Binding anywhere else needs API keys; ``check_bind``
  refuses to start without them.
- API keys: one per line in a key file (blank lines and ``#`` comments skipped, at least ``MIN_KEY_LENGTH``
  characters). A request presents its key as ``X-API-Key: KEY``, ``Authorization: Bearer KEY`` or HTTP Basic with
  the key as password (what a browser sends after its login prompt, so the page's images load too). Every key is
  compared with ``hmac.compare_digest`` (constant time), all of them, whatever matched first. Every route needs the
  key in key mode except ``/healthz``.
- Body limits: an upload (multipart) body may hold at most ``max_upload_bytes``, any other body ``JSON_BODY_LIMIT``.
  The limit is enforced while the body is read: a Content-Length above it is answered 413 before reading; otherwise
  the body is counted chunk by chunk and the request is answered 413 as soon as the count passes the limit (the rest
  is never read). Only then does the application see the body.
- Headers: every response gets ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``, a
  Content-Security-Policy that lets the page load and connect to this origin only, and API answers
  ``Cache-Control: no-store`` (they carry patient data). No CORS middleware: browsers refuse cross-origin reads.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxrmtl.serve.errors import ApiError, ServeError, send_error

MIN_KEY_LENGTH = 16
JSON_BODY_LIMIT = 1024 * 1024  # any non-upload body (the JSON of POST .../read is a few bytes)
UNAUTHENTICATED_PATHS = frozenset({"/healthz"})
LOOPBACK_NAMES = frozenset({"localhost"})
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
                           "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_api_keys(path: Path) -> tuple[str, ...]:
    """The keys of a key file (one per line); ServeError naming the file when it is unusable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ServeError(f"--api-key-file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from exc
    keys = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#"))
    if not keys:
        raise ServeError(f"--api-key-file {path}: holds no key (one key per line)")
    short = [i + 1 for i, key in enumerate(keys) if len(key) < MIN_KEY_LENGTH]
    if short:
        raise ServeError(f"--api-key-file {path}: key {short[0]} is shorter than {MIN_KEY_LENGTH} characters "
                         "(use e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    if any(not key.isprintable() or " " in key for key in keys):
        raise ServeError(f"--api-key-file {path}: keys must be printable characters without spaces")
    return keys


def check_bind(host: str, keys: Sequence[str]) -> None:
    """Refuse to listen beyond this machine without API keys."""
    if not is_loopback(host) and not keys:
        raise ServeError(f"--host {host}: listening beyond this machine needs API keys (--api-key-file FILE); "
                         "without keys the service only binds to 127.0.0.1")


def key_matches(candidate: str | None, keys: Sequence[str]) -> bool:
    """Constant-time comparison of ``candidate`` with every key (no early exit on the first match)."""
    if candidate is None:
        return False
    given = candidate.encode("utf-8", "replace")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode("utf-8"))
    return matched


def presented_key(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The key a request carries: X-API-Key, Authorization Bearer, or the password of Authorization Basic."""
    values = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in headers}
    if "x-api-key" in values:
        return values["x-api-key"].strip()
    scheme, _, param = values.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        return param.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(param.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


class ApiKeyMiddleware:
    """ASGI middleware: in key mode, answer 401 (JSON, with a Basic challenge for browsers) without a valid key."""

    def __init__(self, app: Any, *, keys: Sequence[str]) -> None:
        self.app = app
        self.keys = tuple(keys)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.keys or scope.get("path") in UNAUTHENTICATED_PATHS:
            await self.app(scope, receive, send)
            return
        if key_matches(presented_key(scope.get("headers", [])), self.keys):
            await self.app(scope, receive, send)
            return
        scope["cxrmtl.rejected"] = "unauthorized"
        await send_error(send, ApiError("unauthorized", "missing or wrong API key (send X-API-Key: KEY)",
                                        headers={"WWW-Authenticate": 'Basic realm="cxrmtl", charset="UTF-8"'}))


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


class BodyLimitMiddleware:
    """ASGI middleware: read the whole body under its limit (413 as soon as it is passed), then hand it on."""

    def __init__(self, app: Any, *, max_upload_bytes: int, json_limit: int = JSON_BODY_LIMIT) -> None:
        self.app = app
        self.max_upload_bytes = int(max_upload_bytes)
        self.json_limit = int(json_limit)

    def limit_for(self, scope: dict[str, Any]) -> int:
        content_type = (_header(scope, b"content-type") or "").lower()
        return self.max_upload_bytes if content_type.startswith("multipart/form-data") else self.json_limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        too_large = ApiError("payload_too_large", f"request body above the limit of {limit:,} bytes")
        declared = _header(scope, b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            scope["cxrmtl.rejected"] = "payload_too_large"
            await send_error(send, too_large)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away; nothing to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                scope["cxrmtl.rejected"] = "payload_too_large"
                await send_error(send, too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect like the server would

        await self.app(scope, replay, send)


class SecurityHeadersMiddleware:
    """ASGI middleware adding the headers of the module docstring to every HTTP response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = str(scope.get("path", "")).startswith(("/v1/", "/metrics", "/healthz"))

        async def with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                         (b"x-frame-options", b"DENY")]
                if api:
                    extra.append((b"cache-control", b"no-store"))
                headers += [(k, v) for k, v in extra if k not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
