"""Every mistake typed at the real entry point: one ``error:`` line on stderr, exit status 2, no traceback.

Each case runs ``python -m cxrmtl`` in a subprocess, as a user types it. Before the fix the installed typer (which
carries its own copy of click) raised its usage errors past ``cxrmtl.cli.main`` as tracebacks with exit status 1.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from trainkit import cli_env, tiny_config, write_config

# (case id, arguments, text the one error line must contain). {cfg} is a valid tiny config, {root} an existing empty
# folder, {file} a regular file, {missing} a path that does not exist.
USAGE_MISTAKES: list[tuple[str, list[str], str]] = [
    ("unknown-command", ["nosuch"], "No such command 'nosuch'"),
    ("unknown-top-option", ["--bogus"], "--bogus"),
    ("unknown-subcommand", ["cache", "rebuild"], "No such command 'rebuild'"),
    ("group-without-command", ["data"], "needs a command"),
    ("phantom-wrong-type", ["phantom", "{root}/p", "--patients", "abc"], "--patients"),
    ("phantom-bad-choice", ["phantom", "{root}/p", "--prevalence", "high"], "--prevalence"),
    ("phantom-old-quiet-flag", ["phantom", "{root}/p", "--quiet"], "--quiet"),
    ("phantom-out-of-range", ["phantom", "{root}/p", "--workers", "0"], "--workers"),
    ("data-check-unknown-option", ["data", "check", "{root}", "--bogus"], "--bogus"),
    ("data-check-missing-argument", ["data", "check"], "root"),
    ("data-check-missing-folder", ["data", "check", "{missing}"], "{missing}"),
    ("cache-build-missing-size", ["cache", "build", "{root}", "{root}/c"], "--size"),
    ("cache-build-zero-size", ["cache", "build", "{root}", "{root}/c", "--size", "0"], "--size"),
    ("cache-build-float-workers", ["cache", "build", "{root}", "{root}/c", "--size", "8", "--workers", "1.5"],
     "--workers"),
    ("cache-verify-missing-argument", ["cache", "verify"], "out"),
    ("cache-verify-missing-cache", ["cache", "verify", "{missing}"], "{missing}"),
    ("train-bad-device", ["train", "{cfg}", "--data", "{root}", "--out", "{root}/r", "--device", "gpu"], "--device"),
    ("train-zero-steps", ["train", "{cfg}", "--data", "{root}", "--out", "{root}/r", "--max-steps", "0"],
     "--max-steps"),
    ("train-missing-config", ["train", "{missing}", "--data", "{root}", "--out", "{root}/r"], "{missing}"),
    ("train-unknown-set-key", ["train", "{cfg}", "--data", "{root}", "--out", "{root}/r", "--set", "optim.lrr=1"],
     "lrr"),
    ("evaluate-bad-split", ["evaluate", "{root}", "--data", "{root}", "--split", "train"], "--split"),
    ("evaluate-bad-checkpoint", ["evaluate", "{root}", "--data", "{root}", "--checkpoint", "newest"],
     "--checkpoint"),
    ("evaluate-bad-data-kind", ["evaluate", "{root}", "--data", "{root}", "--data-kind", "real"], "--data-kind"),
    ("evaluate-not-a-run", ["evaluate", "{missing}", "--data", "{root}", "--device", "cpu"], "{missing}"),
    ("localize-bad-device", ["localize", "{root}", "--data", "{root}", "--device", "tpu"], "--device"),
    ("localize-negative-gallery", ["localize", "{root}", "--data", "{root}", "--gallery", "-1"], "--gallery"),
    ("ablate-missing-out", ["ablate", "{cfg}"], "--out"),
    ("ablate-train-split", ["ablate", "{cfg}", "--out", "{root}/a", "--split", "train"], "--split"),
    ("ablate-unknown-weighting", ["ablate", "{cfg}", "--out", "{root}/a", "--weightings", "equal,magic"], "magic"),
    ("demo-bad-device", ["demo", "--device", "gpu"], "--device"),
    ("demo-zero-workers", ["demo", "--workers", "0"], "--workers"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("usage")
    root = base / "root"
    root.mkdir()
    (base / "file.txt").write_text("x\n")
    cfg = write_config(base / "tiny.yaml", tiny_config())
    return {"root": str(root), "cfg": str(cfg), "file": str(base / "file.txt"), "missing": str(base / "nothing")}


def run_cxrmtl(args: list[str], **env: str) -> subprocess.CompletedProcess:
    """``python -m cxrmtl ARGS`` as a user runs it (the console entry point ``cxrmtl.cli:main``)."""
    return subprocess.run([sys.executable, "-m", "cxrmtl", *args], capture_output=True, text=True, check=False,
                          env={**cli_env(), **env}, timeout=120)


def assert_one_error_line(result: subprocess.CompletedProcess, needle: str) -> str:
    """Exit 2, no traceback, and the error is one line, the last on stderr: ``error: ...`` containing ``needle``.

    Log lines the command wrote before it failed (``warning: ...`` and progress notes from the ``cxrmtl`` loggers,
    e.g. "no cache there yet; building it now") may precede it; nothing may follow it.
    """
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert sum(line.startswith("error: ") for line in lines) == 1, result.stderr
    assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


@pytest.mark.parametrize(("args", "needle"), [case[1:] for case in USAGE_MISTAKES],
                         ids=[case[0] for case in USAGE_MISTAKES])
def test_usage_mistake_is_one_error_line_and_exit_2(args: list[str], needle: str, places: dict[str, str]) -> None:
    argv = [arg.format(**places) for arg in args]
    assert_one_error_line(run_cxrmtl(argv), needle.format(**places))


def test_every_command_is_covered() -> None:
    """The list above reaches every command, so a new command's options are not left out by accident."""
    covered = {case[1][0] for case in USAGE_MISTAKES} | {" ".join(case[1][:2]) for case in USAGE_MISTAKES}
    for command in ("phantom", "data check", "cache build", "cache verify", "train", "evaluate", "localize",
                    "ablate", "demo"):
        assert command in covered, command


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"], ["cache", "build", "--help"], ["--version"]])
def test_help_and_version_still_exit_0(args: list[str]) -> None:
    result = run_cxrmtl(args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout.strip()


def test_help_lists_choices_and_commands_in_order() -> None:
    evaluate = run_cxrmtl(["evaluate", "--help"], COLUMNS="200").stdout
    for choices in ("auto|cpu|cuda", "best|last", "test|val", "auto|nih|phantom|subset"):
        assert choices in evaluate, choices
    assert "real|boosted" in run_cxrmtl(["phantom", "--help"], COLUMNS="200").stdout
    assert "--progress" in run_cxrmtl(["train", "--help"], COLUMNS="200").stdout
    top = run_cxrmtl(["--help"], COLUMNS="200").stdout
    order = ["demo", "phantom", "data", "cache", "train", "evaluate", "localize", "ablate"]
    positions = [top.index(f"\N{BOX DRAWINGS LIGHT VERTICAL} {name} ") for name in order]  # rows of the panel
    assert positions == sorted(positions), top


def test_cuda_without_a_gpu_is_one_line(places: dict[str, str]) -> None:
    """CUDA_VISIBLE_DEVICES="" hides every GPU, so this holds on a GPU machine too."""
    argv = ["train", places["cfg"], "--data", places["root"], "--out", f"{places['root']}/r", "--device", "cuda"]
    line = assert_one_error_line(run_cxrmtl(argv, CUDA_VISIBLE_DEVICES=""), "--device: cuda requested")
    assert "no CUDA GPU is available" in line


def test_broken_run_checkpoint_is_one_line(tmp_path: Path, places: dict[str, str]) -> None:
    """A run folder whose best.pt holds random bytes: torch's 6-8 line message becomes one line naming the file."""
    import numpy as np

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    write_config(run / "config.yaml", tiny_config())
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    line = assert_one_error_line(run_cxrmtl(["evaluate", str(run), "--data", places["root"], "--device", "cpu"]),
                                 str(best))
    assert "corrupt or truncated checkpoint" in line and "weights_only" not in line
