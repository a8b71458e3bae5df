"""Triage: the urgency of a study, the worklist order, and a reading-room simulation of FIFO vs urgency order.

``urgency`` turns finding probabilities (+ the run's val operating thresholds) into a score and a level,
``worklist`` orders a queue by it with an upper limit on waiting, ``simulate`` measures what that order does to the
time to report. Contract in docs/architecture.md, user guide in docs/triage.md.
"""
