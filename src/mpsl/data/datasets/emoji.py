"""Emoji: Noto Color Emoji images <-> their Unicode names, an embedded image-caption retrieval set.

Embedded: the files come from the Debian package fonts-noto-color-emoji (`apt-get install
fonts-noto-color-emoji`), read from /usr/share/fonts/truetype/noto/; data.root may name another folder
that holds NotoColorEmoji.ttf.

    NotoColorEmoji.ttf     the colour bitmap (CBDT) font; nothing else is read

The samples are the single code points of the blocks that hold emoji (RANGES below) that have
a Unicode name (unicodedata, so Python's Unicode version decides) and that the font really draws: about
1,400. Each image is the glyph rendered by Pillow at the font's native 109 px, centred on a white square
and resized to data.image_size; its caption is its lowercased Unicode name ("grinning face"). A seeded
(data.seed) 80 % / 20 % split; no classes: every emoji and its name are one pair.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from mpsl.config import DataConfig
from mpsl.data.catalog import Example, FileDataset, Layout
from mpsl.data.datasets.common import encode_text, image_spec, need_file, text_spec
from mpsl.data.media import square_image
from mpsl.data.sources import register_files
from mpsl.data.spec import ModalitySpec
from mpsl.errors import DataError

FONT_DIR = Path("/usr/share/fonts/truetype/noto")  # where fonts-noto-color-emoji installs it
FONT_FILE = "NotoColorEmoji.ttf"
PACKAGE = "fonts-noto-color-emoji"
FONT_SIZE = 109  # the only size of the font's CBDT bitmaps
# The Unicode blocks that hold emoji: Latin-1 Supplement (©, ®), General Punctuation .. Miscellaneous Symbols
# and Arrows (‼, ™, ↔, ⌚, Ⓜ, ▶, ☀, ✂, ⤴, ⭐), CJK Symbols (〰, 〽), Enclosed CJK (㊗, ㊙) and Mahjong Tiles ..
# Symbols and Pictographs Extended-A. ASCII is left out: # * 0-9 are only keycap bases.
RANGES = ((0x00A0, 0x00FF), (0x2000, 0x2BFF), (0x3000, 0x303F), (0x3200, 0x32FF), (0x1F000, 0x1FAFF))
SKIP_CATEGORIES = frozenset({"Mn", "Me", "Mc", "Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})  # marks, controls
TEST_FRACTION = 0.2


def default_root(cfg: DataConfig) -> Path:
    if not (FONT_DIR / FONT_FILE).is_file():
        raise DataError(f"emoji needs the Debian package {PACKAGE} ({FONT_DIR / FONT_FILE} is missing): "
                        f"apt-get install {PACKAGE}")
    return FONT_DIR


@lru_cache(maxsize=4)
def _load_font(path: str, mtime_ns: int, size: int) -> Any:  # keyed on mtime: a rewritten file is reread
    from PIL import ImageFont

    try:  # from the bytes: given a path that fails, Pillow would load a system font of the same file name
        with open(path, "rb") as f:
            return ImageFont.truetype(f, FONT_SIZE)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a font Pillow can read ({exc})") from None


def _font(path: Path) -> Any:
    stat = need_file(path).stat()
    return _load_font(str(path), stat.st_mtime_ns, stat.st_size)


def _render(font: Any, char: str) -> Any:
    """One glyph -> RGBA image of exactly its drawn box, or None when the font draws nothing for it."""
    from PIL import Image, ImageDraw

    try:
        left, top, right, bottom = font.getbbox(char)
    except (RuntimeError, OSError, ValueError):  # e.g. the layout engine rejects a lone code point
        return None
    if right <= left or bottom <= top:
        return None
    image = Image.new("RGBA", (right - left, bottom - top), (0, 0, 0, 0))
    ImageDraw.Draw(image).text((-left, -top), char, font=font, embedded_color=True)
    box = image.getbbox()  # of non-zero pixels: None for a blank (missing) glyph
    return image.crop(box) if box is not None else None


def emoji_in(path: Path) -> list[tuple[int, str]]:
    """(code point, lowercased Unicode name) of every emoji the font at `path` draws, in code point order."""
    stat = need_file(path).stat()
    return list(_scan(str(path), stat.st_mtime_ns, stat.st_size))


@lru_cache(maxsize=4)
def _scan(path: str, mtime_ns: int, size: int) -> tuple[tuple[int, str], ...]:  # ~1 s: once per font file
    font = _load_font(path, mtime_ns, size)
    found = []
    for first, last in RANGES:
        for cp in range(first, last + 1):
            char = chr(cp)
            name = unicodedata.name(char, "")
            if name and unicodedata.category(char) not in SKIP_CATEGORIES and _render(font, char) is not None:
                found.append((cp, name.lower()))
    return tuple(found)


def read(root: Path, cfg: DataConfig) -> Layout:
    path = need_file(root / FONT_FILE)
    found = emoji_in(path)
    if not found:
        raise DataError(f"{path}: the font draws none of the emoji code points")
    examples = [Example({"codepoint": cp, "font": path, "caption": name}, 0) for cp, name in found]
    order = np.random.default_rng(cfg.seed).permutation(len(examples))
    test = set(order[:round(len(examples) * TEST_FRACTION)].tolist())
    return Layout([], [e for i, e in enumerate(examples) if i not in test],
                  [e for i, e in enumerate(examples) if i in test])


def modalities(cfg: DataConfig) -> dict[str, ModalitySpec]:
    return {"image": image_spec(cfg), "caption": text_spec(cfg, 1)}


def decode_emoji(font_path: Path, codepoint: int, size: int) -> np.ndarray:
    """One emoji -> uint8 [3, size, size]: the glyph centred on a white square, resized."""
    from PIL import Image

    glyph = _render(_font(font_path), chr(codepoint))
    if glyph is None:
        raise DataError(f"{font_path}: draws nothing for U+{codepoint:04X}")
    side = max(glyph.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square_image(canvas.convert("RGB"), size)


def decode(ex: Example, cfg: DataConfig) -> dict[str, np.ndarray]:
    return {"image": decode_emoji(ex.sources["font"], ex.sources["codepoint"], cfg.image_size),
            "caption": encode_text([ex.sources["caption"]], cfg)}


DATASET = register_files(FileDataset(
    "emoji", f"Noto Color Emoji images <-> Unicode names retrieval, embedded (Debian package {PACKAGE}; "
    f"data.root: a folder with {FONT_FILE})", "retrieval", modalities, read, decode, fusion="dual",
    default_root=default_root,
))
