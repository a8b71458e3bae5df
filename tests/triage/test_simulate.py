"""The reading-room simulation: a hand-made queue with known report times, the upper limit, FIFO equivalence, and
properties (each study reported once, no reader reads two at once, nobody idles while a study waits)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrmtl import labels as L
from cxrmtl.errors import ConfigError, EvaluationError
from cxrmtl.triage.simulate import (
    ALL_GROUP,
    CRITICAL_GROUP,
    READ_TIMES,
    SimulationOptions,
    StudyPool,
    auto_upper_limit,
    check_goal,
    draw_day,
    pool_from_arrays,
    run_simulation,
    simulate_queue,
    summary_json,
)
from cxrmtl.triage.worklist import POLICIES

# One reader, 10 min per study. Worked by hand:
#   FIFO                 a 0-10, b 10-20, c 20-30, d 30-40, e 40-50
#   urgency              a 0-10 (alone); t=10 b (0.9, earlier than d); t=20 d (0.9); t=30 e (0.95) before c; c 40-50
#   urgency, limit 15    a 0-10; t=10 b (nobody waited > 15); t=20 c (waited 18 > 15) and then t=30 d (waited 27)
#                        both overtake the more urgent e, which arrived at 25 and is not overdue: e 40-50
ARRIVALS = [0.0, 1.0, 2.0, 3.0, 25.0]
URGENCY = [0.1, 0.9, 0.5, 0.9, 0.95]
EXPECTED_END = {
    "fifo": [10, 20, 30, 40, 50],
    "urgency": [10, 20, 50, 30, 40],
    "urgency_upper_limit": [10, 20, 30, 40, 50],
}


@pytest.mark.parametrize("policy_name", list(POLICIES))
def test_hand_made_queue(policy_name: str) -> None:
    res = simulate_queue(ARRIVALS, URGENCY, [10.0] * 5, readers=1, policy_name=policy_name, upper_limit_minutes=15)
    assert res.end.tolist() == EXPECTED_END[policy_name]
    assert res.start.tolist() == [e - 10 for e in EXPECTED_END[policy_name]]
    assert set(res.reader.tolist()) == {0}


def test_upper_limit_not_reached_is_plain_urgency() -> None:
    res = simulate_queue(ARRIVALS, URGENCY, [10.0] * 5, readers=1, policy_name="urgency_upper_limit",
                         upper_limit_minutes=100)
    assert res.end.tolist() == EXPECTED_END["urgency"]


def test_two_readers_take_the_most_urgent_first_and_idle_until_arrivals() -> None:
    res = simulate_queue([0.0, 0.0, 0.0, 50.0], [0.1, 0.5, 0.9, 0.0], [10.0] * 4, readers=2,
                         policy_name="urgency")
    assert res.end.tolist() == [20, 10, 10, 60]
    assert res.reader[1] != res.reader[2]  # the two urgent ones start together, on different readers


def test_queue_input_errors() -> None:
    with pytest.raises(EvaluationError, match="sorted"):
        simulate_queue([1.0, 0.0], [0, 0], [1, 1], readers=1, policy_name="fifo")
    with pytest.raises(EvaluationError, match="durations"):
        simulate_queue([0.0], [0, 0], [1], readers=1, policy_name="fifo")
    assert simulate_queue([], [], [], readers=2, policy_name="urgency").end.size == 0


day = st.integers(1, 30).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0, 100, allow_nan=False), min_size=n, max_size=n),
    st.lists(st.sampled_from([0.0, 0.2, 0.5, 0.9, 1.0]), min_size=n, max_size=n),
    st.lists(st.floats(0.1, 20, allow_nan=False), min_size=n, max_size=n),
))


@settings(max_examples=200, deadline=None)
@given(day, st.integers(1, 3), st.sampled_from(list(POLICIES)), st.floats(1, 50))
def test_properties(d: tuple[list[float], list[float], list[float]], readers: int, policy_name: str,
                    limit: float) -> None:
    arrivals, urgency, durations = np.sort(d[0]), np.array(d[1]), np.array(d[2])
    res = simulate_queue(arrivals, urgency, durations, readers=readers, policy_name=policy_name,
                         upper_limit_minutes=limit)
    # Every study is read exactly once, after it arrived, for its own read time.
    assert np.all(np.isfinite(res.start)) and np.all(res.start >= arrivals)
    np.testing.assert_allclose(res.end, res.start + durations)
    # No reader reads two studies at once.
    for r in range(readers):
        mine = np.argsort(res.start[res.reader == r])
        s, e = res.start[res.reader == r][mine], res.end[res.reader == r][mine]
        assert np.all(s[1:] >= e[:-1] - 1e-9)
    # Nobody idles while a study waits: at every moment a study waits, all readers are busy.
    for i in np.flatnonzero(res.start > arrivals + 1e-9):
        for tau in [arrivals[i], *res.end[(res.end >= arrivals[i]) & (res.end < res.start[i])]]:
            busy = np.sum((res.start <= tau + 1e-9) & (res.end > tau + 1e-9))
            assert busy == readers


@settings(max_examples=50, deadline=None)
@given(day, st.integers(1, 3), st.floats(1, 50))
def test_equal_urgency_is_fifo(d: tuple[list[float], list[float], list[float]], readers: int, limit: float) -> None:
    arrivals, durations = np.sort(d[0]), np.array(d[2])
    same = np.full(len(arrivals), 0.5)
    fifo = simulate_queue(arrivals, same, durations, readers=readers, policy_name="fifo")
    for name in ("urgency", "urgency_upper_limit"):
        other = simulate_queue(arrivals, same, durations, readers=readers, policy_name=name,
                               upper_limit_minutes=limit)
        np.testing.assert_array_equal(other.end, fifo.end)


def synthetic_pool(n: int = 400, seed: int = 0, separation: float = 2.5) -> StudyPool:
    """A pool whose model separates positives from negatives (AUROC ~0.96 at separation 2.5)."""
    rng = np.random.default_rng(seed)
    truth = rng.random((n, len(L.FINDINGS))) < 0.08
    z = rng.normal(size=truth.shape) + separation * truth
    probs = 1 / (1 + np.exp(-(z - 2.5)))
    return pool_from_arrays(np.array([f"{i:05d}.png" for i in range(n)]), probs, L.FINDINGS, truth,
                            thresholds=dict.fromkeys(L.FINDINGS, 0.4))


def test_run_simulation_summary_and_goal() -> None:
    pool = synthetic_pool()
    opts = SimulationOptions(arrivals_per_hour=40, readers=2, read_minutes=2.7, hours=24, seeds=20,
                             upper_limit_minutes=120)
    start = time.perf_counter()
    res = run_simulation(pool, opts)
    seconds = time.perf_counter() - start
    assert seconds < 10  # ~0.5 s on an idle core; generous for a shared CI machine
    doc = summary_json(res, pool)
    fifo = doc["policies"]["fifo"]["groups"][ALL_GROUP]
    assert fifo["mean"]["low"] <= fifo["mean"]["value"] <= fifo["mean"]["high"]
    assert fifo["median"]["value"] <= fifo["p95"]["value"] <= fifo["max"]["value"]
    assert 800 < doc["studies_per_day"]["value"] < 1120  # Poisson(960)
    crit = doc["policies"]["urgency"]["groups"][CRITICAL_GROUP]
    # A good model: critical studies are reported much sooner than under FIFO.
    assert crit["ratio_to_fifo"]["mean"]["value"] < 0.6
    # Without an upper limit some study waits far longer than any under FIFO; the limit bounds it.
    no_limit = doc["policies"]["urgency"]["groups"][ALL_GROUP]["ratio_to_fifo"]["max"]["value"]
    limited = doc["policies"]["urgency_upper_limit"]["groups"][ALL_GROUP]["max"]["value"]
    assert no_limit > 1.5 and limited < opts.upper_limit_minutes + 30
    goal = check_goal(res)
    assert goal.policy == "urgency_upper_limit" and goal.met == doc["goal"]["met"]
    assert ("MET" in goal.sentence()) and "x FIFO" in goal.sentence()
    # Same seed, same numbers.
    again = run_simulation(pool, opts)
    np.testing.assert_array_equal(again.stats["urgency"], res.stats["urgency"])


def test_options_validation() -> None:
    for kwargs, field in [({"readers": 0}, "readers"), ({"arrivals_per_hour": -1}, "arrivals_per_hour"),
                          ({"read_time": "gamma"}, "read_time"), ({"policies": ("lifo",)}, "policies"),
                          ({"upper_limit_minutes": None}, "upper_limit_minutes"), ({"seeds": 0}, "seeds"),
                          ({"hours": float("nan")}, "hours"), ({"upper_limit_minutes": "soon"}, "upper_limit"),
                          ({"upper_limit_minutes": -5.0}, "upper_limit")]:
        with pytest.raises(ConfigError, match=field):
            SimulationOptions(**kwargs)
    assert SimulationOptions(upper_limit_minutes=None, policies=("fifo", "urgency")).upper_limit_minutes is None
    assert 0.8 <= SimulationOptions().utilisation <= 0.95


def test_auto_upper_limit_is_fifos_longest_wait_on_separate_days() -> None:
    pool = synthetic_pool()
    opts = SimulationOptions(seeds=5, hours=6)
    res = run_simulation(pool, opts)
    assert res.upper_limit == pytest.approx(auto_upper_limit(pool, opts))
    longest = []
    for s in range(5):  # the calibration days, by hand
        day = draw_day(pool, opts, np.random.default_rng([opts.seed, s, 1]))
        q = simulate_queue(day.arrivals, pool.urgency[day.studies], day.durations, readers=1, policy_name="fifo")
        longest.append((q.start - day.arrivals).max())
    assert res.upper_limit == pytest.approx(np.mean(longest))
    doc = summary_json(res, pool)
    assert doc["options"]["upper_limit_rule"] == "auto" and doc["options"]["upper_limit_minutes"] == res.upper_limit
    fixed = summary_json(run_simulation(pool, SimulationOptions(seeds=2, hours=2, upper_limit_minutes=50)), pool)
    assert fixed["options"]["upper_limit_minutes"] == 50 and fixed["options"]["upper_limit_rule"] == "fixed"


@pytest.mark.parametrize("name", list(READ_TIMES))
def test_read_time_distributions_have_the_requested_mean(name: str) -> None:
    draws = READ_TIMES[name](np.random.default_rng(0), 3.0, 200_000)
    assert draws.mean() == pytest.approx(3.0, rel=0.01) and np.all(draws > 0)
