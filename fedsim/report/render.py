"""The page's templates (``templates/``) rendered with Jinja2: every value is escaped
(autoescape) and cut to :data:`~fedsim.report.embed.MAX_VALUE_CHARS`, except what the
:class:`~fedsim.report.embed.Embedder` produced within its own caps."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from fedsim.report.embed import MAX_VALUE_CHARS, Embedded, cut


def _capped(value: object) -> object:
    if isinstance(value, str) and not isinstance(value, Markup | Embedded):
        return cut(value, MAX_VALUE_CHARS)
    return value


ENVIRONMENT = Environment(
    loader=PackageLoader("fedsim.report", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    finalize=_capped,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(template: str, **context: Any) -> str:
    """The template file ``template`` rendered with ``context``."""
    return ENVIRONMENT.get_template(template).render(**context)
