"""Helpers for the service tests and bench/bench_serve.py: a tiny trained run with operating thresholds, phantom
PNGs, and a real ``cxrmtl serve`` subprocess on a free loopback port.

``make_serve_run`` trains the trainkit tiny model for one epoch on a tiny phantom (so RUN/data.json truthfully says
"phantom") and writes RUN/thresholds.json chosen so that three phantom studies land in three urgency levels:
``critical`` (Pneumothorax positive), ``urgent`` (Effusion positive) and ``routine`` (nothing positive). The
thresholds are cut between the model's own probabilities for those images, so the ranking holds whatever the
tiny model learned.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from predictkit import dicom_bytes  # noqa: F401  (re-exported: one DICOM builder for the test kits)

from cxrmtl import labels as L

STUDY_FINDINGS: dict[str, tuple[str, ...]] = {"a": ("Pneumothorax",), "b": ("Effusion",), "c": ()}
NEVER = 0.9999  # threshold of findings that must not be called positive in the fixture


@dataclass(frozen=True)
class ServeRun:
    run: Path
    studies: dict[str, Path]  # name -> PNG file (256 px phantom)
    expected: dict[str, str]  # name -> urgency level the thresholds give it


def phantom_png(path: Path, findings: tuple[str, ...], *, size: int = 256, seed: int = 0, patient_id: int = 1
                ) -> Path:
    """A phantom chest X-ray PNG with the given findings."""
    from PIL import Image

    from cxrmtl.phantom.generate import render_study, single_plan

    image, _ = render_study(single_plan(findings=findings, seed=seed, patient_id=patient_id), 0, size=size)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def _midpoint(high: float, low: float, what: str) -> float:
    if not high > low:
        raise RuntimeError(f"servekit: cannot separate {what} ({high} vs {low}); change the fixture seeds")
    return (high + low) / 2


def make_serve_run(base: Path) -> ServeRun:
    """Train the tiny run on a tiny phantom and write thresholds giving the three studies three urgency levels."""
    from trainkit import tiny_config

    from cxrmtl.data.imageio import read_gray
    from cxrmtl.infer.engine import Predictor
    from cxrmtl.phantom.generate import write_phantom
    from cxrmtl.runs.operating import Thresholds, save_thresholds
    from cxrmtl.train.loop import train

    data = base / "phantom"
    write_phantom(data, patients=16, size=64, seed=1)
    run = base / "run"
    # 64 px, not trainkit's 32: the last feature map is then 2x2 and Grad-CAM has something to show (1x1 is flat).
    train(tiny_config("train.epochs=1", "data.image_size=64"), data_root=data, out=run, device="cpu")
    (run / "data.json").write_text(json.dumps({"data_kind": "phantom", "root": str(data)}))
    studies = {name: phantom_png(base / "studies" / f"{name}.png", f, seed=i + 3, patient_id=900 + i)
               for i, (name, f) in enumerate(STUDY_FINDINGS.items())}
    predictor = Predictor.from_run(run, backend="torch")
    results = predictor.predict_arrays([predictor.preprocess(read_gray(p)) for p in studies.values()])
    p = {name: r["findings"] for name, r in zip(studies, results, strict=True)}

    def prob(name: str, finding: str) -> float:
        return p[name][finding]["probability"]

    crit = max(p, key=lambda n: prob(n, "Pneumothorax"))
    rest = [n for n in p if n != crit]
    t_ptx = _midpoint(prob(crit, "Pneumothorax"), max(prob(n, "Pneumothorax") for n in rest), "Pneumothorax")
    urg = max(rest, key=lambda n: prob(n, "Effusion"))
    routine = next(n for n in rest if n != urg)
    t_eff = _midpoint(prob(urg, "Effusion"), prob(routine, "Effusion"), "Effusion")
    findings = dict.fromkeys(L.FINDINGS, NEVER) | {"Pneumothorax": t_ptx, "Effusion": t_eff}
    save_thresholds(run, Thresholds(methods={"youden": {"findings": findings, "abnormal": {"abnormal": 0.5}}}),
                    code_version="servekit")
    return ServeRun(run=run, studies=studies, expected={crit: "critical", urg: "urgent", routine: "routine"})


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def wait_healthy(url: str, process: subprocess.Popen, *, timeout: float = 120.0, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = log.read_text(errors="replace") if log is not None else ""
            raise RuntimeError(f"cxrmtl serve exited with {process.returncode} before answering:\n{text[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"cxrmtl serve did not answer /healthz within {timeout} s")


def start_server(run: Path, *, db: Path, log: Path, port: int | None = None, extra: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> Server:
    """Start ``python -m cxrmtl serve RUN`` on 127.0.0.1 and wait for /healthz."""
    from trainkit import REPO, cli_env

    port = port or free_port()
    handle = open(log, "ab")  # noqa: SIM115 -- the child writes to it for its whole life
    process = subprocess.Popen(
        [sys.executable, "-m", "cxrmtl", "serve", str(run), "--port", str(port), "--db", str(db), *extra],
        env=env or cli_env(), cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    handle.close()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log=log)
    except BaseException:
        process.kill()
        process.wait(10)
        raise
    return Server(process=process, url=url, log=log)


@contextlib.contextmanager
def running_server(run: Path, *, db: Path, log: Path, extra: tuple[str, ...] = ()) -> Iterator[Server]:
    server = start_server(run, db=db, log=log, extra=extra)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.process.terminate()
            try:
                server.process.wait(20)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait(10)


def multipart(field: str, filename: str, data: bytes, content_type: str = "application/octet-stream"
              ) -> tuple[bytes, str]:
    """A multipart/form-data body with one file part (for raw http.client/urllib clients)."""
    boundary = "cxrmtl" + np.random.default_rng().integers(0, 2**62).astype(str)
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
