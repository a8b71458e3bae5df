"""A discrete-event simulation of a chest X-ray reading room: what a worklist order does to the time to report.

Model (docs/triage.md; after Baltruschat et al., Eur Radiol 2021, who simulated FIFO vs AI urgency order):

- Studies arrive as a Poisson stream of ``arrivals_per_hour`` for ``hours`` hours (exponential gaps). Each arrival
  is an image drawn uniformly, with replacement, from a split: it carries the model's urgency and its TRUE labels.
- ``readers`` radiologists each take the next study by the policy (``worklist.POLICIES``) the moment they are free
  and read it in a time drawn from ``READ_TIMES`` around ``read_minutes`` (fixed, exponential, or lognormal with
  log-sd 0.5), without interruption. After ``hours`` no study arrives; the readers drain the queue, so every study
  gets a report time. ``waiting_at_close`` counts the studies still waiting at closing time.
- Time to report = report time - arrival (minutes). Each seed is one simulated day; all policies of a seed see the
  same arrivals, studies and read times (common random numbers), so their ratios are paired. Statistics are per
  policy and per group of studies (all, any critical finding, each finding's true-positive studies): mean, median,
  p95 and maximum, with a percentile interval over the seeds.

The event loop is a heap of reader free times and ``worklist.Worklist`` (O(log n) per study): a simulated day of
1,000 studies takes a few milliseconds per policy.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from cxrmtl import labels as L
from cxrmtl.errors import ConfigError, EvaluationError
from cxrmtl.triage.worklist import POLICIES, QueuedStudy, policy

STAT_NAMES: tuple[str, ...] = ("mean", "median", "p95", "max")
ALL_GROUP = "all studies"
CRITICAL_GROUP = "critical (any)"
AUTO_LIMIT = "auto"
LOGNORMAL_SIGMA = 0.5  # log-sd of lognormal read times: a coefficient of variation of 0.53 (sqrt(exp(0.25) - 1))


def _fixed(rng: np.random.Generator, mean: float, n: int) -> np.ndarray:
    return np.full(n, float(mean))


def _exponential(rng: np.random.Generator, mean: float, n: int) -> np.ndarray:
    return rng.exponential(mean, n)


def _lognormal(rng: np.random.Generator, mean: float, n: int) -> np.ndarray:
    # E[exp(N(mu, s^2))] = exp(mu + s^2 / 2) = mean. Reading and exam durations are right-skewed (Raghavan et al.,
    # J Digit Imaging 2019, fit log-logistic/lognormal families best).
    return rng.lognormal(math.log(mean) - LOGNORMAL_SIGMA**2 / 2, LOGNORMAL_SIGMA, n)


# Registry of read-time distributions: name -> (rng, mean minutes, n) -> minutes.
READ_TIMES: dict[str, Callable[[np.random.Generator, float, int], np.ndarray]] = {
    "fixed": _fixed,
    "exponential": _exponential,
    "lognormal": _lognormal,
}


@dataclass(frozen=True)
class SimulationOptions:
    """The reading room and the experiment. Defaults: labels.TRIAGE_SIM_* (why those numbers: docs/triage.md)."""

    arrivals_per_hour: float = L.TRIAGE_SIM_ARRIVALS_PER_HOUR
    readers: int = L.TRIAGE_SIM_READERS
    read_minutes: float = L.TRIAGE_SIM_READ_MINUTES
    read_time: str = L.TRIAGE_SIM_READ_TIME
    hours: float = L.TRIAGE_SIM_HOURS
    upper_limit_minutes: float | str | None = L.TRIAGE_SIM_UPPER_LIMIT  # minutes, "auto" (auto_upper_limit), None
    seeds: int = L.TRIAGE_SIM_SEEDS
    seed: int = 0
    policies: tuple[str, ...] = tuple(POLICIES)
    level: float = L.EVAL_CI_LEVEL

    def __post_init__(self) -> None:
        positive = {"arrivals_per_hour": self.arrivals_per_hour, "read_minutes": self.read_minutes,
                    "hours": self.hours}
        for name, value in positive.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name}: must be a positive number, got {value!r}")
        for name, value in (("readers", self.readers), ("seeds", self.seeds)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
        limit = self.upper_limit_minutes
        if isinstance(limit, str) and limit != AUTO_LIMIT:
            raise ConfigError(f"upper_limit_minutes: must be a number of minutes or {AUTO_LIMIT!r}, got {limit!r}")
        if limit is not None and not isinstance(limit, str) and not (isinstance(limit, int | float) and limit > 0):
            raise ConfigError(f"upper_limit_minutes: must be positive, got {limit!r}")
        if self.read_time not in READ_TIMES:
            raise ConfigError(f"read_time: unknown {self.read_time!r} (expected one of {', '.join(READ_TIMES)})")
        unknown = [p for p in self.policies if p not in POLICIES]
        if unknown or not self.policies:
            raise ConfigError(f"policies: unknown {unknown or 'none'} (expected some of {', '.join(POLICIES)})")
        if "urgency_upper_limit" in self.policies and self.upper_limit_minutes is None:
            raise ConfigError("upper_limit_minutes: the urgency_upper_limit policy needs a limit")
        if not 0 < self.level < 1:
            raise ConfigError(f"level: must be in (0, 1), got {self.level}")

    @property
    def utilisation(self) -> float:
        """Offered load per reader: arrivals x read time / (readers x 60). Above 1 the queue grows all day."""
        return self.arrivals_per_hour * self.read_minutes / (60.0 * self.readers)


@dataclass(frozen=True)
class StudyPool:
    """The studies a simulated day draws from: one row per image of a split."""

    images: np.ndarray  # (N,) image names
    urgency: np.ndarray  # (N,) urgency score in [0, 1]
    level: np.ndarray  # (N,) int8 tier (labels.URGENCY_LEVELS index)
    truth: np.ndarray  # (N, K) bool TRUE labels (a masked label counts as absent)
    names: tuple[str, ...]  # the K findings
    critical: tuple[str, ...]  # findings whose true positives form the critical group
    basis: str = "thresholds"

    def __post_init__(self) -> None:
        n = len(self.images)
        if n == 0:
            raise EvaluationError("study pool: no images to draw studies from")
        if self.urgency.shape != (n,) or self.level.shape != (n,) or self.truth.shape != (n, len(self.names)):
            raise EvaluationError(f"study pool: arrays do not match {n} images and {len(self.names)} findings")

    def groups(self) -> dict[str, np.ndarray]:
        """Group name -> (N,) bool membership: all, any critical finding, each finding's true positives."""
        crit = [self.names.index(c) for c in self.critical if c in self.names]
        out = {ALL_GROUP: np.ones(len(self.images), dtype=bool),
               CRITICAL_GROUP: self.truth[:, crit].any(axis=1) if crit else np.zeros(len(self.images), bool)}
        out.update({name: self.truth[:, k] for k, name in enumerate(self.names)})
        return out


@dataclass(frozen=True)
class Day:
    """One simulated day: arrival minutes (sorted), the pool row of each study and its read time."""

    arrivals: np.ndarray
    studies: np.ndarray
    durations: np.ndarray


def draw_day(pool: StudyPool, options: SimulationOptions, rng: np.random.Generator) -> Day:
    """A Poisson stream of arrivals over the opening hours, each a random image of the pool, with read times."""
    horizon = options.hours * 60.0
    n = int(rng.poisson(options.arrivals_per_hour * options.hours))
    arrivals = np.sort(rng.uniform(0.0, horizon, n))  # given n, Poisson arrival times are uniform order statistics
    studies = rng.integers(0, len(pool.images), n)
    durations = READ_TIMES[options.read_time](rng, options.read_minutes, n)
    return Day(arrivals=arrivals, studies=studies, durations=durations)


@dataclass(frozen=True)
class QueueResult:
    """Per study of a day: when its reading started, when it was reported, and by which reader."""

    start: np.ndarray
    end: np.ndarray
    reader: np.ndarray


def simulate_queue(
    arrivals: Sequence[float] | np.ndarray,
    urgency: Sequence[float] | np.ndarray,
    durations: Sequence[float] | np.ndarray,
    *,
    readers: int,
    policy_name: str,
    upper_limit_minutes: float | None = None,
) -> QueueResult:
    """Run one day through the reading room. ``arrivals`` must be sorted; readers are free from time 0."""
    arrivals = np.asarray(arrivals, dtype=np.float64)
    urgency = np.asarray(urgency, dtype=np.float64)
    durations = np.asarray(durations, dtype=np.float64)
    n = len(arrivals)
    if len(urgency) != n or len(durations) != n:
        raise EvaluationError(f"simulate_queue: {n} arrivals but {len(urgency)} urgencies, {len(durations)} durations")
    if n and np.any(np.diff(arrivals) < 0):
        raise EvaluationError("simulate_queue: arrivals must be sorted")
    worklist = policy(policy_name).worklist(upper_limit_minutes=upper_limit_minutes)
    start, end = np.empty(n), np.empty(n)
    reader = np.empty(n, dtype=np.int64)
    free = [(0.0, r) for r in range(readers)]  # (time the reader is free, reader id): a heap
    arr, urg = arrivals.tolist(), urgency.tolist()
    nxt = 0

    def admit(until: float) -> int:
        i = nxt
        while i < n and arr[i] <= until:
            worklist.push(QueuedStudy(str(i), arr[i], urg[i]))
            i += 1
        return i

    done = 0
    while done < n:
        # Events in time order: the reader free soonest decides, with every study arrived by then in the queue.
        t, r = heapq.heappop(free)
        nxt = admit(t)
        if not worklist:  # idle until the next arrival, then decide again (other readers may be free earlier)
            heapq.heappush(free, (arr[nxt], r))
            continue
        i = int(worklist.pop(t).id)
        start[i], end[i], reader[i] = t, t + durations[i], r
        heapq.heappush(free, (end[i], r))
        done += 1
    return QueueResult(start=start, end=end, reader=reader)


def _stats(times: np.ndarray) -> np.ndarray:
    if times.size == 0:
        return np.full(len(STAT_NAMES), np.nan)
    return np.array([times.mean(), np.median(times), np.percentile(times, 95), times.max()])


@dataclass(frozen=True)
class SimulationResult:
    """Per-seed numbers of a simulation and their summary (the triage.json document, see ``to_json``)."""

    options: SimulationOptions
    groups: tuple[str, ...]
    stats: dict[str, np.ndarray]  # policy -> (seeds, groups, 4) minutes (NaN: group empty that day)
    counts: np.ndarray  # (seeds, groups) studies per group per day
    waiting_at_close: dict[str, np.ndarray]  # policy -> (seeds,)
    busy: dict[str, np.ndarray]  # policy -> (seeds,) share of reader time spent reading until the last report
    n_studies: np.ndarray  # (seeds,)
    upper_limit: float | None = None  # minutes actually used (``"auto"`` resolved)

    def interval(self, values: np.ndarray) -> dict[str, float | None]:
        """Mean over seeds and the percentile interval (``options.level``) of per-seed values; NaN days left out."""
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return {"value": None, "low": None, "high": None, "n_valid": 0}
        alpha = (1.0 - self.options.level) / 2.0
        low, high = np.percentile(v, [100 * alpha, 100 * (1 - alpha)])
        return {"value": float(v.mean()), "low": float(low), "high": float(high), "n_valid": int(v.size)}

    def ratio(self, policy_name: str, group: str, stat: str) -> dict[str, float | None]:
        """Per-seed ratio of a statistic to FIFO's on the same day (paired), summarised over seeds."""
        g, s = self.groups.index(group), STAT_NAMES.index(stat)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = self.stats[policy_name][:, g, s] / self.stats["fifo"][:, g, s]
        return self.interval(r)

    def stat(self, policy_name: str, group: str, stat: str) -> dict[str, float | None]:
        return self.interval(self.stats[policy_name][:, self.groups.index(group), STAT_NAMES.index(stat)])


def auto_upper_limit(pool: StudyPool, options: SimulationOptions) -> float:
    """The upper limit of ``"auto"``: FIFO's longest wait in this room, averaged over ``options.seeds`` calibration
    days that are not the measured ones (SeedSequence([seed, s, 1])).

    The goal keeps the maximum time to report near FIFO's; a limit at the longest wait FIFO would impose makes an
    overdue study (typically a critical finding the model missed) wait about as long as under FIFO and no longer
    (Baltruschat et al. 2021 set the limit against the FIFO turnaround of their department). A department would take
    the number from its own FIFO history; the simulation takes it from FIFO days of the same room.
    """
    longest = []
    for s in range(options.seeds):
        day = draw_day(pool, options, np.random.default_rng([options.seed, s, 1]))
        res = simulate_queue(day.arrivals, pool.urgency[day.studies], day.durations, readers=options.readers,
                             policy_name="fifo")
        longest.append(float((res.start - day.arrivals).max()) if len(day.arrivals) else 0.0)
    return max(float(np.mean(longest)), 1e-6)


def resolve_upper_limit(pool: StudyPool, options: SimulationOptions) -> float | None:
    """The limit in minutes that the simulation uses (``"auto"`` resolved by ``auto_upper_limit``)."""
    if options.upper_limit_minutes == AUTO_LIMIT:
        return auto_upper_limit(pool, options)
    return None if options.upper_limit_minutes is None else float(options.upper_limit_minutes)


def run_simulation(pool: StudyPool, options: SimulationOptions) -> SimulationResult:
    """Simulate ``options.seeds`` days under every policy; seed s uses numpy's SeedSequence([seed, s])."""
    limit = resolve_upper_limit(pool, options)
    groups = pool.groups()
    names = tuple(groups)
    member = np.stack([groups[g] for g in names], axis=1)  # (N, G)
    stats = {p: np.full((options.seeds, len(names), len(STAT_NAMES)), np.nan) for p in options.policies}
    waiting = {p: np.zeros(options.seeds) for p in options.policies}
    busy = {p: np.zeros(options.seeds) for p in options.policies}
    counts = np.zeros((options.seeds, len(names)), dtype=np.int64)
    n_studies = np.zeros(options.seeds, dtype=np.int64)
    close = options.hours * 60.0
    for s in range(options.seeds):
        day = draw_day(pool, options, np.random.default_rng([options.seed, s]))
        m = member[day.studies]  # (n, G)
        counts[s], n_studies[s] = m.sum(axis=0), len(day.studies)
        for p in options.policies:
            res = simulate_queue(day.arrivals, pool.urgency[day.studies], day.durations, readers=options.readers,
                                 policy_name=p, upper_limit_minutes=limit)
            ttr = res.end - day.arrivals
            stats[p][s] = np.stack([_stats(ttr[m[:, g]]) for g in range(len(names))])
            waiting[p][s] = int(np.sum((day.arrivals <= close) & (res.start > close)))
            last = float(res.end.max()) if len(ttr) else 0.0
            busy[p][s] = float(day.durations.sum() / (options.readers * last)) if last > 0 else 0.0
    return SimulationResult(options=options, groups=names, stats=stats, counts=counts, waiting_at_close=waiting,
                            busy=busy, n_studies=n_studies, upper_limit=limit)


@dataclass(frozen=True)
class GoalCheck:
    """The issue's goal on the critical group: mean <= 0.45 x FIFO and maximum <= 1.1 x FIFO (labels.TRIAGE_GOAL_*)."""

    policy: str
    group: str
    mean_ratio: dict[str, float | None]
    max_ratio: dict[str, float | None]
    met: bool | None  # None when undefined (no critical study in any simulated day)

    def to_json(self) -> dict[str, object]:
        return {"policy": self.policy, "group": self.group, "mean_ratio": self.mean_ratio,
                "max_ratio": self.max_ratio, "mean_target": L.TRIAGE_GOAL_MEAN_RATIO,
                "max_target": L.TRIAGE_GOAL_MAX_RATIO, "met": self.met,
                "source": "Baltruschat et al., Eur Radiol 2021: pneumothorax 35.6 / 80.1 min = 0.44 of FIFO, "
                          "maximum about 1.1 of FIFO with an upper limit"}

    def sentence(self) -> str:
        mean, mx = self.mean_ratio.get("value"), self.max_ratio.get("value")
        if self.met is None or mean is None or mx is None:
            return f"goal ({self.policy}, {self.group}): undefined (no such study in the simulated days)"
        verdict = "MET" if self.met else "NOT MET"
        return (f"goal {verdict} ({self.policy}, {self.group}): mean time to report {mean:.2f} x FIFO "
                f"(target <= {L.TRIAGE_GOAL_MEAN_RATIO}), maximum {mx:.2f} x FIFO "
                f"(target <= {L.TRIAGE_GOAL_MAX_RATIO})")


def check_goal(result: SimulationResult, *, group: str = CRITICAL_GROUP) -> GoalCheck:
    """Judge the goal on the upper-limit policy when it was simulated, else on plain urgency order."""
    candidates = [p for p in ("urgency_upper_limit", "urgency") if p in result.stats]
    if "fifo" not in result.stats or not candidates:
        raise EvaluationError("goal: needs the fifo policy and an urgency policy in the simulation")
    name = candidates[0]
    mean, mx = result.ratio(name, group, "mean"), result.ratio(name, group, "max")
    met = None if mean["value"] is None or mx["value"] is None else bool(
        mean["value"] <= L.TRIAGE_GOAL_MEAN_RATIO and mx["value"] <= L.TRIAGE_GOAL_MAX_RATIO)
    return GoalCheck(policy=name, group=group, mean_ratio=mean, max_ratio=mx, met=met)


def summary_json(result: SimulationResult, pool: StudyPool) -> dict[str, object]:
    """The policies x groups document: statistics with intervals, ratios to FIFO, counts, queue at closing time."""
    policies: dict[str, object] = {}
    for p in result.options.policies:
        groups: dict[str, object] = {}
        for g, name in enumerate(result.groups):
            entry: dict[str, object] = {"n_per_day": result.interval(result.counts[:, g])}
            entry.update({s: result.stat(p, name, s) for s in STAT_NAMES})
            if p != "fifo" and "fifo" in result.stats:
                entry["ratio_to_fifo"] = {s: result.ratio(p, name, s) for s in STAT_NAMES}
            groups[name] = entry
        policies[p] = {"description": POLICIES[p].description,
                       "waiting_at_close": result.interval(result.waiting_at_close[p]),
                       "reader_busy_share": result.interval(result.busy[p]), "groups": groups}
    levels = {lvl: int(np.sum(pool.level == i)) for i, lvl in enumerate(L.URGENCY_LEVELS)}
    o = result.options
    return {
        "options": {"arrivals_per_hour": o.arrivals_per_hour, "readers": o.readers, "read_minutes": o.read_minutes,
                    "read_time": o.read_time, "hours": o.hours, "upper_limit_minutes": result.upper_limit,
                    "upper_limit_rule": "auto" if o.upper_limit_minutes == AUTO_LIMIT else "fixed",
                    "seeds": o.seeds, "seed": o.seed, "policies": list(o.policies), "level": o.level,
                    "offered_utilisation": o.utilisation},
        "pool": {"images": len(pool.images), "levels": levels, "critical": list(pool.critical),
                 "urgency_basis": pool.basis,
                 "true_positives": {n: int(pool.truth[:, k].sum()) for k, n in enumerate(pool.names)}},
        "studies_per_day": result.interval(result.n_studies),
        "groups": list(result.groups),
        "policies": policies,
        "goal": check_goal(result).to_json(),
    }


def pool_from_arrays(
    images: Sequence[str] | np.ndarray,
    probabilities: np.ndarray,
    names: Sequence[str],
    truth: np.ndarray,
    *,
    thresholds: Mapping[str, float | None] | None,
    config: object | None = None,
    positive: np.ndarray | None = None,
) -> StudyPool:
    """A StudyPool from finding probabilities (N, K), the TRUE labels (N, K) and the operating thresholds."""
    from cxrmtl.triage.urgency import default_urgency_config, score_urgency_batch

    cfg = config or default_urgency_config()
    batch = score_urgency_batch(probabilities, names, thresholds, config=cfg, positive=positive)
    return StudyPool(images=np.asarray(images), urgency=batch.score, level=batch.tier,
                     truth=np.asarray(truth).astype(bool), names=tuple(names),
                     critical=tuple(c for c in cfg.critical), basis=batch.basis)
