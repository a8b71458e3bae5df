"""`cxrmtl triage simulate` as a user types it: the installed entry point in a subprocess, mistakes included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from trainkit import run_cli, tiny_config, write_config, write_tiny_nih


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("clitriage")
    root = write_tiny_nih(base / "nih", patients=24)
    entry = root / "Data_Entry_2017_v2020.csv"
    entry.write_text(entry.read_text().replace("Hernia", "Pneumothorax"))
    config = write_config(base / "tiny.yaml", tiny_config("train.epochs=1"))
    run = base / "run"
    for args in (["train", str(config), "--data", str(root), "--out", str(run)],
                 ["evaluate", str(run), "--data", str(root), "--bootstrap", "20", "--no-figures"]):
        done = run_cli(args, timeout=300)
        assert done.returncode == 0, done.stderr
    return root, run


@pytest.mark.slow
def test_simulate_through_the_cli(evaluated: tuple[Path, Path], tmp_path: Path) -> None:
    root, run = evaluated
    done = run_cli(["triage", "simulate", str(run), "--data", str(root), "--seeds", "3", "--hours", "4",
                    "--arrivals-per-hour", "30", "--readers", "2", "--read-minutes", "3.5", "--read-time", "fixed",
                    "--upper-limit-minutes", "45", "--seed", "7"])
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("triage (NIH-layout subset, test split)") and "goal" in first
    doc = json.loads((run / "triage" / "test" / "triage.json").read_text())
    assert doc["options"] == {**doc["options"], "arrivals_per_hour": 30.0, "readers": 2, "read_minutes": 3.5,
                              "read_time": "fixed", "hours": 4.0, "upper_limit_minutes": 45.0, "seeds": 3, "seed": 7}
    for name in ("triage.md", "triage_section.json", "triage_time_to_report.png"):
        assert (run / "triage" / "test" / name).is_file()
    # The next evaluation's report carries the simulation.
    done = run_cli(["evaluate", str(run), "--data", str(root), "--bootstrap", "20", "--no-figures"])
    assert done.returncode == 0, done.stderr
    assert "Triage: reading-room simulation" in (run / "eval" / "test" / "report.md").read_text()
    # A custom urgency config changes the critical set.
    cfg = tmp_path / "u.yaml"
    cfg.write_text("triage:\n  critical: [Effusion]\n")
    done = run_cli(["triage", "simulate", str(run), "--data", str(root), "--seeds", "2", "--hours", "2",
                    "--urgency-config", str(cfg), "--out", str(tmp_path / "out")])
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out" / "triage.json").read_text())["pool"]["critical"] == ["Effusion"]


def test_help_lists_simulate() -> None:
    done = run_cli(["triage", "--help"])
    assert done.returncode == 0 and "simulate" in done.stdout
    done = run_cli(["triage", "simulate", "--help"])
    assert "--arrivals-per-hour" in done.stdout and "--upper-limit-minutes" in done.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--readers", "0"], "readers"),
        (["--read-time", "gamma"], "read_time"),
        (["--arrivals-per-hour", "-3"], "arrivals_per_hour"),
        (["--split", "holdout"], "--split"),
        (["--upper-limit-minutes", "soon"], "--upper-limit-minutes"),
        ([], "--data"),
    ],
)
def test_mistakes_are_one_line_errors(tmp_path: Path, extra: list[str], message: str) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write_config(run / "config.yaml", tiny_config())  # a run folder that records no data folder
    done = run_cli(["triage", "simulate", str(run), *extra])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_bad_urgency_config_and_missing_run(tmp_path: Path) -> None:
    cfg = tmp_path / "u.yaml"
    cfg.write_text("triage:\n  weights:\n    Pneumothorax: -1\n")
    done = run_cli(["triage", "simulate", str(tmp_path / "run"), "--urgency-config", str(cfg)])
    assert done.returncode == 2 and "triage.weights.Pneumothorax" in done.stderr and str(cfg) in done.stderr
    done = run_cli(["triage", "simulate", str(tmp_path / "nowhere")])
    assert done.returncode == 2 and "config.yaml" in done.stderr
