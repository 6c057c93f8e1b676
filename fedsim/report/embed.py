"""What the page embeds from the run directory, and how much of it.

The report is one self-contained file, so it copies images and texts into itself. It
copies only what belongs to the run, within fixed caps:

- an image must be a file inside the run directory (its path relative to it, after
  following every symbolic link) and a valid PNG of at most :data:`MAX_IMAGE_BYTES`;
- a long text (the scenario as written, as resolved) is cut to :data:`MAX_TEXT_CHARS`;
- all images and texts together take at most :data:`MAX_EMBEDDED_CHARS` characters of
  the page, spent in the order the page shows them;
- any other single value (a name, a reason, an error) is cut to :data:`MAX_VALUE_CHARS`
  when the page is rendered.

What is refused or cut is replaced by a visible note, never silently dropped.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_IMAGE_BYTES = 4 * 2**20
"""Largest PNG file the page embeds (4 MiB)."""
MAX_TEXT_CHARS = 100_000
"""Longest text block the page embeds (the scenario as written, as resolved)."""
MAX_VALUE_CHARS = 2_000
"""Longest single value (name, reason, error, parameter) the page shows."""
MAX_EMBEDDED_CHARS = 30_000_000
"""All embedded images (as ``data:`` URIs, one byte per character) and text blocks
together: about 30 MB of the page."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cut(text: str, limit: int) -> str:
    """``text`` if it has at most ``limit`` characters, else its start and how much is left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [truncated: {len(text) - limit:,} more characters]"


def png_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` of the PNG file ``data``, or ``None`` if it is not a valid PNG."""
    if not data.startswith(PNG_SIGNATURE):
        return None
    try:
        with Image.open(io.BytesIO(data)) as picture:
            size = picture.size
            picture.verify()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        return None
    return size


class Embedded(str):
    """A value the :class:`Embedder` produced within its own caps (a ``data:`` URI, a text
    block): the page shows it whole, it is not cut again to :data:`MAX_VALUE_CHARS`."""


@dataclass(frozen=True)
class Text:
    """A text block as the page shows it: ``shown`` (the first characters) and how many
    characters of ``total`` were left out (``0``: complete)."""

    shown: Embedded
    total: int

    @property
    def dropped(self) -> int:
        return self.total - len(self.shown)


@dataclass(frozen=True)
class Picture:
    """An image as the page shows it: ``src`` a ``data:image/png`` URI and the PNG's
    ``width`` × ``height`` in pixels, or ``src`` ``None`` and ``note`` (one line) saying
    why it is not shown."""

    src: Embedded | None
    note: str = ""
    width: int = 0
    height: int = 0

    @classmethod
    def absent(cls, note: str) -> Picture:
        return cls(None, note)


@dataclass
class Embedder:
    """Copies a run directory's images and texts into the page, within the caps.

    ``refused`` lists one line per image that exists but was not embedded (outside the
    run directory, not a PNG, too large, over the budget); ``budget`` is what is left of
    :data:`MAX_EMBEDDED_CHARS`.
    """

    run_dir: Path
    budget: int = field(default_factory=lambda: MAX_EMBEDDED_CHARS)
    refused: list[str] = field(default_factory=list)

    def _refuse(self, note: str) -> Picture:
        self.refused.append(note)
        return Picture.absent(f"not embedded: {note}")

    def image(self, name: str) -> Picture:
        """The PNG at ``name`` (a path relative to the run directory), or why not."""
        root = self.run_dir.resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            return self._refuse(f"{name} is outside the run directory")
        if not path.is_file():
            return Picture.absent(f"missing image: {Path(name).name}")
        size = path.stat().st_size
        if size > MAX_IMAGE_BYTES:
            return self._refuse(f"{name} is larger than {MAX_IMAGE_BYTES // 2**20} MiB")
        data = path.read_bytes()
        shape = png_size(data)
        if shape is None:
            return self._refuse(f"{name} is not a PNG image")
        src = Embedded("data:image/png;base64," + base64.b64encode(data).decode("ascii"))
        if len(src) > self.budget:
            return self._refuse(
                f"{name}: the report's {MAX_EMBEDDED_CHARS / 1e6:g} MB for embedded files are spent"
            )
        self.budget -= len(src)
        return Picture(src, width=shape[0], height=shape[1])

    def text(self, text: str) -> Text:
        """``text`` cut to :data:`MAX_TEXT_CHARS` and to what is left of the budget."""
        shown = text[: max(0, min(MAX_TEXT_CHARS, self.budget))]
        self.budget -= len(shown)
        return Text(Embedded(shown), len(text))
