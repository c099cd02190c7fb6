"""How numbers of a result read in words, the same in the CLI's lines and in the LIS adapter's notes."""

from __future__ import annotations


def score_and_threshold(score: float, threshold: float) -> tuple[str, str]:
    """Two numbers with one decimal, or as many more (up to six) as it takes to tell them apart."""
    for decimals in range(1, 7):
        a, b = f"{score:.{decimals}f}", f"{threshold:.{decimals}f}"
        if a != b:
            break
    return a, b


def percent(share: float) -> str:
    """A share as a person writes it: 0.95 is "95%", 0.975 "97.5%"."""
    return f"{round(100 * share, 4):g}%"
