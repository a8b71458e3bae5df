"""Urgency of one study from its finding probabilities: the rule every worklist in cxrmtl sorts by.

The rule (docs/triage.md), after Annarumma et al., Radiology 2019 (priority = the most urgent class among the
findings the model calls positive) and Baltruschat et al., Eur Radiol 2021 (urgency order of the findings):

1. A finding is *positive* when its probability reaches its operating threshold (``p >= t``, the val-chosen
   threshold of RUN/thresholds.json). Without thresholds, or where a finding's threshold is undefined, the
   probability must reach ``fallback_threshold`` (0.5): "probabilities only", reported in ``Urgency.basis``.
2. The *level* is "critical" when a positive finding is in the critical set, else "urgent" when a positive finding
   has weight >= ``urgent_weight``, else "routine". A study with no positive finding is routine.
3. The *score* is ``(tier + w * p) / 3`` with tier 0/1/2 for routine/urgent/critical and ``w * p`` the largest
   weight x probability among the positive findings of that tier (0 without positives). Scores lie in [0, 1], every
   critical study outranks every urgent one, which outranks every routine one, and within a level the more
   probable, heavier finding comes first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrmtl import labels as L
from cxrmtl.errors import ConfigError, EvaluationError

# Keys of the YAML ``triage:`` section handled here; the simulation keys live in triage/simulate.py.
CONFIG_KEYS: tuple[str, ...] = ("weights", "critical", "urgent_weight", "fallback_threshold")
# Simulation keys a triage YAML may carry next to the urgency keys (read by triage/simulate.py).
SIMULATION_KEYS: tuple[str, ...] = ("simulation",)
DEFAULT_CONFIG_FILE = Path(__file__).resolve().parents[1] / "resources" / "configs" / "triage_default.yaml"


@dataclass(frozen=True)
class UrgencyConfig:
    """Per-finding weights in [0, 1], the critical set and the level cut-offs (defaults in labels.py)."""

    weights: Mapping[str, float] = field(default_factory=lambda: dict(L.URGENCY_WEIGHTS))
    critical: tuple[str, ...] = L.URGENCY_CRITICAL
    urgent_weight: float = L.URGENCY_URGENT_WEIGHT
    fallback_threshold: float = L.URGENCY_FALLBACK_THRESHOLD

    def __post_init__(self) -> None:
        _validate(self.weights, self.critical, self.urgent_weight, self.fallback_threshold, where="triage")

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON form (the ``triage:`` section)."""
        return {"weights": {name: float(self.weights[name]) for name in L.FINDINGS if name in self.weights},
                "critical": list(self.critical), "urgent_weight": self.urgent_weight,
                "fallback_threshold": self.fallback_threshold}


def _number(value: object, where: str, *, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: must be a number, got {value!r}")
    if value < low or (low_open and value == low):
        raise ConfigError(f"{where}: must be {'>' if low_open else '>='} {low}, got {value}")
    if value > high:
        raise ConfigError(f"{where}: must be <= {high}, got {value}")
    return float(value)


def _validate(weights: Mapping[str, object], critical: Sequence[str], urgent_weight: object,
              fallback_threshold: object, *, where: str) -> None:
    for name, weight in weights.items():
        if name not in L.FINDING_INDEX:
            raise ConfigError(f"{where}.weights.{name}: unknown finding (expected one of {', '.join(L.FINDINGS)})")
        _number(weight, f"{where}.weights.{name}", low=0.0, high=1.0)
    for name in critical:
        if name not in L.FINDING_INDEX:
            raise ConfigError(f"{where}.critical: unknown finding {name!r}")
    _number(urgent_weight, f"{where}.urgent_weight", low=0.0, high=1.0)
    _number(fallback_threshold, f"{where}.fallback_threshold", low=0.0, high=1.0, low_open=True)


def default_urgency_config() -> UrgencyConfig:
    """The documented default: labels.URGENCY_* (resources/configs/triage_default.yaml says the same)."""
    return UrgencyConfig()


def urgency_config_from_dict(doc: Mapping[str, Any] | None, *, where: str = "triage") -> UrgencyConfig:
    """An UrgencyConfig from the ``triage:`` mapping; missing keys and unlisted findings keep their defaults."""
    doc = dict(doc or {})
    unknown = sorted(set(doc) - set(CONFIG_KEYS) - set(SIMULATION_KEYS))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (expected {', '.join(CONFIG_KEYS + SIMULATION_KEYS)})")
    weights = dict(L.URGENCY_WEIGHTS)
    raw = doc.get("weights") or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}.weights: must be a mapping finding -> weight")
    weights.update({str(k): v for k, v in raw.items()})
    critical = doc.get("critical", L.URGENCY_CRITICAL)
    if isinstance(critical, str) or not isinstance(critical, Sequence):
        raise ConfigError(f"{where}.critical: must be a list of findings, got {critical!r}")
    critical = tuple(str(c) for c in critical)
    urgent = doc.get("urgent_weight", L.URGENCY_URGENT_WEIGHT)
    fallback = doc.get("fallback_threshold", L.URGENCY_FALLBACK_THRESHOLD)
    _validate(weights, critical, urgent, fallback, where=where)  # errors name the caller's file and field
    return UrgencyConfig(weights={k: float(v) for k, v in weights.items()}, critical=critical,
                         urgent_weight=float(urgent), fallback_threshold=float(fallback))


def read_triage_section(path: Path) -> dict[str, Any]:
    """The ``triage:`` mapping of a YAML file (or the whole file when it has no such key); ConfigError naming it."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read urgency config ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{path}: expected a mapping (a `triage:` section or its keys)")
    section = doc.get("triage", doc)
    if not isinstance(section, Mapping):
        raise ConfigError(f"{path}: triage: must be a mapping")
    return dict(section)


def load_urgency_config(path: Path | None) -> UrgencyConfig:
    """Read a YAML file (a ``triage:`` section or a bare mapping); None gives the default. Errors name the field."""
    if path is None:
        return default_urgency_config()
    return urgency_config_from_dict(read_triage_section(path), where=f"{Path(path)}: triage")


@dataclass(frozen=True)
class Urgency:
    """The urgency of one study. ``basis`` says what made findings positive: "thresholds" (val operating points),
    "probabilities" (no thresholds: p >= fallback_threshold) or "mixed" (some thresholds undefined)."""

    score: float
    level: str
    top_finding: str | None
    positives: tuple[str, ...]
    basis: str = "thresholds"

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "level": self.level, "top_finding": self.top_finding,
                "positives": list(self.positives), "basis": self.basis}


@dataclass(frozen=True)
class UrgencyBatch:
    """Urgency of N studies at once (what the simulation uses): arrays aligned with the input rows."""

    names: tuple[str, ...]
    score: np.ndarray  # (N,) float64 in [0, 1]
    tier: np.ndarray  # (N,) int8: index into labels.URGENCY_LEVELS
    top: np.ndarray  # (N,) int64 column of the top finding in ``names``, -1 when none is positive
    positive: np.ndarray  # (N, K) bool
    basis: str

    def levels(self) -> np.ndarray:
        return np.asarray(L.URGENCY_LEVELS, dtype=object)[self.tier]

    def row(self, i: int) -> Urgency:
        top = int(self.top[i])
        return Urgency(score=float(self.score[i]), level=L.URGENCY_LEVELS[int(self.tier[i])],
                       top_finding=self.names[top] if top >= 0 else None,
                       positives=tuple(n for n, p in zip(self.names, self.positive[i], strict=True) if p),
                       basis=self.basis)


def _basis(names: Sequence[str], thresholds: Mapping[str, float | None] | None) -> str:
    if thresholds is None:
        return "probabilities"
    defined = [thresholds.get(n) is not None for n in names]
    return "thresholds" if all(defined) else ("probabilities" if not any(defined) else "mixed")


def score_urgency_batch(
    probabilities: np.ndarray,
    names: Sequence[str],
    thresholds: Mapping[str, float | None] | None,
    *,
    config: UrgencyConfig | None = None,
) -> UrgencyBatch:
    """Urgency of every row of ``probabilities`` (N, K), columns named ``names``; non-finding columns are ignored."""
    cfg = config or default_urgency_config()
    probs = np.asarray(probabilities, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(names):
        raise EvaluationError(f"probabilities: shape {probs.shape} does not match {len(names)} names")
    if not np.all(np.isfinite(probs)):
        raise EvaluationError("probabilities: contain NaN or infinite values")
    names = tuple(names)
    keep = np.array([n in cfg.weights for n in names], dtype=bool)
    thr = np.array([cfg.fallback_threshold if thresholds is None or thresholds.get(n) is None else thresholds[n]
                    for n in names], dtype=np.float64)
    weight = np.array([cfg.weights.get(n, 0.0) for n in names], dtype=np.float64)
    col_tier = np.where([n in cfg.critical for n in names], 2, np.where(weight >= cfg.urgent_weight, 1, 0))
    positive = (probs >= thr) & keep
    tier = np.where(positive, col_tier, -1).max(axis=1, initial=-1)
    # Within the study's tier, the positive finding with the largest weight x probability leads.
    lead = np.where(positive & (col_tier[None, :] == tier[:, None]), weight * probs, -1.0)
    top = np.where(tier >= 0, lead.argmax(axis=1) if lead.size else -1, -1)
    wp = np.where(tier >= 0, lead.max(axis=1, initial=-1.0), 0.0)
    tier = np.maximum(tier, 0).astype(np.int8)
    score = (tier + wp) / len(L.URGENCY_LEVELS)
    return UrgencyBatch(names=names, score=score, tier=tier, top=top.astype(np.int64), positive=positive,
                        basis=_basis([n for n in names if n in cfg.weights], thresholds))


def score_urgency(
    probabilities: Mapping[str, float],
    thresholds: Mapping[str, float | None] | None,
    *,
    config: UrgencyConfig | None = None,
) -> Urgency:
    """Urgency of one study from its finding probabilities (keys: finding names; others are ignored)."""
    names = tuple(n for n in L.FINDINGS if n in probabilities)
    for n in names:
        value = probabilities[n]
        if isinstance(value, bool) or not isinstance(value, int | float | np.floating) or not math.isfinite(value):
            raise EvaluationError(f"probabilities.{n}: must be a finite number, got {value!r}")
    row = np.array([[float(probabilities[n]) for n in names]], dtype=np.float64).reshape(1, len(names))
    return score_urgency_batch(row, names, thresholds, config=config).row(0)


def finding_thresholds(thresholds: Any, *, method: str | None = None) -> dict[str, float | None] | None:
    """Finding name -> threshold from a ``cxrmtl.eval.thresholds.Thresholds`` (any task whose output is a finding,
    e.g. ``findings`` or ``findings:Pneumothorax``); None when ``thresholds`` is None."""
    if thresholds is None:
        return None
    table = thresholds.methods.get(method or thresholds.default, {})
    out: dict[str, float | None] = {}
    for outputs in table.values():
        for name, value in outputs.items():
            if name in L.FINDING_INDEX and out.get(name) is None:
                out[name] = value
    return out
