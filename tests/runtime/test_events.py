"""Deployment events are typed records: logged with the record attached, printed as one `event=` line,
written as one JSON object per line that reads back as the same record."""

from __future__ import annotations

import dataclasses
import json
import logging
import typing

import pytest

from mpsl.runtime.network.events import EVENTS, LOG_FORMATS, Event, JsonFormatter, Step, emit, read_event, read_events


def _example(cls: type[Event]) -> Event:
    """An instance with a value of the right type in every field (a space in strings, to test quoting)."""
    samples = {int: 3, float: 0.25, str: "a reason", bool: True, tuple[int, ...]: (0, 2), int | None: None,
               float | None: 0.5}
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: samples[hints[f.name]] for f in dataclasses.fields(cls)})


def _record(event: Event) -> logging.LogRecord:
    """What `emit` hands the handlers of the mpsl.deploy logger."""
    return logging.makeLogRecord({"name": "mpsl.deploy", "levelno": logging.INFO, "levelname": "INFO", "msg": "%s",
                                  "args": (event,), "event": event})


def test_every_event_has_a_name_and_a_distinct_one() -> None:
    assert len(EVENTS) >= 15  # guard: the module's events were found
    assert all(cls.name == name for name, cls in EVENTS.items())


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_every_event_reads_back_from_its_json_line(name: str) -> None:
    # Prepare
    event = _example(EVENTS[name])

    # Execute
    line = JsonFormatter().format(_record(event))

    # Assert
    assert "\n" not in line
    data = json.loads(line)
    assert data["event"] == name and data["logger"] == "mpsl.deploy" and "time" in data
    assert read_event(data) == event


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_every_event_prints_one_line_with_each_field(name: str) -> None:
    event = _example(EVENTS[name])

    text = LOG_FORMATS["text"]().format(_record(event))

    assert f" mpsl.deploy event={name} " in text + " " and "\n" not in text
    for f in dataclasses.fields(event):
        assert f" {f.name}=" in text


def test_a_step_prints_as_the_key_value_line_people_read() -> None:
    step = Step(step=3, epoch=1, participants=(0, 1, 2), dropped=(), samples=12, loss=0.123456, bytes_up=100,
                bytes_down=90, seconds=0.5)

    assert str(step) == ("event=step step=3 epoch=1 participants=0,1,2 dropped=- samples=12 loss=0.1235 "
                         "bytes_up=100 bytes_down=90 seconds=0.500")


def test_emitted_events_reach_a_handler_as_records() -> None:
    # Prepare: a handler that keeps the records, as a tool watching a server would
    kept: list[Event] = []
    handler = logging.Handler()
    handler.emit = lambda record: kept.append(record.event)  # type: ignore[method-assign]
    logger = logging.getLogger("mpsl.test-events")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    step = _example(Step)

    # Execute
    try:
        emit(logger, step)
    finally:
        logger.removeHandler(handler)

    # Assert
    assert kept == [step]


def test_a_json_log_reads_back_as_its_events_skipping_other_lines() -> None:
    events = [_example(cls) for cls in EVENTS.values()]
    lines = [JsonFormatter().format(_record(e)) for e in events]

    found = read_events("\n".join([*lines, "mpsl: error: something the CLI printed"]))

    assert found == events
