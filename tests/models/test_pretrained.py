"""Pretrained initialisation: timm's weights from the Hugging Face cache or a (local stand-in) hub, a local file,
and one clear error when weights were asked for and cannot be had (random init only when allowed)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from trainkit import REPO, cli_env, tiny_config, write_config, write_tiny_nih

from cxrmtl.errors import CheckpointError, PretrainedWeightsError
from cxrmtl.models import PretrainedWeightsWarning, create_backbone, pretrained_source

NAME = "test_resnet"  # a tiny timm model with published weights (timm/test_resnet.r160_in1k)
HUB_ID = timm.models.get_pretrained_cfg(NAME).hf_hub_id
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """HF_HUB_OFFLINE=1 with an empty Hugging Face cache: neither the hub nor a cached copy."""
    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def _imagenet_state() -> dict[str, torch.Tensor]:
    """What timm publishes for NAME: an RGB model with a 1000-class classifier (random values, fixed seed)."""
    torch.manual_seed(5)
    state = timm.create_model(NAME, pretrained=False, in_chans=3, num_classes=1000).state_dict()
    return {k: v.contiguous() for k, v in state.items()}


def _stem(state: dict[str, torch.Tensor]) -> str:
    return next(k for k, v in state.items() if v.dim() == 4)


def _assert_loaded(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    stem = _stem(got)
    assert torch.allclose(got[stem], state[stem].sum(dim=1, keepdim=True))  # RGB stem folded to gray
    assert all(torch.equal(v, state[k]) for k, v in got.items() if k != stem)


def test_offline_without_a_cached_copy_is_one_clear_error(offline: Path) -> None:
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError, match=(
        rf"model\.pretrained: timm's ImageNet weights for backbone '{NAME}' are unavailable: HF_HUB_OFFLINE is set "
        r"and no copy is in the local Hugging Face cache; set model\.pretrained to a local weights file .*"
        r"model\.allow_random_init=true")):
        create_backbone(NAME, pretrained=True)
    with pytest.raises(PretrainedWeightsError):
        pretrained_source(NAME, True)
    assert time.monotonic() - start < 10  # no network wait at all


def test_unreachable_hub_is_an_error_unless_random_init_is_allowed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a closed port stands in for no internet
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    start = time.monotonic()
    with pytest.raises(PretrainedWeightsError, match=r"127\.0\.0\.1:9 cannot be reached \(offline\?\)"):
        create_backbone(NAME, pretrained=True)
    with pytest.warns(PretrainedWeightsWarning, match="starting from random init"):
        model = create_backbone(NAME, pretrained="true", allow_random_init=True)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert pretrained_source(NAME, True, allow_random_init=True).startswith("random init (timm weights unavailable")
    assert time.monotonic() - start < 30  # generous: the point is "no minute-long retry loop"


def test_cached_timm_weights_load_offline(offline: Path) -> None:
    state = _imagenet_state()
    snapshot = offline / f"models--{HUB_ID.replace('/', '--')}" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    save_file(state, str(snapshot / "model.safetensors"))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(COMMIT)
    assert "from the local Hugging Face cache" in pretrained_source(NAME, True)
    _assert_loaded(create_backbone(NAME, pretrained=True), state)


def test_local_weights_file_by_path(tmp_path: Path, offline: Path) -> None:
    state = _imagenet_state()
    path = tmp_path / "imagenet.safetensors"
    save_file(state, str(path))
    assert pretrained_source(NAME, str(path)) == f"local file {path}"
    _assert_loaded(create_backbone(NAME, pretrained=str(path)), state)
    with pytest.raises(CheckpointError, match="pretrained weights file not found"):
        pretrained_source(NAME, tmp_path / "missing.pt")
    assert pretrained_source(NAME, "false").startswith("random init")


class _Hub:
    """The two requests huggingface_hub makes for a file: HEAD (commit, etag, size) then GET; logged."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files, self.log = files, []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _answer(self, body: bool) -> None:
                hub.log.append((self.command, self.path))
                data = hub.files.get(self.path.split("?")[0])
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_HEAD(self) -> None:
                self._answer(False)

            def do_GET(self) -> None:
                self._answer(True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


def test_timm_weights_are_downloaded_when_the_hub_answers(tmp_path: Path) -> None:
    # huggingface_hub reads HF_ENDPOINT at import time, so the download runs in a fresh interpreter.
    state = _imagenet_state()
    weights = tmp_path / "published.safetensors"
    save_file(state, str(weights))
    hub = _Hub({f"/{HUB_ID}/resolve/main/model.safetensors": weights.read_bytes()})
    out = tmp_path / "loaded.pt"
    code = ("import sys, torch; from cxrmtl.models import create_backbone; "
            f"torch.save(create_backbone({NAME!r}, pretrained=True).state_dict(), sys.argv[1])")
    env = {**cli_env(), "HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ETAG_TIMEOUT": "10"}
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(out)], env=env, cwd=REPO, capture_output=True,
                              text=True, timeout=120)
    finally:
        hub.httpd.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ("GET", f"/{HUB_ID}/resolve/main/model.safetensors") in hub.log
    model = timm.create_model(NAME, pretrained=False, in_chans=1, num_classes=0)
    model.load_state_dict(torch.load(out, weights_only=True))
    _assert_loaded(model, state)
    cached = list((tmp_path / "hf").rglob("model.safetensors"))
    assert cached  # the next run finds it offline


def test_train_refuses_before_building_the_cache(tmp_path: Path) -> None:
    root = write_tiny_nih(tmp_path / "nih", patients=4)
    config = write_config(tmp_path / "cfg.yaml", tiny_config(f"model.backbone={NAME}", "model.pretrained=true"))
    env = {**cli_env(), "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf")}
    args = [sys.executable, "-m", "cxrmtl", "train", str(config), "--data", str(root), "--out", str(tmp_path / "run")]
    proc = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: model.pretrained: timm's ImageNet weights"), proc.stderr
    assert not (tmp_path / "run").exists() and not any(tmp_path.rglob("images.u8"))  # nothing built first


def test_resume_does_not_need_the_pretrained_weights(tmp_path: Path, offline: Path) -> None:
    from cxrmtl.train.loop import train

    root = write_tiny_nih(tmp_path / "nih", patients=4)
    opts = [f"model.backbone={NAME}", "model.pretrained=true", "train.epochs=1", "train.max_steps=2"]
    with pytest.warns(PretrainedWeightsWarning):
        first = train(tiny_config(*opts, "model.allow_random_init=true"), data_root=root, out=tmp_path / "run")
    second = train(tiny_config(*opts, "train.epochs=2", "train.max_steps=6"), data_root=root, out=tmp_path / "run",
                   resume=True)  # offline, random init no longer allowed: the checkpoint holds the weights
    assert (first.epochs, second.epochs) == (1, 2) and second.steps > first.steps
