"""runs.operating: RUN/thresholds.json round trip with temperatures, malformed files, the temperature mapping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxrmtl.errors import RunError
from cxrmtl.runs.operating import (
    Thresholds,
    apply_temperature,
    calibrated_threshold,
    load_thresholds,
    save_thresholds,
)


def test_round_trip_keeps_thresholds_and_temperatures(tmp_path: Path) -> None:
    th = Thresholds(methods={"youden": {"findings": {"Effusion": 0.31, "Hernia": None}}},
                    temperatures={"findings": {"Effusion": 1.7, "Hernia": None}})
    save_thresholds(tmp_path, th, code_version="v")
    back = load_thresholds(tmp_path)
    assert back is not None and back.get("findings", "Effusion") == 0.31 and back.get("findings", "Hernia") is None
    assert back.temperature("findings", "Effusion") == 1.7 and back.temperature("findings", "Hernia") is None
    assert back.temperature("abnormal", "abnormal") is None and back.meta["code_version"] == "v"


def test_files_without_temperatures_still_load(tmp_path: Path) -> None:
    (tmp_path / "thresholds.json").write_text(json.dumps({"schema": 1, "methods": {"youden": {"a": {"a": 0.2}}}}))
    back = load_thresholds(tmp_path)
    assert back is not None and back.temperatures == {} and back.get("a", "a") == 0.2
    assert load_thresholds(tmp_path / "none") is None


@pytest.mark.parametrize("temps", [{"f": {"x": 0}}, {"f": {"x": -1.0}}, {"f": {"x": "hot"}}, {"f": 3}, [1]])
def test_bad_temperatures_are_refused(tmp_path: Path, temps: object) -> None:
    doc = {"schema": 1, "methods": {"youden": {"f": {"x": 0.5}}}, "temperatures": temps}
    (tmp_path / "thresholds.json").write_text(json.dumps(doc))
    with pytest.raises(RunError, match="temperatures"):
        load_thresholds(tmp_path)


def test_temperature_mapping_is_monotone_and_keeps_the_call() -> None:
    p = np.linspace(0.01, 0.99, 99)
    for t in (0.5, 1.0, 3.0):
        q = apply_temperature(p, t)
        assert np.all(np.diff(q) > 0)
        thr = 0.37
        assert np.array_equal(p >= thr, q >= calibrated_threshold(thr, t) - 1e-15)
    assert calibrated_threshold(None, 2.0) is None and calibrated_threshold(0.3, None) == pytest.approx(0.3)
