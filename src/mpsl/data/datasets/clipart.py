"""Clipart: Openclipart drawings + their titles -> 22 categories, an embedded image-text set.

Embedded: the drawings come from the Debian package openclipart-svg, read from /usr/share/openclipart/svg/,
and are rasterized by rsvg-convert from librsvg2-bin (`apt-get install openclipart-svg librsvg2-bin`).
data.root may name another folder in the same layout:

    <category>/**/<drawing>.svg     22 category folders (animals, buildings, ... unsorted), each with its
                                    drawings at the top and in sub-category folders (animals/birds/...)

A drawing's label is its top category folder (classes: the folders, sorted), its text its title: the
dc:title of the work in the SVG's RDF metadata, else the SVG's own <title>; drawings without a title are
skipped. Symbolic links (the package lists 663 drawings a second time, in other folders and categories)
are skipped too, so every drawing is one sample with one label, and so are the 3 drawings whose XML
rsvg-convert rejects (XML_DECLARATION, URI): 7,395 titled drawings of 7,458 files. A seeded
(data.seed) 80 % / 20 % split within every category. Images: rsvg-convert renders the drawing to fit
data.image_size on white, centred on a white square.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from mpsl.config import DataConfig
from mpsl.data.catalog import Example, FileDataset, Layout
from mpsl.data.datasets.common import encode_text, image_spec, text_spec
from mpsl.data.sources import register_files
from mpsl.data.spec import ModalitySpec
from mpsl.errors import DataError

SVG_DIR = Path("/usr/share/openclipart/svg")  # where openclipart-svg installs the drawings
RSVG = "rsvg-convert"  # from librsvg2-bin
PACKAGES = {"svg": "openclipart-svg", "rsvg": "librsvg2-bin"}
TEST_FRACTION = 0.2
RENDER_TIMEOUT_S = 120

DC_TITLE = "{http://purl.org/dc/elements/1.1/}title"
SVG_TITLE = ("{http://www.w3.org/2000/svg}title", "title")
# what libxml2 (rsvg-convert's parser) rejects though expat reads it: an XML version that is not 1.x, and a
# namespace name that is not a URI reference (RFC 3986 characters, one '#'); 3 drawings of the package
XML_DECLARATION = re.compile(rb"""\s*<\?xml\s+version\s*=\s*["']([^"']*)["']""")
_URI_CHAR = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})"
URI = re.compile(rf"{_URI_CHAR}*(?:#{_URI_CHAR}*)?")


def _install_hint(packages: list[str]) -> str:
    return f"apt-get install {' '.join(packages)}"


def default_root(cfg: DataConfig) -> Path:
    missing = [PACKAGES["svg"]] if not SVG_DIR.is_dir() else []
    if shutil.which(RSVG) is None:
        missing.append(PACKAGES["rsvg"])
    if missing:
        raise DataError(f"clipart needs the Debian package{'s' if len(missing) > 1 else ''} "
                        f"{' and '.join(missing)}: {_install_hint(missing)}")
    return SVG_DIR


def _rsvg() -> str:
    binary = shutil.which(RSVG)
    if binary is None:
        raise DataError(f"clipart needs {RSVG} from the Debian package {PACKAGES['rsvg']} to rasterize the "
                        f"drawings: {_install_hint([PACKAGES['rsvg']])}")
    return binary


def inspect_svg(path: Path) -> tuple[str, str]:
    """(title, problem) of a drawing. The title: its work's dc:title in the RDF metadata (not an author's
    or publisher's, which are dc:titles of cc:Agents), else the <title> of the <svg> element; '' when it
    has neither. The problem: why rsvg-convert (libxml2) would reject XML that expat reads, '' if none.

    Parses only until the work's dc:title: the title sits at the top of the file, the drawing below it.
    """
    stack: list[str] = []  # tags of the open elements
    fallback = ""
    try:
        with path.open("rb") as f:
            declared = XML_DECLARATION.match(f.read(256).removeprefix(b"\xef\xbb\xbf"))
            if declared and not re.fullmatch(rb"1\.[0-9]+", declared.group(1)):
                return "", f"XML version {declared.group(1).decode(errors='replace')!r}"
            f.seek(0)
            for event, item in ET.iterparse(f, events=("start-ns", "start", "end")):
                if event == "start-ns":
                    prefix, uri = item
                    if not URI.fullmatch(uri):
                        return "", f"the namespace name of {prefix or 'xmlns'} is not a URI"
                    continue
                if event == "start":
                    stack.append(item.tag)
                    continue
                stack.pop()
                text = " ".join((item.text or "").split())
                if item.tag == DC_TITLE and text and not (stack and stack[-1].endswith("}Agent")):
                    return text, ""
                if item.tag in SVG_TITLE and len(stack) == 1 and text and not fallback:
                    fallback = text  # a title of the root <svg> element
                if len(stack) > 2:
                    item.clear()  # keep memory flat on big drawings
    except ET.ParseError as exc:
        raise DataError(f"{path}: not a well-formed SVG file ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None
    return fallback, ""


def svg_title(path: Path) -> str:
    return inspect_svg(path)[0]


def drawings(root: Path) -> dict[str, list[tuple[Path, str]]]:
    """category -> its titled drawings (path, title), in path order; untitled drawings, drawings
    rsvg-convert cannot parse, and links left out."""
    categories = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    found = {}
    for category in categories:
        titled = []
        for path in sorted((root / category).rglob("*.svg")):
            if path.is_symlink() or not path.is_file():
                continue
            title, problem = inspect_svg(path)
            if title and not problem:
                titled.append((path, title))
        found[category] = titled
    return found


def read(root: Path, cfg: DataConfig) -> Layout:
    _rsvg()  # say now, not after reading 8,000 titles, that the renderer is missing
    found = drawings(root)
    classes = [c for c, titled in found.items() if titled]
    if not classes:
        raise DataError(f"clipart: no titled .svg drawings in category folders under {root}")
    rng = np.random.default_rng(cfg.seed)
    train, test = [], []
    for label, category in enumerate(classes):
        titled = found[category]
        held_out = set(rng.permutation(len(titled))[:round(len(titled) * TEST_FRACTION)].tolist())
        for i, (path, title) in enumerate(titled):
            (test if i in held_out else train).append(Example({"image": path, "title": title}, label))
    return Layout(classes, train, test)


def modalities(cfg: DataConfig) -> dict[str, ModalitySpec]:
    return {"image": image_spec(cfg), "title": text_spec(cfg)}


def render_svg(path: Path, size: int) -> np.ndarray:
    """An SVG drawing -> uint8 [3, size, size]: rasterized to fit the square (aspect kept), centred on white."""
    from PIL import Image, UnidentifiedImageError

    try:
        done = subprocess.run([_rsvg(), "--width", str(size), "--height", str(size), "--keep-aspect-ratio",
                               "--background-color", "white", "--format", "png", str(path)],
                              capture_output=True, timeout=RENDER_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise DataError(f"{path}: {RSVG} did not finish within {RENDER_TIMEOUT_S} s") from None
    except OSError as exc:
        raise DataError(f"{path}: {RSVG} could not be run ({exc})") from None
    if done.returncode != 0:
        message = " ".join(done.stderr.decode(errors="replace").split())[:300]
        raise DataError(f"{path}: {RSVG} cannot rasterize it (exit {done.returncode}: {message})")
    try:
        with Image.open(io.BytesIO(done.stdout)) as drawn:
            drawn = drawn.convert("RGBA")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: {RSVG} gave no readable PNG ({exc})") from None
    drawn.thumbnail((size, size))  # rsvg fits it already; rounding can leave a pixel over
    canvas = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    canvas.alpha_composite(drawn, ((size - drawn.width) // 2, (size - drawn.height) // 2))
    return np.asarray(canvas.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1).copy()  # [S, S, 3] -> [3, S, S]


def decode(ex: Example, cfg: DataConfig) -> dict[str, np.ndarray]:
    return {"image": render_svg(ex.sources["image"], cfg.image_size),
            "title": encode_text([ex.sources["title"]], cfg)}


DATASET = register_files(FileDataset(
    "clipart", "Openclipart drawings + titles -> 22 categories, embedded (Debian packages openclipart-svg, "
    "librsvg2-bin; data.root: <category>/**/*.svg)", "classification", modalities, read, decode,
    default_root=default_root,
))
