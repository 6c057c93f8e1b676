"""Small HTML builders for the report: escaping, tables, images, collapsible sections.

Every function returns an HTML fragment (a ``str``); text arguments are escaped,
arguments named ``body`` or ``cells`` of :class:`Html` are inserted as they are.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence
from pathlib import Path


class Html(str):
    """A fragment that is already HTML (not escaped again by :func:`text`)."""


def text(value: object) -> Html:
    """``value`` as escaped HTML text, or itself if it is already :class:`Html`."""
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=False))


def attributes(**values: str | None) -> str:
    """`` key="value"`` pairs; ``class_`` gives ``class``, ``data_x`` gives ``data-x``;
    ``None`` values are left out."""
    return "".join(
        f' {key.rstrip("_").replace("_", "-")}="{html.escape(value)}"'
        for key, value in values.items()
        if value is not None
    )


def tag(name: str, body: object = "", **attrs: str | None) -> Html:
    """``<name attr="…">body</name>`` (see :func:`attributes`)."""
    return Html(f"<{name}{attributes(**attrs)}>{text(body)}</{name}>")


def join(parts: Iterable[object]) -> Html:
    """The fragments concatenated (text parts escaped)."""
    return Html("".join(text(p) for p in parts))


def table(headers: Sequence[object], rows: Iterable[Sequence[object]], class_: str = "") -> Html:
    """A table with a header row; cells are escaped text or :class:`Html`.

    A cell given as a ``(content, css_class)`` tuple gets that class.
    """
    head = tag("tr", join(tag("th", h) for h in headers))
    body = []
    for row in rows:
        cells = []
        for cell in row:
            content, css = cell if isinstance(cell, tuple) else (cell, None)
            cells.append(tag("td", content, class_=css))
        body.append(tag("tr", join(cells)))
    return tag("table", join([tag("thead", head), tag("tbody", join(body))]), class_=class_ or None)


def details(summary: object, body: object, is_open: bool = False, class_: str = "") -> Html:
    """A native collapsible section (no script): ``<details><summary>``."""
    opened = " open" if is_open else ""
    return Html(
        f"<details{attributes(class_=class_ or None)}{opened}>"
        f"{tag('summary', summary)}{text(body)}</details>"
    )


def data_uri(path: Path) -> str:
    """The PNG at ``path`` as a ``data:`` URI, so that the page needs no other file."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def image(path: Path, alt: str, class_: str = "") -> Html:
    """An embedded PNG; a visible placeholder (not a broken image) when the file is missing."""
    if not path.is_file():
        return tag("span", f"missing image: {path.name}", class_="missing")
    return Html(f"<img{attributes(src=data_uri(path), alt=alt, class_=class_ or None)}>")
