"""Simulated wall-clock time of training over edge networks, from a run's measured bytes and FLOPs.

A run measures what each method moves and computes; users decide on time over their links. Each client
gets a link and a device (uplink, downlink, latency, training speed), from a named profile; the server
has its own speed. The schedules follow what each method waits for:

    steps   MPSL: every step waits for its slowest client, then the server computes the whole batch
    pairs   SplitFed: each client-server pair steps on its own; the round waits for the slowest pair, and
            the server's speed is shared by the pairs running at once
    rounds  FedAvg: each client trains locally and exchanges the model; the round waits for the slowest
    central centralized training: the server alone

Profiles are assumptions about typical links and devices, not measurements; the bytes and FLOPs are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mpsl.registry import Registry


@dataclass(frozen=True)
class Link:
    """One client's network link and device."""

    uplink_mbps: float  # megabits per second
    downlink_mbps: float
    latency_ms: float  # one way, per message
    device_tflops: float  # sustained training throughput of the device

    def up_s(self, nbytes: float) -> float:
        return 8 * nbytes / (self.uplink_mbps * 1e6)

    def down_s(self, nbytes: float) -> float:
        return 8 * nbytes / (self.downlink_mbps * 1e6)

    def compute_s(self, flops: float) -> float:
        return flops / (self.device_tflops * 1e12)


PROFILES: Registry[tuple[Link, ...]] = Registry("network profile")  # clients take the links in turn
PROFILES.register("4g")((Link(10, 30, 50, 0.2),))  # a phone on a mobile network
PROFILES.register("wifi")((Link(50, 100, 10, 0.5),))  # a laptop-class device at home
PROFILES.register("fiber")((Link(500, 1000, 2, 2.0),))  # an edge box on a wired line
PROFILES.register("mix")((*PROFILES.get("4g"), *PROFILES.get("wifi"), *PROFILES.get("fiber")))


@dataclass(frozen=True)
class Workload:
    """What one round (epoch) of a method moves and computes, per client, as a run measured it."""

    samples: Sequence[int]  # training samples of each client
    batch_sizes: Sequence[int]  # each client's mini-batch
    bytes_up: Sequence[float]  # per client per round, encoded
    bytes_down: Sequence[float]
    messages: Sequence[float]  # per client per round
    client_flops_per_sample: float  # forward + backward of what runs on a client (FL: the whole model)
    server_flops_per_sample: float  # what runs on the server (FL: nothing; centralized: the whole model)
    local_epochs: int = 1  # FL: local passes over the client's data per round


Schedule = Callable[[Workload, Sequence[Link], float], float]
SCHEDULES: Registry[Schedule] = Registry("time schedule")


def links_for(profile: str, clients: int) -> list[Link]:
    """Client k takes the profile's links in turn (a mix spreads its link kinds evenly)."""
    links = PROFILES.get(profile)
    return [links[k % len(links)] for k in range(clients)]


@SCHEDULES.register("steps")
def _steps(w: Workload, links: Sequence[Link], server_tflops: float) -> float:
    """Step s: each client still holding data computes its part and exchanges its share of the step's bytes;
    the step ends with the slowest of them plus the server's pass over the step's samples."""
    steps = [math.ceil(n / b) for n, b in zip(w.samples, w.batch_sizes, strict=True)]
    total = 0.0
    for s in range(max(steps)):
        active = [k for k in range(len(steps)) if s < steps[k]]
        slowest = max(
            links[k].compute_s(w.client_flops_per_sample * w.batch_sizes[k])
            + links[k].up_s(w.bytes_up[k] / steps[k]) + links[k].down_s(w.bytes_down[k] / steps[k])
            + w.messages[k] / steps[k] * links[k].latency_ms / 1e3
            for k in active)
        batch = sum(w.batch_sizes[k] for k in active)
        total += slowest + w.server_flops_per_sample * batch / (server_tflops * 1e12)
    return total


@SCHEDULES.register("pairs")
def _pairs(w: Workload, links: Sequence[Link], server_tflops: float) -> float:
    """Each pair runs its steps back to back; the server's speed is split among the pairs."""
    share = server_tflops / len(links)
    times = []
    for k, link in enumerate(links):
        samples = w.samples[k]
        times.append(link.compute_s(w.client_flops_per_sample * samples)
                     + w.server_flops_per_sample * samples / (share * 1e12)
                     + link.up_s(w.bytes_up[k]) + link.down_s(w.bytes_down[k])
                     + w.messages[k] * link.latency_ms / 1e3)
    return max(times)


@SCHEDULES.register("rounds")
def _rounds(w: Workload, links: Sequence[Link], server_tflops: float) -> float:
    """Local training on each participating client (bytes > 0), then the model exchange; the slowest ends it."""
    times = [link.compute_s(w.client_flops_per_sample * w.samples[k] * w.local_epochs)
             + link.up_s(w.bytes_up[k]) + link.down_s(w.bytes_down[k]) + w.messages[k] * link.latency_ms / 1e3
             for k, link in enumerate(links) if w.bytes_up[k] > 0 or w.bytes_down[k] > 0]
    return max(times, default=0.0)


@SCHEDULES.register("central")
def _central(w: Workload, links: Sequence[Link], server_tflops: float) -> float:
    return w.server_flops_per_sample * sum(w.samples) / (server_tflops * 1e12)


def round_seconds(schedule: str, workload: Workload, profile: str, server_tflops: float) -> float:
    """Simulated seconds of one round (epoch) of `workload` under `schedule` on `profile`'s links."""
    if server_tflops <= 0:
        raise ValueError(f"server speed must be positive, got {server_tflops} TFLOP/s")
    return SCHEDULES.get(schedule)(workload, links_for(profile, len(workload.samples)), server_tflops)
