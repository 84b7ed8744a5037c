"""The Jinja2 environment of the report and the audit page: templates kept as package data
in ``murakit/report/templates``, autoescaping on for every template (so every value is
escaped unless the Python side marked it as markup it generated), undefined names an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from murakit.evaluate.formatting import fmt_ci, fmt_int, fmt_kappa, fmt_lr, fmt_num, fmt_pct, plural


@dataclass
class Missing:
    """A yellow box on a page: what is missing and, when there is one, the command that
    makes it. A section gathers either its data or a Missing; templates test ``is missing``."""

    what: str
    command: str | None = None


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("murakit.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        pct=fmt_pct, num=fmt_num, count=fmt_int, ci=fmt_ci, kappa=fmt_kappa, lr=fmt_lr
    )
    env.filters["plural"] = plural
    env.tests["missing"] = lambda value: isinstance(value, Missing)
    return env


def render(template: str, **context: Any) -> str:
    """The text of `template` (a file name in the templates folder) with `context`."""
    return environment().get_template(template).render(**context)
