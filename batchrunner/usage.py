"""Token usage as a provider reports it (the dialect reads it out of an answer), and how money
is shown (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens as the API reports them; output tokens already include reasoning tokens."""

    input_tokens: int | None = None
    cached_tokens: int | None = None
    output_tokens: int | None = None
    reasoning_tokens: int | None = None


def format_usd(value: float | None) -> str:
    """Cents for large sums; at least two significant digits for tiny ones (status, estimates)."""
    if value is None:
        return "unknown"
    if value >= 1 or value == 0:
        return f"${value:,.2f}"
    return f"${value:.{max(4, 1 - math.floor(math.log10(value)))}f}"
