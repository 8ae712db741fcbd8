"""The embedded image-text sets, emoji and clipart: read from Debian packages, not from data.root.

The generic checks (shapes, cache, training, corrupted files) run on fixtures in test_file_datasets;
here: what a user without the packages is told, and what the installed packages really hold.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mpsl.config import DataConfig
from mpsl.data import load_dataset
from mpsl.data.datasets import clipart, emoji
from mpsl.errors import DataError
from tests.data.fixtures import FIXTURES


def test_emoji_without_its_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare
    monkeypatch.setattr(emoji, "FONT_DIR", tmp_path / "no-noto")
    # Execute
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="emoji", cache_dir=str(tmp_path / "cache")))
    # Assert
    assert "apt-get install fonts-noto-color-emoji" in str(err.value)


@pytest.mark.parametrize(("svg_missing", "rsvg_missing", "command"), [
    (True, True, "apt-get install openclipart-svg librsvg2-bin"),
    (True, False, "apt-get install openclipart-svg"),
    (False, True, "apt-get install librsvg2-bin"),
])
def test_clipart_without_its_packages_says_how_to_install_them(svg_missing: bool, rsvg_missing: bool, command: str,
                                                               monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare
    if svg_missing:
        monkeypatch.setattr(clipart, "SVG_DIR", tmp_path / "no-openclipart")
    if rsvg_missing:
        monkeypatch.setattr(clipart, "RSVG", "no-such-rsvg-convert")
    # Execute
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="clipart", cache_dir=str(tmp_path / "cache")))
    # Assert
    assert str(err.value).endswith(command)


def test_clipart_from_data_root_still_needs_rsvg_convert(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Prepare
    FIXTURES["clipart"](tmp_path / "root")
    monkeypatch.setattr(clipart, "RSVG", "no-such-rsvg-convert")
    # Execute
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="clipart", root=str(tmp_path / "root"), cache_dir=str(tmp_path / "cache")))
    # Assert
    assert "apt-get install librsvg2-bin" in str(err.value)


def test_svg_title_is_the_works_not_an_authors(tmp_path: Path) -> None:
    # Prepare: the author's dc:title comes first, inside a cc:Agent
    path = tmp_path / "a.svg"
    path.write_text(
        '<svg xmlns="http://www.w3.org/2000/svg"><title>Stale title</title><metadata>'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:cc="http://web.resource.org/cc/" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/"><cc:Work><dc:creator><cc:Agent><dc:title>An Author'
        '</dc:title></cc:Agent></dc:creator><dc:title>  A red\n  apple </dc:title></cc:Work></rdf:RDF>'
        '</metadata><circle r="3"/></svg>')
    broken = tmp_path / "broken.svg"
    broken.write_text('<svg xmlns="http://www.w3.org/2000/svg"><title>Half</svg>')
    # Execute
    title = clipart.svg_title(path)
    with pytest.raises(DataError) as err:
        clipart.svg_title(broken)
    # Assert
    assert title == "A red apple"
    assert str(broken) in str(err.value)


@pytest.mark.parametrize("head", [
    '<?xml version="1" standalone="no"?>\n<svg xmlns="http://www.w3.org/2000/svg">',
    '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="&amp;#38;#38;ns_xlink;">',
])
def test_drawings_rsvg_convert_rejects_are_left_out(head: str, tmp_path: Path) -> None:
    # Prepare: XML that expat reads and librsvg does not (3 drawings of openclipart-svg are like this)
    (tmp_path / "people").mkdir()
    (tmp_path / "people" / "bad.svg").write_text(f"{head}<title>Man</title><circle r='3'/></svg>")
    (tmp_path / "people" / "good.svg").write_text(
        "<svg xmlns='http://www.w3.org/2000/svg'><title>Woman</title><circle r='3'/></svg>")
    # Execute
    _, problem = clipart.inspect_svg(tmp_path / "people" / "bad.svg")
    found = clipart.drawings(tmp_path)
    # Assert
    assert problem
    assert found == {"people": [(tmp_path / "people" / "good.svg", "Woman")]}


def test_emoji_of_the_installed_font() -> None:
    # Execute
    layout = emoji.read(emoji.FONT_DIR, DataConfig(name="emoji"))
    again = emoji.read(emoji.FONT_DIR, DataConfig(name="emoji"))
    other = emoji.read(emoji.FONT_DIR, DataConfig(name="emoji", seed=1))
    # Assert
    examples = layout.train + layout.test
    names = [e.sources["caption"] for e in examples]
    assert 1000 <= len(examples) <= 2000
    assert len(set(names)) == len(names)
    assert {"grinning face", "red apple", "rocket"} <= set(names)
    assert len(layout.test) == round(0.2 * len(examples))
    assert again == layout  # the split is seeded
    assert other.test != layout.test


def test_clipart_of_the_installed_package() -> None:
    # Execute
    layout = clipart.read(clipart.SVG_DIR, DataConfig(name="clipart"))
    # Assert
    examples = layout.train + layout.test
    paths = [e.sources["image"] for e in examples]
    assert len(layout.classes) == 22
    assert layout.classes == sorted(layout.classes)
    assert len(examples) > 7000
    assert len(set(paths)) == len(paths)
    assert all(e.sources["title"] for e in examples)
    assert {e.label for e in layout.test} == set(range(22))  # every category in the test split
