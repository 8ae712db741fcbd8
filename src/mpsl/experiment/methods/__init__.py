"""Training methods, registered by name: mpsl, splitfed, fedavg, fedavg-adapter, centralized."""

from mpsl.experiment.methods import federated, local, split_learning  # noqa: F401  (they register)
from mpsl.experiment.methods.base import METHODS, Method, RoundStats, register

__all__ = ["METHODS", "Method", "RoundStats", "register"]
