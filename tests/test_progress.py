"""The one progress helper: a live bar on a terminal, one plain line per stage elsewhere, nothing when off."""

from __future__ import annotations

import io

from mpsl.progress import progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _stage(stream: io.StringIO, **kwargs) -> str:
    with progress_bar(desc="avdigits: degrading samples", total=3, unit="sample", stream=stream, **kwargs) as bar:
        for _ in range(3):
            bar.update(1)
        bar.set_postfix(loss="0.5")
    return stream.getvalue()


def test_off_a_terminal_a_stage_is_one_plain_line() -> None:
    out = _stage(io.StringIO())

    assert out.startswith("avdigits: degrading samples: 3 samples in ") and out.endswith(" s (loss=0.5)\n")
    assert out.count("\n") == 1 and "\r" not in out


def test_on_a_terminal_the_bar_redraws_in_place() -> None:
    out = _stage(Terminal())

    assert "\r" in out and "3/3" in out


def test_progress_false_prints_nothing_on_a_terminal_or_off_it() -> None:
    assert _stage(io.StringIO(), enabled=False) == "" and _stage(Terminal(), enabled=False) == ""


def test_a_transient_stage_leaves_no_line_off_a_terminal() -> None:
    assert _stage(io.StringIO(), transient=True) == ""


def test_iterating_counts_the_items_and_closes_the_stage() -> None:
    stream = io.StringIO()

    items = list(progress_bar(["a", "b"], desc="decoding", unit="file", stream=stream))

    assert items == ["a", "b"] and stream.getvalue().startswith("decoding: 2 files in ")
