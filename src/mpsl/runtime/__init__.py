"""Runtimes move MPSL messages between the step and the clients; they know no model classes."""

from mpsl.runtime.inprocess import InProcessHandle
from mpsl.runtime.traffic import Traffic, carry

__all__ = ["InProcessHandle", "Traffic", "carry"]
