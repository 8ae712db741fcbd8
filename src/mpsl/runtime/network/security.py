"""Who may join and how the channel is protected: per-client secret tokens, TLS and client certificates."""

from __future__ import annotations

import hmac
from pathlib import Path
from typing import Any

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


MAX_TOKEN_CHARS = 4096
MAX_CLIENT_ID_DIGITS = 9  # ids are int32 in the Join message


def read_credentials(metadata: Any) -> tuple[int | None, str | None]:
    """(client id, token) from a call's metadata, either None when absent; ValueError, naming the problem,
    for anything malformed: a key given twice, a binary or non-ASCII value, an id that is not 1-9 ASCII
    digits, a token over MAX_TOKEN_CHARS characters."""
    found: dict[str, str] = {}
    for item in metadata or ():
        key, value = item
        if key not in (CLIENT_ID_KEY, AUTH_KEY):
            continue
        if key in found:
            raise ValueError(f"{key} given twice")
        if not isinstance(value, str) or not value.isascii() or not value.isprintable():
            raise ValueError(f"{key} is not printable ASCII")
        found[key] = value
    raw_id, token = found.get(CLIENT_ID_KEY), found.get(AUTH_KEY)
    if raw_id is not None and not (0 < len(raw_id) <= MAX_CLIENT_ID_DIGITS and raw_id.isdigit()):
        raise ValueError(f"{CLIENT_ID_KEY} is not a number of at most {MAX_CLIENT_ID_DIGITS} digits")
    if token is not None and len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"{AUTH_KEY} is longer than {MAX_TOKEN_CHARS} characters")
    return (None if raw_id is None else int(raw_id)), (None if token is None else token.removeprefix("Bearer "))


def token_matches(tokens: dict[int, str] | None, client_id: int, presented: str | None) -> bool:
    """Constant-time comparison; with no tokens configured every client is accepted."""
    if tokens is None:
        return True
    expected = tokens.get(client_id)
    return (expected is not None and presented is not None
            and hmac.compare_digest(expected.encode(), presented.encode("utf-8", "surrogatepass")))


def any_token_matches(tokens: dict[int, str], presented: str | None) -> bool:
    """Whether `presented` is some client's token, comparing against every one (no early exit)."""
    if presented is None:
        return False
    raw = presented.encode("utf-8", "surrogatepass")
    return sum(hmac.compare_digest(t.encode(), raw) for t in tokens.values()) > 0


def _read(path: str | Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    return path.read_bytes()


def server_credentials(cert: str | Path, key: str | Path,
                       client_ca: str | Path | None = None) -> grpc.ServerCredentials:
    """TLS; with `client_ca`, mutual TLS: only clients presenting a certificate signed by it connect."""
    return grpc.ssl_server_credentials(
        [(_read(key, "TLS key"), _read(cert, "TLS certificate"))],
        root_certificates=_read(client_ca, "TLS client CA certificate") if client_ca else None,
        require_client_auth=client_ca is not None)


def channel_credentials(ca: str | Path, cert: str | Path | None = None,
                        key: str | Path | None = None) -> grpc.ChannelCredentials:
    """Trust exactly the given CA (or self-signed server certificate); present `cert` (with `key`) to a
    server that requires client certificates."""
    if (cert is None) != (key is None):
        raise ConfigError("a client certificate and its key go together (--tls-cert and --tls-key)")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "TLS CA certificate"),
        private_key=_read(key, "TLS client key") if key else None,
        certificate_chain=_read(cert, "TLS client certificate") if cert else None)
