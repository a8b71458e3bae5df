"""Tasks on top of the shared network: one module per task kind, all registered in ``tasks.base.TASKS``.

``build_tasks(["findings", "abnormal", "age", "sex", "view"])`` or ``build_tasks(["findings:Pneumothorax"])``.
"""

from cxrmtl.tasks import binary, findings, regression  # noqa: F401  (modules register their tasks on import)
from cxrmtl.tasks.base import (
    TASK_KINDS,
    TASKS,
    Task,
    build_tasks,
    compute_pos_weight,
    compute_pos_weights,
    parse_spec,
    register_task,
)

__all__ = [
    "TASKS",
    "TASK_KINDS",
    "Task",
    "build_tasks",
    "compute_pos_weight",
    "compute_pos_weights",
    "parse_spec",
    "register_task",
]
