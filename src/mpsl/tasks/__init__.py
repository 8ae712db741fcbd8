"""Tasks: the loss and metrics a client computes on its own slice with its own labels."""

from mpsl.tasks.classification import TASKS, ClassificationTask, Task

__all__ = ["TASKS", "ClassificationTask", "Task"]
