"""Proxy fine-tuning: the task registry (data), and later training and metrics."""

from autopeft.proxy.tasks import Example, TaskData, builtin_tasks, load_task

__all__ = ["Example", "TaskData", "builtin_tasks", "load_task"]
