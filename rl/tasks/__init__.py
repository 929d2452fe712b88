"""Tasks: problem generators and loaders with their verifiers, found by name in a registry.

Importing this package registers every built-in task; `verify(task, completion, answer, meta)`
scores a completion for any of them.
"""

from rl.tasks import arithmetic, countdown, dataset, gsm8k, reasoning_gym  # noqa: F401  (registers the built-in tasks)
from rl.tasks.base import Sample, Task, available_tasks, generate_block, get_task, register_task, verify

__all__ = ["Sample", "Task", "available_tasks", "generate_block", "get_task", "register_task", "verify"]
