"""Worklist order: urgency first, the upper limit (an overdue study overtakes), FIFO ties; snapshot == incremental."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cxrmtl.triage.worklist import POLICIES, QueuedStudy, Worklist, next_study, order_worklist, policy


def ids(studies: list[QueuedStudy]) -> list[str]:
    return [s.id for s in studies]


def test_urgency_first_ties_fifo() -> None:
    q = [QueuedStudy("a", 0.0, 0.1), QueuedStudy("b", 1.0, 0.9), QueuedStudy("c", 2.0, 0.1),
         QueuedStudy("d", 3.0, 0.9)]
    assert ids(order_worklist(q, now=5.0, upper_limit_minutes=None)) == ["b", "d", "a", "c"]


def test_upper_limit_lets_an_overdue_low_urgency_study_overtake() -> None:
    q = [QueuedStudy("old", 0.0, 0.0), QueuedStudy("hot", 50.0, 1.0)]
    assert ids(order_worklist(q, now=60.0, upper_limit_minutes=60.0)) == ["hot", "old"]  # waited exactly 60: not yet
    assert ids(order_worklist(q, now=60.5, upper_limit_minutes=60.0)) == ["old", "hot"]  # waited 60.5 > 60
    assert ids(order_worklist(q, now=1e6, upper_limit_minutes=None)) == ["hot", "old"]  # no limit: never
    q.append(QueuedStudy("older", -5.0, 0.0))  # both overdue: oldest first, then urgency
    assert ids(order_worklist(q, now=61.0, upper_limit_minutes=60.0)) == ["older", "old", "hot"]
    assert next_study(q, now=61.0, upper_limit_minutes=60.0).id == "older"


def test_equal_urgency_is_fifo_and_queue_order_breaks_equal_arrivals() -> None:
    q = [QueuedStudy(str(i), float(t), 0.5) for i, t in enumerate([3, 1, 2, 1, 0])]
    assert ids(order_worklist(q, now=10.0, upper_limit_minutes=None)) == ["4", "1", "3", "2", "0"]


def test_empty_inputs() -> None:
    assert order_worklist([], now=0.0, upper_limit_minutes=1.0) == []
    with pytest.raises(IndexError):
        next_study([], now=0.0, upper_limit_minutes=None)
    with pytest.raises(IndexError):
        Worklist().pop(0.0)


def test_worklist_refuses_out_of_order_arrivals() -> None:
    wl = Worklist()
    wl.push(QueuedStudy("a", 5.0, 0.0))
    with pytest.raises(ValueError, match="before"):
        wl.push(QueuedStudy("b", 4.0, 0.0))


def test_policy_registry() -> None:
    assert list(POLICIES) == ["fifo", "urgency", "urgency_upper_limit"]
    with pytest.raises(KeyError, match="fifo"):
        policy("lifo")
    assert policy("fifo").worklist(upper_limit_minutes=5.0).upper_limit is None
    assert policy("urgency_upper_limit").worklist(upper_limit_minutes=5.0).upper_limit == 5.0


studies_strategy = st.lists(
    st.tuples(st.integers(0, 50), st.sampled_from([0.0, 0.25, 0.5, 1.0])), min_size=1, max_size=25
)


@settings(max_examples=150, deadline=None)
@given(studies_strategy, st.integers(0, 120), st.one_of(st.none(), st.integers(0, 60)))
def test_incremental_worklist_pops_in_snapshot_order(raw: list[tuple[int, float]], now: int,
                                                     limit: int | None) -> None:
    q = [QueuedStudy(str(i), float(t), u) for i, (t, u) in enumerate(sorted(raw, key=lambda x: x[0]))]
    wl = Worklist(upper_limit_minutes=None if limit is None else float(limit))
    wl.extend(q)
    popped = [wl.pop(float(now)) for _ in range(len(q))]
    assert ids(popped) == ids(order_worklist(q, now=float(now), upper_limit_minutes=limit))
    fifo = Worklist(use_urgency=False)
    fifo.extend(q)
    assert [fifo.pop(float(now)).id for _ in q] == ids(q)
