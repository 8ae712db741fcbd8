"""The project's error types: each is shown to the user as one line, without a traceback."""


class MpslError(Exception):
    """Base class for errors a user can act on."""


class ConfigError(MpslError):
    """A configuration key has a wrong name, type or value."""


class DataError(MpslError):
    """A dataset is missing, corrupted or cannot be prepared."""


class ModelError(MpslError):
    """Model weights are missing or do not fit the requested architecture."""


class ProtocolError(MpslError):
    """A message does not fit the protocol (wrong type, shape, dtype or framing)."""


class ClientUnavailable(MpslError):
    """A client did not answer in time or its connection broke; the step goes on without it."""
