"""Tasks: the loss and metrics a client computes on its own slice with its own labels."""

from mpsl.tasks.base import TASKS, Task
from mpsl.tasks.classification import ClassificationTask
from mpsl.tasks.retrieval import RetrievalTask

__all__ = ["TASKS", "ClassificationTask", "RetrievalTask", "Task"]
