"""The time model gives the analytic answer on a two-client toy, for every schedule a method can declare."""

from __future__ import annotations

import pytest

from mpsl.analysis.wallclock import PROFILES, SCHEDULES, Link, Workload, links_for, round_seconds
from mpsl.experiment.methods import METHODS

SLOW = Link(uplink_mbps=8, downlink_mbps=16, latency_ms=100, device_tflops=1)  # 1 MB/s up, 2 MB/s down
FAST = Link(uplink_mbps=80, downlink_mbps=160, latency_ms=10, device_tflops=10)


def _toy(**overrides) -> Workload:
    """Client 0: 4 samples in batches of 2 (2 steps); client 1: 2 samples, batch 2 (1 step)."""
    fields = dict(samples=[4, 2], batch_sizes=[2, 2], bytes_up=[2e6, 1e6], bytes_down=[4e6, 2e6], messages=[8, 4],
                  client_flops_per_sample=1e12, server_flops_per_sample=1e12)
    return Workload(**{**fields, **overrides})


def test_mpsl_steps_wait_for_the_slowest_client_then_the_server() -> None:
    # step 0: client 0 (slow): 2 s compute + 1 s up + 1 s down + 4 messages x 0.1 s = 4.4 s;
    #         client 1 (fast): 0.2 + 0.1 + 0.1 + 0.04 = 0.44 s; server: 4 samples / 100 TFLOP/s = 0.04 s
    # step 1: client 0 alone: 4.4 s; server 2 samples: 0.02 s
    got = SCHEDULES.get("steps")(_toy(), [SLOW, FAST], 100.0)

    assert got == pytest.approx(4.4 + 0.04 + 4.4 + 0.02)


def test_fedavg_rounds_wait_for_the_slowest_local_round_and_model_exchange() -> None:
    # client 0: 4 samples x 2 local epochs x 1 TFLOP / 1 TFLOP/s = 8 s, + 2 s up + 2 s down + 8 x 0.1 s
    toy = _toy(local_epochs=2, server_flops_per_sample=0.0)

    got = SCHEDULES.get("rounds")(toy, [SLOW, FAST], 100.0)

    assert got == pytest.approx(8 + 2 + 2 + 0.8)


def test_a_client_that_moves_no_bytes_takes_no_part_in_a_fedavg_round() -> None:
    toy = _toy(bytes_up=[0.0, 1e6], bytes_down=[0.0, 2e6])

    got = SCHEDULES.get("rounds")(toy, [SLOW, FAST], 100.0)

    assert got == pytest.approx(0.2 + 0.1 + 0.1 + 0.04)  # only the fast client's round


def test_splitfed_pairs_share_the_server_and_the_slowest_pair_ends_the_round() -> None:
    # pair 0: 4 s client compute + 4 samples / (100 / 2 TFLOP/s) = 0.08 s + 2 s up + 2 s down + 0.8 s latency
    got = SCHEDULES.get("pairs")(_toy(), [SLOW, FAST], 100.0)

    assert got == pytest.approx(4 + 0.08 + 2 + 2 + 0.8)


def test_centralized_is_the_server_alone() -> None:
    assert SCHEDULES.get("central")(_toy(), [SLOW, FAST], 100.0) == pytest.approx(6 / 100)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_declares_a_known_schedule(method: str) -> None:
    assert METHODS.get(method).schedule in SCHEDULES


def test_a_mixed_profile_gives_clients_its_links_in_turn() -> None:
    mix = PROFILES.get("mix")

    links = links_for("mix", 7)

    assert links == [mix[k % len(mix)] for k in range(7)] and len(set(links)) == len(mix) > 1


def test_a_faster_network_never_takes_longer() -> None:
    times = [round_seconds("steps", _toy(), profile, 100.0) for profile in ("4g", "wifi", "fiber")]

    assert times == sorted(times, reverse=True) and times[0] > times[-1]


def test_a_server_speed_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="server speed"):
        round_seconds("steps", _toy(), "wifi", 0.0)
