"""What a deployment reports, as typed records: one frozen dataclass per kind of event.

The server and client applications (and the gRPC runtime under them) log every event through
`logging` with the record attached, `logger.info("%s", event, extra={"event": event})` (`emit`). The
text format prints the record as one `event=<name> key=value ...` line; the JSON format
(`--log-format json`) one object per line, `{"event": "<name>", ...fields, "time": ..., "logger": ...}`,
which `read_event` turns back into the record. Tests and tools read records, never the text.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

EVENTS: dict[str, type[Event]] = {}  # event name -> record class


def _fmt(spec: str) -> Any:
    """Field metadata: how the text form writes a number (the JSON form keeps it whole)."""
    return field(metadata={"fmt": spec})


@dataclass(frozen=True)
class Event:
    """A record of something that happened; `name` is its `event=` word."""

    name: ClassVar[str]

    def __init_subclass__(cls, name: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name:
            if name in EVENTS:
                raise ValueError(f"event {name!r} is defined twice")
            cls.name = name
            EVENTS[name] = cls

    def fields(self) -> dict[str, Any]:
        """The record's fields as JSON values (tuples become lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    def text(self) -> str:
        """`event=<name> key=value ...`: lists comma-joined (empty: -), strings with spaces quoted."""
        parts = [f"event={self.name}"]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                shown = ",".join(map(str, value)) or "-"
            elif isinstance(value, bool):
                shown = "on" if value else "off"
            elif value is None:
                shown = "none"
            elif "fmt" in f.metadata:
                shown = format(value, f.metadata["fmt"])
            elif isinstance(value, str) and (" " in value or not value):
                shown = repr(value)
            else:
                shown = str(value)
            parts.append(f"{f.name}={shown}")
        return " ".join(parts)

    def __str__(self) -> str:
        return self.text()


# --- the server ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Listening(Event, name="listening"):
    address: str
    tls: str  # off, on (server certificate), or mutual (clients present certificates too)
    auth: str  # tokens, or none (any client may join)
    clients: int
    max_frame_bytes: int


@dataclass(frozen=True)
class Waiting(Event, name="waiting"):
    """Fewer clients are connected than deploy.min_participants: training pauses."""

    connected: int
    min_participants: int


@dataclass(frozen=True)
class Joined(Event, name="joined"):
    client: int
    peer: str
    samples: int


@dataclass(frozen=True)
class Refused(Event, name="refused"):
    """A stream refused before it joined: bad credentials, too many streams, a quarantined client, ..."""

    peer: str
    reason: str
    client: int | None = None  # the id it proved, if it got that far
    code: str = "UNAUTHENTICATED"  # the gRPC status it was answered with


@dataclass(frozen=True)
class Dropped(Event, name="dropped"):
    """A client left before training finished (timeout, broken stream, refused message)."""

    client: int
    reason: str
    code: str = ""  # the gRPC status its stream was closed with, when the server closed it


@dataclass(frozen=True)
class RetryLater(Event, name="retry_later"):
    """The server refused this client for now (quarantine) and said when to come back."""

    client: int
    reason: str
    seconds: float = _fmt("g")


@dataclass(frozen=True)
class Quarantined(Event, name="quarantined"):
    """A client that timed out too often is refused for a while (UNAVAILABLE with a retry-after)."""

    client: int
    seconds: float = _fmt("g")
    timeouts: int


@dataclass(frozen=True)
class Insecure(Event, name="insecure"):
    """A setting that leaves the deployment open: a server without --tokens (any peer can join as any free
    client id)."""

    advice: str


@dataclass(frozen=True)
class Disconnected(Event, name="disconnected"):
    """A client's stream closed after training finished."""

    client: int
    reason: str


@dataclass(frozen=True)
class Step(Event, name="step"):
    """One MPSL step over the clients that answered; bytes of this step only."""

    step: int
    epoch: int  # 1-based
    participants: tuple[int, ...]
    dropped: tuple[int, ...]
    samples: int
    loss: float | None = _fmt(".4f")  # None unless the clients send step metrics (privacy.step_metrics)
    bytes_up: int
    bytes_down: int
    seconds: float = _fmt(".3f")


@dataclass(frozen=True)
class NoStep(Event, name="no_step"):
    """Every client of a step dropped out: nothing was trained."""

    step: int
    dropped: tuple[int, ...]


@dataclass(frozen=True)
class Contained(Event, name="contained"):
    """The server's guard left a client out of a step (out-of-bounds values, non-finite outputs); its stream is
    closed with INVALID_ARGUMENT and nothing it sent reached the parameters."""

    client: int
    step: int
    reason: str


@dataclass(frozen=True)
class Skipped(Event, name="skipped"):
    """The server's gradients were not finite, so it took no update and no client stepped."""

    step: int
    reason: str


@dataclass(frozen=True)
class EpochEnd(Event, name="epoch_end"):
    epoch: int
    step: int
    loss: float | None = _fmt(".4f")  # the clients' training loss over the epoch (None: none reported)
    accuracy: float | None = _fmt(".4f")


@dataclass(frozen=True)
class Checkpoint(Event, name="checkpoint"):
    step: int
    epoch: int
    path: str


@dataclass(frozen=True)
class Resumed(Event, name="resumed"):
    """The server continues from its checkpoint of this step."""

    step: int
    epoch: int


@dataclass(frozen=True)
class Finished(Event, name="finished"):
    step: int
    samples: int
    step_seconds: float = _fmt(".3f")  # time spent in steps, for samples per second
    model: str


# --- a client -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Welcomed(Event, name="welcomed"):
    """The server accepted this client: where training stands and the dtype of tensors on the wire."""

    client: int
    epoch: int  # 1-based
    step: int
    wire_dtype: str


@dataclass(frozen=True)
class ClientResumed(Event, name="client_resumed"):
    """`mpsl client --resume`: the step of this client's last checkpoint, None if it has none."""

    client: int
    step: int | None


@dataclass(frozen=True)
class Restored(Event, name="restored"):
    """The server resumed from this step, and this client rolled back to its checkpoint of it."""

    client: int
    step: int


@dataclass(frozen=True)
class NoCheckpoint(Event, name="no_checkpoint"):
    """The server resumed from this step; this client has no checkpoint of it and continues as it is."""

    client: int
    step: int


@dataclass(frozen=True)
class ConnectionLost(Event, name="connection_lost"):
    client: int
    reason: str
    retry_in: float = _fmt(".1f")  # seconds


@dataclass(frozen=True)
class ClientFinished(Event, name="client_finished"):
    """The server said training is finished; this client saved its final model."""

    client: int


# --- logging ------------------------------------------------------------------------------------


WARNINGS: tuple[type[Event], ...] = ()  # filled below: events logged at WARNING


def emit(logger: logging.Logger, event: Event) -> None:
    """Log `event` (at INFO, or WARNING for the kinds that warn) with the record attached."""
    level = logging.WARNING if isinstance(event, WARNINGS) else logging.INFO
    logger.log(level, "%s", event, extra={"event": event})


def read_event(data: dict[str, Any]) -> Event:
    """The record of one parsed JSON log line (KeyError or TypeError if it is not one)."""
    cls = EVENTS[data["event"]]
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        value = data[f.name]
        values[f.name] = tuple(value) if typing.get_origin(hints[f.name]) is tuple else value
    return cls(**values)


def read_events(lines: str) -> list[Event]:
    """The events of a JSON-format log, in order; other lines (a final error message) are skipped."""
    found = []
    for line in lines.splitlines():
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and "event" in data:
            found.append(read_event(data))
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per line: an event's name and fields, or a plain message; then time and logger."""

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "event", None)
        line: dict[str, Any] = ({"event": event.name, **event.fields()} if isinstance(event, Event)
                                else {"message": record.getMessage()})
        line["time"] = datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat()
        line["logger"] = record.name
        if record.levelno != logging.INFO:
            line["level"] = record.levelname
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


LOG_FORMATS: dict[str, Callable[[], logging.Formatter]] = {
    "text": lambda: logging.Formatter("%(asctime)s %(name)s %(message)s", "%H:%M:%S"),
    "json": JsonFormatter,
}


WARNINGS = (Insecure, Quarantined)
