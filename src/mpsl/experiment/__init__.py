"""Experiments: assemble a simulation, run it, evaluate, report."""
