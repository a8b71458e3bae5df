"""Urgency of one study from its finding probabilities: the rule every worklist in cxrmtl sorts by.

The rule (docs/triage.md), after Annarumma et al., Radiology 2019 (priority classes critical / urgent / non-urgent /
normal, a study taking the most urgent class the model finds) and Baltruschat et al., Eur Radiol 2021 (urgency
order of the findings):

1. A finding is *positive* when its probability reaches its operating threshold (``p >= t``, chosen on val and
   stored in RUN/thresholds.json; by default the 90 %-sensitivity point, ``threshold_method``, because a critical
   finding the model misses sinks to the end of the worklist). Without thresholds, or where a finding's threshold
   is undefined, ``t`` is ``fallback_threshold`` (0.5): "probabilities only", reported in ``Urgency.basis``.
2. The *level* is "critical" when a positive finding is in the critical set, else "urgent" when a positive finding
   has weight >= ``urgent_weight``, else "routine". A study with no positive finding is routine.
3. The *score*, which orders the worklist, is ``max_f w_f * q_f`` in [0, 1], where ``q_f`` is the probability
   rescaled so that the threshold sits at 1/2 (``q = p / (2t)`` below it, ``1/2 + (p - t) / (2 (1 - t))`` above;
   with t = 0.5, q = p). The thresholds put every finding's probability on one scale (a rare finding's threshold
   may be 0.05, a common one's 0.4), the weights rank the findings. Positive critical findings score >= w/2 = 0.5.

Why one continuous score rather than strict levels: with a model of AUROC ~0.85, the operating point that
maximises Youden's J flags roughly a fifth of the studies as pneumothorax and most as something urgent, so strict
levels put every weak call above every missed (sub-threshold) pneumothorax, which then waits longest of all. In the
simulation the continuous score halved the pneumothorax time-to-report ratio against strict levels (docs/triage.md).
The level is what the model calls; the score is the order. A near-miss pneumothorax (p just under its threshold)
can therefore precede a weak urgent call: that is intended.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrmtl import labels as L
from cxrmtl.errors import ConfigError, EvaluationError

# Keys of the YAML ``triage:`` section handled here; the simulation keys live in triage/simulate.py.
CONFIG_KEYS: tuple[str, ...] = ("weights", "critical", "urgent_weight", "fallback_threshold", "threshold_method")
# Simulation keys a triage YAML may carry next to the urgency keys (read by triage/simulate.py).
SIMULATION_KEYS: tuple[str, ...] = ("simulation",)
log = logging.getLogger(__name__)
DEFAULT_CONFIG_FILE = Path(__file__).resolve().parents[1] / "resources" / "configs" / "triage_default.yaml"


@dataclass(frozen=True)
class UrgencyConfig:
    """Per-finding weights in [0, 1], the critical set and the level cut-offs (defaults in labels.py)."""

    weights: Mapping[str, float] = field(default_factory=lambda: dict(L.URGENCY_WEIGHTS))
    critical: tuple[str, ...] = L.URGENCY_CRITICAL
    urgent_weight: float = L.URGENCY_URGENT_WEIGHT
    fallback_threshold: float = L.URGENCY_FALLBACK_THRESHOLD
    threshold_method: str = L.URGENCY_THRESHOLD_METHOD

    def __post_init__(self) -> None:
        _validate(self.weights, self.critical, self.urgent_weight, self.fallback_threshold, self.threshold_method,
                  where="triage")

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON form (the ``triage:`` section)."""
        return {"weights": {name: float(self.weights[name]) for name in L.FINDINGS if name in self.weights},
                "critical": list(self.critical), "urgent_weight": self.urgent_weight,
                "fallback_threshold": self.fallback_threshold, "threshold_method": self.threshold_method}


def _number(value: object, where: str, *, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where}: must be a number, got {value!r}")
    if value < low or (low_open and value == low):
        raise ConfigError(f"{where}: must be {'>' if low_open else '>='} {low}, got {value}")
    if value > high:
        raise ConfigError(f"{where}: must be <= {high}, got {value}")
    return float(value)


def _validate(weights: Mapping[str, object], critical: Sequence[str], urgent_weight: object,
              fallback_threshold: object, threshold_method: object, *, where: str) -> None:
    from cxrmtl.eval.thresholds import THRESHOLD_METHODS

    for name, weight in weights.items():
        if name not in L.FINDING_INDEX:
            raise ConfigError(f"{where}.weights.{name}: unknown finding (expected one of {', '.join(L.FINDINGS)})")
        _number(weight, f"{where}.weights.{name}", low=0.0, high=1.0)
    for name in critical:
        if name not in L.FINDING_INDEX:
            raise ConfigError(f"{where}.critical: unknown finding {name!r}")
    _number(urgent_weight, f"{where}.urgent_weight", low=0.0, high=1.0)
    _number(fallback_threshold, f"{where}.fallback_threshold", low=0.0, high=1.0, low_open=True)
    if threshold_method not in THRESHOLD_METHODS:
        raise ConfigError(f"{where}.threshold_method: must be one of {', '.join(THRESHOLD_METHODS)}, "
                          f"got {threshold_method!r}")


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
    method = doc.get("threshold_method", L.URGENCY_THRESHOLD_METHOD)
    _validate(weights, critical, urgent, fallback, method, where=where)  # errors name the caller's file and field
    return UrgencyConfig(weights={k: float(v) for k, v in weights.items()}, critical=critical,
                         urgent_weight=float(urgent), fallback_threshold=float(fallback), threshold_method=method)


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
    positive: np.ndarray | None = None,
) -> UrgencyBatch:
    """Urgency of every row of ``probabilities`` (N, K), columns named ``names``; non-finding columns are ignored.

    ``positive`` (N, K) bool, optional: positive calls made elsewhere at the operating thresholds (e.g. the
    ``<Finding>_positive`` columns of evaluation's predictions.csv, whose probabilities may be temperature-scaled
    while the thresholds are not); it replaces the ``p >= threshold`` comparison.
    """
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
    if positive is None:
        positive = probs >= thr
    elif np.shape(positive) != probs.shape:
        raise EvaluationError(f"positive: shape {np.shape(positive)} does not match probabilities {probs.shape}")
    positive = np.asarray(positive, dtype=bool) & keep
    wq = np.where(keep, weight * threshold_scale(probs, thr, positive), 0.0)
    score = wq.max(axis=1, initial=0.0)
    col_tier = np.where([n in cfg.critical for n in names], 2, np.where(weight >= cfg.urgent_weight, 1, 0))
    tier = np.where(positive, col_tier, -1).max(axis=1, initial=-1)
    # The top finding: the positive finding of the study's level with the largest weight x scaled probability.
    lead = np.where(positive & (col_tier[None, :] == tier[:, None]), wq, -1.0)
    top = np.where(tier >= 0, lead.argmax(axis=1) if lead.size else -1, -1)
    return UrgencyBatch(names=names, score=score, tier=np.maximum(tier, 0).astype(np.int8), top=top.astype(np.int64),
                        positive=positive, basis=_basis([n for n in names if n in cfg.weights], thresholds))


def threshold_scale(probs: np.ndarray, thresholds: np.ndarray, positive: np.ndarray | None = None) -> np.ndarray:
    """Probabilities rescaled piecewise-linearly so that each column's threshold maps to 1/2 (monotone, in [0, 1]).

    ``positive`` (same shape, optional) decides the side of 1/2 when given: a call made at the threshold elsewhere
    stays on its side even if rounding put ``p`` a hair across ``t``.
    """
    p = np.asarray(probs, dtype=np.float64)
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), p.shape)
    above = p >= t if positive is None else np.asarray(positive, dtype=bool)
    low = 0.5 * p / np.maximum(t, 1e-12)
    high = 0.5 + 0.5 * (p - t) / np.maximum(1.0 - t, 1e-12)
    return np.clip(np.where(above, np.maximum(high, 0.5), np.minimum(low, 0.5 - 1e-12)), 0.0, 1.0)


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


def triage_thresholds(thresholds: Any, config: UrgencyConfig | None = None) -> dict[str, float | None] | None:
    """The finding thresholds the worklist uses: the run's operating point named by ``config.threshold_method``
    (default: the 90 %-sensitivity point chosen on val), or the run's default method when the file lacks it."""
    if thresholds is None:
        return None
    method = (config or default_urgency_config()).threshold_method
    if method not in thresholds.methods:
        log.warning("thresholds: no %r operating point recorded; using %r", method, thresholds.default)
        method = thresholds.default
    return finding_thresholds(thresholds, method=method)


def finding_temperature(thresholds: Any, finding: str) -> float | None:
    """The validation temperature of one finding's output (any task that predicts it), or None."""
    for outputs in (getattr(thresholds, "temperatures", None) or {}).values():
        if outputs.get(finding) is not None:
            return float(outputs[finding])
    return None


def score_result(result: Mapping[str, Any], operating: Any, *, config: UrgencyConfig | None = None) -> Urgency:
    """Urgency of one predict/serve result dict (``infer.results``) at the worklist's operating point.

    The same rule, and the same numbers, the reading-room simulation measured: calibrated probabilities are mapped
    back through each finding's temperature to the scale the thresholds were chosen on (temperature scaling is
    monotone), then scored against ``triage_thresholds`` (default: the 90 %-sensitivity point chosen on val).
    """
    from cxrmtl.runs.operating import apply_temperature

    findings = result.get("findings", {})
    probabilities = {name: float(doc["probability"]) for name, doc in findings.items()}
    if result.get("calibrated"):
        for name, p in probabilities.items():
            t = finding_temperature(operating, name)
            if t is not None:
                probabilities[name] = float(apply_temperature(np.array([p]), 1.0 / t)[0])
    return score_urgency(probabilities, triage_thresholds(operating, config), config=config)
