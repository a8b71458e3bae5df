"""`cxrmtl serve` under load on loopback, against the offline Predictor on the same model, machine and images.

Usage: python bench/bench_serve.py [--config nih_densenet121_224] [--run RUN] [--clients 16] [--seconds 60]
                                   [--rounds 3] [--images 64] [--backend auto] [--max-batch 16] [--window-ms 10]
                                   [--sequential 30] [--out bench/results/serve.md]

One command, one machine, side by side:
1. offline: ``Predictor.predict_arrays`` on the preprocessed images in batches of ``--max-batch`` (the model alone,
   the ceiling) and ``Predictor.predict_files`` (decode + model, what `cxrmtl predict` does on a folder);
2. the service (a `cxrmtl serve` subprocess on 127.0.0.1) with ``--clients`` threads posting the real NIH PNGs to
   /v1/predict for ``--seconds`` (after a short warm-up): errors, p50/p99 latency, throughput as a fraction of (1),
   the batch sizes dynamic batching formed (from /metrics);
3. one client at a time: p50 of /v1/predict vs the in-process Predictor on one file (decode + predict), request by
   request in turn, and vs a whole `cxrmtl predict RUN FILE` process (what a user without the service runs).
The offline and service blocks alternate over ``--rounds`` so that background load drifting on a shared machine
hits both sides alike; the ratios are of totals over all rounds.
Without --run the weights are the config's network at its seeded initial values (speed does not depend on them).
Clients and server share the machine's cores, so the ratios include the cost of the HTTP side.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from machine import cpu_model  # bench/machine.py (bench/ is on sys.path when run as a script)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "kit"))
NIH_IMAGES = REPO.parent / "shared" / "data" / "nih" / "images"


def untrained_run(config: str, out: Path) -> Path:
    from predictkit import write_untrained_run

    from cxrmtl.config import load_config

    path = REPO / "src" / "cxrmtl" / "resources" / "configs" / f"{config}.yaml"
    return write_untrained_run(out, load_config(path, ["model.pretrained=false"]))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def offline_arrays(predictor, images: list[np.ndarray], *, batch: int, seconds: float) -> tuple[int, float]:
    """(images, seconds) of predict_arrays in batches over the preprocessed images: the model alone."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i in range(0, len(images), batch):
            done += len(predictor.predict_arrays(images[i:i + batch]))
    return done, time.perf_counter() - start


def offline_files(predictor, files: list[Path], *, batch: int, seconds: float) -> tuple[int, float]:
    """(images, seconds) of predict_files: decode in 2 threads + model, what `cxrmtl predict` does on a folder."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        done += sum(r.result is not None for r in predictor.predict_files(files, batch_size=batch, workers=2))
    return done, time.perf_counter() - start


def multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "benchboundary7MA4YWxk"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Client:
    """One keep-alive connection posting to /v1/predict."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def predict(self, body: bytes, content_type: str) -> int:
        try:
            self.conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": content_type})
            response = self.conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            return -1


def batch_histogram(port: int) -> dict[str, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {m.group(1): int(m.group(2)) for m in re.finditer(r'cxrmtl_batch_size_bucket\{le="([^"]+)"\} (\d+)', text)}
    for key in ("sum", "count"):
        out[key] = int(float(re.search(rf"cxrmtl_batch_size_{key} ([0-9.e+]+)", text).group(1)))
    return out


def load_phase(port: int, bodies: list[tuple[bytes, str]], *, clients: int, seconds: float, warmup: float) -> dict:
    latencies: list[float] = []
    errors: list[int] = []
    lock = threading.Lock()
    phase = {"record": False, "stop": False}

    def work(k: int) -> None:
        client = Client(port)
        i = k
        while not phase["stop"]:
            body, ctype = bodies[i % len(bodies)]
            i += clients
            t = time.perf_counter()
            status = client.predict(body, ctype)
            elapsed = time.perf_counter() - t
            if phase["record"] and not phase["stop"]:
                with lock:
                    (latencies.append(elapsed) if status == 200 else errors.append(status))

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    before = batch_histogram(port)
    phase["record"] = True
    start = time.perf_counter()
    time.sleep(seconds)
    phase["stop"] = True
    duration = time.perf_counter() - start
    after = batch_histogram(port)
    for t in threads:
        t.join(180)
    cumulative = {le: after[le] - before.get(le, 0) for le in after if le not in ("sum", "count")}
    bounds = list(cumulative)
    n_batches = after["count"] - before["count"]
    counts = {le: cumulative[le] - (cumulative[bounds[i - 1]] if i else 0) for i, le in enumerate(bounds)}
    return {"ok": len(latencies), "errors": len(errors), "error_codes": sorted(set(errors)), "seconds": duration,
            "ips": len(latencies) / duration, "latencies": latencies, "batches": counts, "n_batches": n_batches,
            "batch_sum": after["sum"] - before["sum"]}


def sequential_phase(port: int, bodies: list[tuple[bytes, str]], predictor, files: list[Path], n: int
                     ) -> tuple[float, float]:
    """p50 seconds of one /v1/predict at a time and of the in-process Predictor on one file (decode + predict),
    alternating request by request so both see the same background load."""
    from cxrmtl.infer.engine import decode_file

    client = Client(port)
    served, local = [], []
    for k in range(n):
        t = time.perf_counter()
        status = client.predict(*bodies[k % len(bodies)])
        served.append(time.perf_counter() - t)
        if status != 200:
            raise RuntimeError(f"sequential request failed with {status}")
        t = time.perf_counter()
        predictor.predict_arrays([decode_file(files[k % len(files)], size=predictor.image_size)])
        local.append(time.perf_counter() - t)
    return percentile(served, 50), percentile(local, 50)


def cli_predict_seconds(run: Path, file: Path, env: dict[str, str], backend: str, repeats: int = 2) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cxrmtl", "predict", str(run), str(file), "--json", "--backend", backend],
                       env=env, cwd=REPO, check=True, capture_output=True, timeout=600)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def start_server(run: Path, db: Path, env: dict[str, str], args: argparse.Namespace) -> tuple[subprocess.Popen, int]:
    from servekit import free_port, wait_healthy

    port = free_port()
    log = open(db.parent / "server.log", "wb")  # noqa: SIM115 -- the child writes to it for its whole life
    process = subprocess.Popen(
        [sys.executable, "-m", "cxrmtl", "serve", str(run), "--port", str(port), "--db", str(db), "--backend",
         args.backend, "--max-batch", str(args.max_batch), "--batch-window-ms", str(args.window_ms),
         "--log-level", "warning"], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    wait_healthy(f"http://127.0.0.1:{port}", process, timeout=600, log=db.parent / "server.log")
    return process, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="nih_densenet121_224", help="packaged config for the untrained run")
    parser.add_argument("--run", type=Path, default=None, help="a trained run instead of the untrained config")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0, help="service load time, over all rounds")
    parser.add_argument("--offline-seconds", type=float, default=None,
                        help="time of each offline baseline over all rounds (default: --seconds / 2)")
    parser.add_argument("--rounds", type=int, default=3, help="offline and service blocks alternate this often")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--window-ms", type=float, default=10.0)
    parser.add_argument("--sequential", type=int, default=30)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "serve.md")
    args = parser.parse_args()
    files = sorted(NIH_IMAGES.glob("*.png"))[: args.images]
    if not files:
        sys.exit(f"no NIH PNGs in {NIH_IMAGES}")
    offline_seconds = args.offline_seconds if args.offline_seconds is not None else args.seconds / 2
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        run = args.run or untrained_run(args.config, tmp_path / "run")
        from cxrmtl.infer.engine import Predictor, decode_file

        predictor = Predictor.from_run(run, backend=args.backend)
        images = [decode_file(p, size=predictor.image_size) for p in files]
        predictor.predict_arrays(images[: args.max_batch])  # warm-up (ONNX Runtime allocates on the first run)
        bodies = [multipart(p.read_bytes()) for p in files]
        (tmp_path / "db").mkdir()
        process, port = start_server(run, tmp_path / "db" / "worklist.sqlite", env, args)
        totals = {"arrays": [0, 0.0], "files": [0, 0.0]}
        rounds: list[dict] = []
        try:
            for r in range(args.rounds):  # alternate, so drifting background load hits every side alike
                for key, fn, arg in (("arrays", offline_arrays, images), ("files", offline_files, files)):
                    n, sec = fn(predictor, arg, batch=args.max_batch, seconds=offline_seconds / args.rounds)
                    totals[key][0] += n
                    totals[key][1] += sec
                rounds.append(load_phase(port, bodies, clients=args.clients, seconds=args.seconds / args.rounds,
                                         warmup=args.warmup if r == 0 else 1.0))
            one, one_local = sequential_phase(port, bodies, predictor, files, args.sequential)
        finally:
            process.terminate()
            process.wait(30)
        cli_one = cli_predict_seconds(run, files[0], env, args.backend)
    load_after = os.getloadavg()
    arrays_ips = totals["arrays"][0] / totals["arrays"][1]
    files_ips = totals["files"][0] / totals["files"][1]
    ok = sum(x["ok"] for x in rounds)
    errors = sum(x["errors"] for x in rounds)
    codes = sorted({c for x in rounds for c in x["error_codes"]})
    served_seconds = sum(x["seconds"] for x in rounds)
    ips = ok / served_seconds
    latencies = [t for x in rounds for t in x["latencies"]]
    batches: dict[str, int] = {}
    for x in rounds:
        for le, n in x["batches"].items():
            batches[le] = batches.get(le, 0) + n
    n_batches = sum(x["n_batches"] for x in rounds)
    mean_batch = sum(x["batch_sum"] for x in rounds) / max(1, n_batches)
    per_round = ", ".join(f"{x['ips']:.2f}" for x in rounds)
    model = str(args.run) if args.run else f"{args.config} (untrained weights)"
    lines = [
        f"# Service under load ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Command: `python bench/bench_serve.py {' '.join(sys.argv[1:])}`",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (other jobs share the cores).",
        f"Model: {model}, {predictor.image_size} px, backend {predictor.backend}; {len(files)} real NIH PNGs "
        f"(1024 x 1024) from ../shared/data/nih; max batch {args.max_batch}, window {args.window_ms:g} ms; "
        f"{args.rounds} rounds alternating offline and service blocks.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| offline `Predictor.predict_arrays`, batches of {args.max_batch} (model only) | {arrays_ips:.2f} img/s |",
        f"| offline `Predictor.predict_files` (decode + model, 2 decode threads) | {files_ips:.2f} img/s |",
        f"| service, {args.clients} clients, {served_seconds:.0f} s: requests ok / errors | {ok} / {errors} "
        f"{codes or ''} |",
        f"| service throughput (per round: {per_round}) | {ips:.2f} img/s = **{ips / arrays_ips:.2f} x** "
        f"predict_arrays, {ips / files_ips:.2f} x predict_files |",
        f"| service latency p50 / p99 under load | {percentile(latencies, 50) * 1000:.0f} / "
        f"{percentile(latencies, 99) * 1000:.0f} ms |",
        f"| batch sizes formed (upper bucket bound: count) | "
        f"{', '.join(f'<={le}: {n}' for le, n in batches.items() if n)} (mean {mean_batch:.1f}) |",
        f"| one request at a time: /v1/predict p50 | {one * 1000:.0f} ms |",
        f"| in-process Predictor, one file (decode + predict) p50, alternating with the above | "
        f"{one_local * 1000:.0f} ms |",
        f"| `cxrmtl predict RUN FILE` process, one file (median of 2) | {cli_one * 1000:.0f} ms |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
