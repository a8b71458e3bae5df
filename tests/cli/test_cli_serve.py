"""`cxrmtl serve` as a user types it: unsafe binds, bad key files, a missing extra, key mode on a real process."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from trainkit import REPO, cli_env, run_cli

pytest.importorskip("fastapi", reason="needs the serve extra: pip install 'cxrmtl[serve]'")

from servekit import make_serve_run, running_server

KEY = "cli-test-key-0123456789abcdef"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_serve_run(tmp_path_factory.mktemp("cli_serve")).run


def one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_refuses_to_listen_beyond_loopback_without_a_key(tmp_path: Path) -> None:
    run = tmp_path / "no-run-needed"  # refused before the run is even looked at
    for host in ("0.0.0.0", "192.168.1.20", "::"):
        one_line_error(run_cli(["serve", str(run), "--host", host]), f"--host {host}", "--api-key-file")


def test_key_file_mistakes(tmp_path: Path) -> None:
    one_line_error(run_cli(["serve", str(tmp_path), "--api-key-file", str(tmp_path / "missing")]), "cannot read")
    short = tmp_path / "short"
    short.write_text("abc\n")
    one_line_error(run_cli(["serve", str(tmp_path), "--host", "0.0.0.0", "--api-key-file", str(short)]),
                   "shorter than 16")
    empty = tmp_path / "empty"
    empty.write_text("# no key yet\n")
    one_line_error(run_cli(["serve", str(tmp_path), "--api-key-file", str(empty)]), "holds no key")


def test_option_mistakes(tmp_path: Path) -> None:
    one_line_error(run_cli(["serve", str(tmp_path), "--backend", "tensorrt"]), "--backend")
    one_line_error(run_cli(["serve", str(tmp_path / "nope")]), "no such run folder")
    one_line_error(run_cli(["serve", str(tmp_path), "--port", "70000"]), "--port", "70000")
    one_line_error(run_cli(["serve", str(tmp_path), "--max-batch", "0"]), "--max-batch")
    one_line_error(run_cli(["serve", str(tmp_path), "--max-upload-mb", "-1"]), "--max-upload-mb")


def test_missing_extra_says_what_to_install(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "fastapi"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named fastapi')\n")
    import subprocess
    import sys

    env = cli_env()
    env["PYTHONPATH"] = str(tmp_path / "site") + ":" + env["PYTHONPATH"]
    result = subprocess.run([sys.executable, "-m", "cxrmtl", "serve", str(tmp_path)], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    one_line_error(result, 'pip install "cxrmtl[serve]"', "fastapi")


@pytest.mark.slow
def test_key_mode_on_a_real_process_and_one_writer_per_database(run: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    db = tmp_path / "db" / "worklist.sqlite"
    with running_server(run, db=db, log=tmp_path / "server.log",
                        extra=("--api-key-file", str(keys), "--backend", "torch")) as server:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{server.url}/v1/studies", timeout=10)
        assert refused.value.code == 401
        assert b'"unauthorized"' in refused.value.read()
        request = urllib.request.Request(f"{server.url}/v1/studies", headers={"X-API-Key": KEY})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200
        basic = base64.b64encode(f"me:{KEY}".encode()).decode()
        page = urllib.request.Request(f"{server.url}/", headers={"Authorization": f"Basic {basic}"})
        with urllib.request.urlopen(page, timeout=10) as response:
            assert b"Decision support, not a diagnosis" in response.read()
        with urllib.request.urlopen(f"{server.url}/healthz", timeout=10) as response:
            assert response.status == 200
        second = run_cli(["serve", str(run), "--db", str(db), "--port", "1"])
        one_line_error(second, "another cxrmtl serve is using this database")
    assert KEY not in (tmp_path / "server.log").read_text()
