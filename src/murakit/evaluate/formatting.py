"""How numbers read to a person: the report's and audit page's template filters and the
command line's tables.

Undefined values (None, NaN) read as an en dash everywhere, so a missing number never
looks like a zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

DASH = "–"


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def fmt_pct(value: float | None, digits: int = 1) -> str:
    """0.8123 -> '81.2%'; undefined -> an en dash (the same text the tests expect)."""
    return DASH if is_missing(value) else f"{100 * value:.{digits}f}%"


def fmt_num(value: float | None, digits: int = 3) -> str:
    return DASH if is_missing(value) else f"{value:.{digits}f}"


def fmt_int(value: int | None) -> str:
    return DASH if value is None else f"{int(value):,}"


def fmt_ci(ci: Sequence[float] | None) -> str:
    """'[0.570, 0.671]', or '' when there is no interval."""
    return f"[{fmt_num(ci[0])}, {fmt_num(ci[1])}]" if ci else ""


def fmt_kappa(group: dict[str, Any]) -> str:
    """'0.620 [0.570, 0.671]': kappa with its 95% bootstrap interval when there is one."""
    text = fmt_num(group.get("kappa"))
    ci = group.get("kappa_ci")
    if ci is None or text == DASH:
        return text
    return f"{text} {fmt_ci(ci)}"


def fmt_lr(value: float | None) -> str:
    return DASH if is_missing(value) else f"{value:.2g}"


def plural(n: int, word: str) -> str:
    """'1 image', '2 images'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"
