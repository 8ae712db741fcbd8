"""Who may join and how the channel is protected: per-client secret tokens and TLS."""

from __future__ import annotations

import hmac
from pathlib import Path

import grpc
import yaml

from mpsl.errors import ConfigError

CLIENT_ID_KEY = "x-mpsl-client-id"
AUTH_KEY = "authorization"


def load_tokens(path: str | Path) -> dict[int, str]:
    """The server's tokens file: a YAML mapping of client id to that client's secret token."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"tokens file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"tokens file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(loaded, dict) or not loaded:
        raise ConfigError(f"tokens file {path}: expected a mapping of client id to token, e.g. `0: s3cret`")
    tokens = {}
    for key, token in loaded.items():
        if isinstance(key, bool) or not isinstance(key, int) or not isinstance(token, str) or len(token) < 16:
            raise ConfigError(f"tokens file {path}: entry {key!r} must map an integer client id to a token "
                              f"of at least 16 characters")
        tokens[key] = token
    return tokens


def read_secret(path: str | Path) -> str:
    """A client's own token file: the token on its first line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"token file {path} does not exist")
    lines = path.read_text().strip().splitlines()
    if not lines or not lines[0].strip():
        raise ConfigError(f"token file {path} is empty")
    return lines[0].strip()


def token_matches(tokens: dict[int, str] | None, client_id: int, presented: str | None) -> bool:
    """Constant-time comparison; with no tokens configured every client is accepted."""
    if tokens is None:
        return True
    expected = tokens.get(client_id)
    return expected is not None and presented is not None and hmac.compare_digest(expected, presented)


def _read(path: str | Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    return path.read_bytes()


def server_credentials(cert: str | Path, key: str | Path) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(_read(key, "TLS key"), _read(cert, "TLS certificate"))])


def channel_credentials(ca: str | Path) -> grpc.ChannelCredentials:
    """Trust exactly the given CA (or self-signed server certificate)."""
    return grpc.ssl_channel_credentials(root_certificates=_read(ca, "TLS CA certificate"))
