"""Worklist order: urgency first, an upper limit on waiting so nothing starves, first come first served on ties.

The rule (Baltruschat et al., Eur Radiol 2021: AI urgency order cut pneumothorax mean report turnaround from 80.1
to 35.6 min but raised the maximum from 890 to 1,293 min, because a study the model misses sinks to the end; an
upper limit on waiting, after which a study gets top urgency, brought the maximum down to 979 min):

1. A study that has waited *longer* than the upper limit (``now - arrival > upper_limit``) is overdue; overdue
   studies come first, oldest first.
2. The others follow by urgency, highest first.
3. Ties (equal urgency, or equal arrival among overdue studies) go first in, first out: earlier arrival, then the
   order in which the studies were queued.

``order_worklist`` sorts a snapshot (what a worklist page shows); ``Worklist`` keeps the same rule incrementally
(heap + arrival queue, O(log n) per study) for the reading-room simulation and the service. With all urgencies
equal, or ``use_urgency=False``, both are FIFO.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class QueuedStudy:
    """A study waiting to be read: arrival time (minutes, or any unit ``now`` also uses) and urgency score."""

    id: str
    arrival: float
    urgency: float


def is_overdue(study: QueuedStudy, *, now: float, upper_limit_minutes: float | None) -> bool:
    """True when the study has waited strictly longer than the upper limit (never when there is no limit)."""
    return upper_limit_minutes is not None and now - study.arrival > upper_limit_minutes


def order_worklist(
    studies: Sequence[QueuedStudy], *, now: float, upper_limit_minutes: float | None
) -> list[QueuedStudy]:
    """The studies in reading order at time ``now`` (overdue oldest first, then urgency, ties first in first out)."""

    def key(item: tuple[int, QueuedStudy]) -> tuple[int, float, float, int]:
        seq, s = item
        if is_overdue(s, now=now, upper_limit_minutes=upper_limit_minutes):
            return (0, 0.0, s.arrival, seq)
        return (1, -s.urgency, s.arrival, seq)

    return [s for _, s in sorted(enumerate(studies), key=key)]


class Worklist:
    """An incremental worklist with the rule of ``order_worklist``: ``push`` arrivals, ``pop(now)`` the next one.

    Studies must be pushed in arrival order (a reading room receives them that way); ``pop`` then costs O(log n):
    the oldest waiting study is the head of the arrival queue, the most urgent one the top of a heap; a study taken
    through one structure is skipped lazily in the other.
    """

    def __init__(self, *, use_urgency: bool = True, upper_limit_minutes: float | None = None) -> None:
        self.use_urgency = use_urgency
        self.upper_limit = upper_limit_minutes
        self._fifo: deque[tuple[float, int, QueuedStudy]] = deque()
        self._heap: list[tuple[float, float, int, QueuedStudy]] = []
        self._taken: set[int] = set()
        self._seq = 0
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, study: QueuedStudy) -> None:
        if self._fifo and study.arrival < self._fifo[-1][0]:
            raise ValueError(f"study {study.id}: arrives at {study.arrival}, before the last queued study")
        item = (study.arrival, self._seq, study)
        self._fifo.append(item)
        if self.use_urgency:
            heapq.heappush(self._heap, (-study.urgency, study.arrival, self._seq, study))
        self._seq += 1
        self._size += 1

    def extend(self, studies: Iterable[QueuedStudy]) -> None:
        for study in studies:
            self.push(study)

    def _oldest(self) -> tuple[float, int, QueuedStudy]:
        while self._fifo[0][1] in self._taken:
            self._taken.discard(self._fifo.popleft()[1])
        return self._fifo[0]

    def pop(self, now: float) -> QueuedStudy:
        """Remove and return the study to read next at time ``now``; IndexError when the worklist is empty."""
        if not self._size:
            raise IndexError("pop from an empty worklist")
        self._size -= 1
        arrival, seq, study = self._oldest()
        if not self.use_urgency or (self.upper_limit is not None and now - arrival > self.upper_limit):
            self._fifo.popleft()
            if self.use_urgency:
                self._taken.add(seq)
            return study
        while self._heap[0][2] in self._taken:
            self._taken.discard(heapq.heappop(self._heap)[2])
        _, _, seq, study = heapq.heappop(self._heap)
        self._taken.add(seq)
        return study


def next_study(studies: Sequence[QueuedStudy], *, now: float, upper_limit_minutes: float | None) -> QueuedStudy:
    """The one study to read next (the head of ``order_worklist``) without sorting the whole list."""
    if not studies:
        raise IndexError("no study waiting")
    return order_worklist(studies, now=now, upper_limit_minutes=upper_limit_minutes)[0]


@dataclass(frozen=True)
class Policy:
    """A reading order: whether urgency counts and whether the upper limit applies."""

    name: str
    use_urgency: bool
    upper_limit: bool
    description: str

    def worklist(self, *, upper_limit_minutes: float | None) -> Worklist:
        return Worklist(use_urgency=self.use_urgency,
                        upper_limit_minutes=upper_limit_minutes if self.upper_limit else None)


# Registry of reading policies compared by the simulation (docs/triage.md).
POLICIES: dict[str, Policy] = {
    "fifo": Policy("fifo", False, False, "first in, first out (the usual worklist)"),
    "urgency": Policy("urgency", True, False, "highest urgency first, ties FIFO"),
    "urgency_upper_limit": Policy("urgency_upper_limit", True, True,
                                  "urgency, but a study waiting longer than U minutes goes first (oldest first)"),
}


def policy(name: str) -> Policy:
    """A registered policy by name; KeyError listing the names otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        raise KeyError(f"unknown policy {name!r} (expected one of {', '.join(POLICIES)})") from None
