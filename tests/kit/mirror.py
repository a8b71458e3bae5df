"""A local stand-in for the NIH release: a tiny generated release and an HTTP server on 127.0.0.1 that serves it.

``tiny_release(folder)`` writes a small phantom (``cxrmtl.phantom.generate.write_phantom``) and packs its PNGs into
the 12 archives ``images_001.tar.gz`` .. ``images_012.tar.gz`` (each holds ``images/*.png``, as NIH's do), next to
the metadata files under their release names. ``MirrorServer`` serves such a dict of files with real HTTP
semantics (HEAD, Range requests answered 206 with Content-Range, 416 past the end) plus knobs that reproduce what
goes wrong on the way: a connection closed after K bytes, a server that ignores Range, a damaged copy, an error
status, a redirect (Box answers its static links with one). Every request is logged.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cxrmtl.data import release


@dataclass(frozen=True)
class Request:
    method: str
    name: str
    range: str | None
    status: int


@dataclass
class Knobs:
    drop_after: dict[str, int] = field(default_factory=dict)  # name -> bytes sent before closing (once)
    corrupt: dict[str, int] = field(default_factory=dict)  # name -> how many GETs get a damaged copy
    status: dict[str, list[int]] = field(default_factory=dict)  # name -> statuses answered first (then the file)
    stall_after: dict[str, int] = field(default_factory=dict)  # name -> bytes sent before waiting for `release`
    release: threading.Event = field(default_factory=threading.Event)  # set it to end every stall (then close)
    ignore_range: bool = False
    redirect: bool = False  # /NAME answers 302 -> /files/NAME


def pack_archive(members: dict[str, bytes]) -> bytes:
    """A deterministic .tar.gz of ``members`` (tar path -> bytes), with an ``images/`` folder entry first."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        folder = tarfile.TarInfo("images")
        folder.type, folder.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(folder)
        for path, data in members.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def tiny_release(folder: Path, *, patients: int = 12, size: int = 32) -> dict[str, bytes]:
    """Files of a tiny release (release name -> bytes): 12 archives + Data_Entry (v2020 name), BBox, split lists."""
    from cxrmtl.phantom.generate import write_phantom

    root = folder / "phantom"
    write_phantom(root, patients=patients, size=size, seed=0)
    pngs = sorted(root.glob("images_*/images/*.png"))
    files: dict[str, bytes] = {}
    for k, name in enumerate(release.ARCHIVE_NAMES):
        share = pngs[k :: len(release.ARCHIVE_NAMES)]
        files[name] = pack_archive({f"images/{p.name}": p.read_bytes() for p in share})
    files["Data_Entry_2017_v2020.csv"] = (root / "Data_Entry_2017.csv").read_bytes()
    for name in ("BBox_List_2017.csv", "train_val_list.txt", "test_list.txt"):
        files[name] = (root / name).read_bytes()
    return files


def damage(data: bytes) -> bytes:
    """The same length with a run of bytes in the compressed body flipped (gzip then fails its checks)."""
    mid = len(data) // 2
    return data[:mid] + bytes(b ^ 0xFF for b in data[mid : mid + 64]) + data[mid + 64 :]


class MirrorServer:
    """``with MirrorServer(files) as server: server.url`` -> ``http://127.0.0.1:PORT/``; ``server.log``."""

    def __init__(self, files: dict[str, bytes], knobs: Knobs | None = None) -> None:
        self.files = dict(files)
        self.knobs = knobs or Knobs()
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/"

    def gets(self, name: str | None = None) -> list[Request]:
        with self._lock:
            return [r for r in self.log if r.method == "GET" and (name is None or r.name == name)]

    def __enter__(self) -> MirrorServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _record(self, method: str, name: str, rng: str | None, status: int) -> None:
        with self._lock:
            self.log.append(Request(method, name, rng, status))

    def _take(self, table: dict, name: str) -> object:
        """Pop one use of a knob for ``name`` (thread-safe)."""
        with self._lock:
            value = table.get(name)
            if isinstance(value, list):
                if not value:
                    return None
                return value.pop(0)
            if isinstance(value, int) and table is self.knobs.corrupt:
                if value <= 0:
                    return None
                table[name] = value - 1
                return True
            return table.pop(name, None)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet test output
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, *, head: bool) -> None:
                method = "HEAD" if head else "GET"
                path = self.path.split("?")[0]
                rng = self.headers.get("Range")
                if server.knobs.redirect and not path.startswith("/files/"):
                    server._record(method, path.lstrip("/"), rng, 302)
                    self.send_response(302)
                    self.send_header("Location", "/files" + path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                name = path.removeprefix("/files").lstrip("/")
                data = server.files.get(name)
                if data is None:
                    return self._status(method, name, rng, 404)
                if not head:
                    code = server._take(server.knobs.status, name)
                    if code:
                        return self._status(method, name, rng, int(code))
                    if server._take(server.knobs.corrupt, name):
                        data = damage(data)
                total, start = len(data), 0
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
                if match and not server.knobs.ignore_range:
                    start = int(match.group(1))
                    if start >= total:
                        server._record(method, name, rng, 416)
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{total}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                body = data[start:]
                status = 206 if start or (match and not server.knobs.ignore_range) else 200
                server._record(method, name, rng, status)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                self.end_headers()
                if head:
                    return
                stall = server._take(server.knobs.stall_after, name)
                if stall is not None:  # a transfer in progress, e.g. for a client to be killed during it
                    self.wfile.write(body[: int(stall)])
                    self.wfile.flush()
                    server.knobs.release.wait(30)
                    self.close_connection = True
                    return
                cut = server._take(server.knobs.drop_after, name)
                if cut is not None:
                    self.wfile.write(body[: int(cut)])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def _status(self, method: str, name: str, rng: str | None, code: int) -> None:
                server._record(method, name, rng, code)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler
