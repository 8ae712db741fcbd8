"""The server's bounds one by one, without a network: credentials, chunking, quarantine, and their config keys."""

from __future__ import annotations

import grpc
import pytest

from mpsl.errors import ConfigError, ProtocolError
from mpsl.runtime.network.dialer import _retry_after
from mpsl.runtime.network.framing import Reassembler
from mpsl.runtime.network.security import any_token_matches, read_credentials, token_matches
from mpsl.runtime.network.service import Quarantine
from tests.helpers import tiny_config


@pytest.mark.parametrize(
    ("metadata", "problem"),
    [
        ([("x-mpsl-client-id", "٣")], "printable ASCII"),
        ([("x-mpsl-client-id", "²")], "printable ASCII"),
        ([("x-mpsl-client-id", "0"), ("authorization", "Bearer tökén-0123456789")], "printable ASCII"),
        ([("x-mpsl-client-id", "0"), ("authorization", "Bearer \x00\x01")], "printable ASCII"),
        ([("x-mpsl-client-id", b"0")], "printable ASCII"),
        ([("x-mpsl-client-id", "9" * 5000)], "at most 9 digits"),
        ([("x-mpsl-client-id", " 1")], "at most 9 digits"),
        ([("x-mpsl-client-id", "")], "at most 9 digits"),
        ([("x-mpsl-client-id", "1"), ("x-mpsl-client-id", "1")], "given twice"),
        ([("authorization", "a"), ("authorization", "b")], "given twice"),
        ([("authorization", "Bearer " + "t" * 5000)], "longer than 4096"),
    ],
)
def test_malformed_credentials_are_a_value_error_naming_the_problem(metadata, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        read_credentials(metadata)


def test_well_formed_credentials_are_read_and_other_metadata_is_ignored() -> None:
    metadata = [("user-agent", "grpc-python"), ("x-mpsl-client-id", "12"), ("authorization", "Bearer secret-token")]

    assert read_credentials(metadata) == (12, "secret-token")
    assert read_credentials(None) == (None, None)
    assert read_credentials([("other-bin", b"\xff")]) == (None, None)


def test_tokens_compare_in_constant_time_even_when_not_ascii() -> None:
    tokens = {0: "ünïcödé-token-0000", 1: "plain-ascii-token-01"}

    assert token_matches(tokens, 0, "ünïcödé-token-0000") and not token_matches(tokens, 0, "plain-ascii-token-01")
    assert not token_matches(tokens, 1, "\udcff lone surrogate") and not token_matches(tokens, 2, "x")
    assert any_token_matches(tokens, "plain-ascii-token-01") and not any_token_matches(tokens, "nobody's")
    assert not any_token_matches(tokens, None) and token_matches(None, 5, None)


def test_a_frame_may_not_be_cut_into_pieces_below_the_minimum_chunk() -> None:
    # Prepare
    assembler = Reassembler(max_bytes=1000, min_chunk_bytes=100)

    # Execute, Assert: honest pieces pass, a small one before the last does not, and the buffer is dropped
    assert assembler.add(b"a" * 100, last=False) is None and assembler.pending
    assert assembler.add(b"b" * 5, last=True) == b"a" * 100 + b"b" * 5 and not assembler.pending
    assembler.add(b"a" * 100, last=False)
    with pytest.raises(ProtocolError, match="a chunk of 99 bytes before the last"):
        assembler.add(b"c" * 99, last=False)
    assert not assembler.pending and assembler.max_chunks == 11
    with pytest.raises(ProtocolError, match="a chunk of 0 bytes"):
        assembler.add(b"", last=False)


def test_a_client_is_quarantined_after_timeouts_in_a_row_for_a_doubling_period() -> None:
    # Prepare
    now = [0.0]
    quarantine = Quarantine(after=2, base_s=10.0, max_s=25.0, clock=lambda: now[0])

    # Execute
    periods = [quarantine.record(3, answered=False, timed_out=True) for _ in range(4)]
    remaining = quarantine.remaining(3)
    now[0] = 30.0
    after_waiting = quarantine.remaining(3)
    cleared = quarantine.record(3, answered=True, timed_out=True)

    # Assert: none for the first, then 10, 20, and the cap of 25; an answered step starts the count again
    assert periods == [0.0, 10.0, 20.0, 25.0] and remaining == 25.0 and after_waiting == 0.0
    assert cleared == 0.0 and quarantine.timeouts(3) == 1 and quarantine.remaining(4) == 0.0
    assert Quarantine(after=1, base_s=0.0, max_s=0.0).record(0, answered=False, timed_out=True) == 0.0


def test_the_client_reads_the_servers_retry_after_only_from_an_unavailable_refusal() -> None:
    def refusal(code: grpc.StatusCode, trailing: tuple) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), "refused")

    assert _retry_after(refusal(grpc.StatusCode.UNAVAILABLE, (("retry-after", "17"),))) == 17.0
    assert _retry_after(refusal(grpc.StatusCode.UNAVAILABLE, ())) is None
    assert _retry_after(refusal(grpc.StatusCode.UNAVAILABLE, (("retry-after", "9" * 40),))) is None
    assert _retry_after(refusal(grpc.StatusCode.INTERNAL, (("retry-after", "17"),))) is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("deploy.join_timeout=0", "deploy.join_timeout"),
        ("deploy.max_streams=2", "at least num_clients=3"),
        ("deploy.max_streams_per_client=0", "deploy.max_streams_per_client"),
        ("deploy.min_chunk_kb=2048", "at most deploy.chunk_mb x 1024"),
        ("deploy.min_chunk_kb=0", "deploy.min_chunk_kb"),
        ("deploy.quarantine_after=0", "deploy.quarantine_after"),
        ("deploy.quarantine_s=-1", "deploy.quarantine_s"),
        ("deploy.quarantine_max_s=1", "at least deploy.quarantine_s"),
    ],
)
def test_out_of_range_deploy_bounds_are_config_errors_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(override)


def test_the_deploy_bounds_reach_the_servers_limits() -> None:
    from mpsl.deploy.common import limits
    from mpsl.runtime.network.validate import Expected

    cfg = tiny_config("deploy.join_timeout=3", "deploy.min_chunk_kb=16", "deploy.quarantine_s=4")

    got = limits(cfg, Expected({"image": 5}, 32, 12))

    assert (got.join_timeout, got.min_chunk_bytes, got.quarantine_s) == (3.0, 16 * 1024, 4.0)
    assert got.max_streams == 2 * cfg.num_clients and got.max_streams_per_client == 2
    assert got.reassembler().min_chunk_bytes == 16 * 1024 and got.bounds().max_header_bytes == 64 * 1024
