"""Synthetic evaluation inputs shared by the report tests: row-aligned SplitOutputs with a known signal."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrmtl import labels as L
from cxrmtl.eval.evaluate import SplitOutputs, TaskOutputs


def make_split(
    split: str = "test", *, patients: int = 120, seed: int = 0, first_patient: int = 1, findings: int = 14
) -> SplitOutputs:
    """Findings (the first ``findings``; the last has no positives), abnormal, age, sex and view outputs."""
    names = L.FINDINGS[:findings]
    rng = np.random.default_rng(seed)
    pid = np.repeat(np.arange(patients) + first_patient, rng.integers(1, 4, patients))
    n = pid.size
    prevalence = np.linspace(0.05, 0.3, len(names))
    prevalence[-1] = 0.0  # the last finding has no positives -> undefined everywhere
    y = (rng.random((n, len(names))) < prevalence).astype(np.float32)
    s = 1 / (1 + np.exp(-(rng.normal(-1.5, 1.0, y.shape) + 2.0 * y)))
    sex, view = rng.integers(0, 2, n), rng.integers(0, 2, n)
    age = rng.uniform(18, 95, n)
    ones = np.ones((n, 1), bool)
    abnormal = y.max(axis=1, keepdims=True)
    tasks = {
        "findings": TaskOutputs("findings", "multilabel", names, s, y, np.ones_like(y, bool)),
        "abnormal": TaskOutputs("abnormal", "binary", ("abnormal",), s.max(axis=1, keepdims=True), abnormal, ones),
        "age": TaskOutputs("age", "regression", ("age",), (age + rng.normal(0, 9, n))[:, None], age[:, None], ones),
        "sex": TaskOutputs("sex", "binary", ("sex",), np.clip(sex + rng.normal(0, 0.5, n), 0, 1)[:, None],
                           sex[:, None].astype(float), ones),
        "view": TaskOutputs("view", "binary", ("view",), np.clip(view + rng.normal(0, 0.5, n), 0, 1)[:, None],
                            view[:, None].astype(float), ones),
    }
    images = np.array([f"{p:08d}_{i:03d}.png" for i, p in enumerate(pid)])
    meta = pd.DataFrame({"sex": sex, "age": age, "view": view})
    return SplitOutputs(split=split, images=images, patient_ids=pid, metadata=meta, tasks=tasks)
