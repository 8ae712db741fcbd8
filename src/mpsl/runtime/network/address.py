"""Addresses as people type them: a host alone means the default port, the one `mpsl server` listens on."""

from __future__ import annotations

DEFAULT_PORT = 50051  # gRPC's customary port; without it a channel to "host" would silently dial 443


def with_default_port(address: str) -> str:
    """"host" -> "host:50051", "::1" or "[::1]" -> "[::1]:50051"; "host:port", "[v6]:port" and gRPC target
    URIs (dns:///..., unix:...) are kept as they are."""
    if "://" in address or address.startswith(("unix:", "dns:", "ipv4:", "ipv6:")):
        return address
    if address.startswith("["):  # [v6] or [v6]:port
        return address if "]:" in address else f"{address}:{DEFAULT_PORT}"
    if address.count(":") > 1:  # a bare IPv6 address
        return f"[{address}]:{DEFAULT_PORT}"
    return address if ":" in address else f"{address}:{DEFAULT_PORT}"


def with_port(address: str, port: int) -> str:
    """The address with its port replaced, e.g. what "127.0.0.1:0" was bound to."""
    host = address.rsplit(":", 1)[0] if not address.endswith("]") else address
    return f"{host}:{port}"
