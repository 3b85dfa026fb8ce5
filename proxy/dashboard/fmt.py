"""Numbers formatted for people: ``1.2 M`` tokens, ``$34.10``, ``41.5%``, ``120 ms``."""

from __future__ import annotations

__all__ = ["count", "duration_ms", "money", "percent", "tokens"]

_UNITS = ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"))


def tokens(value: float) -> str:
    """``950``, ``12.3 k``, ``1.2 M``: three significant figures at most."""
    sign = "-" if value < 0 else ""
    value = abs(value)
    for size, unit in _UNITS:
        if value >= size * 0.9995:
            scaled = value / size
            digits = 0 if scaled >= 100 else 1
            return f"{sign}{scaled:.{digits}f} {unit}"
    return f"{sign}{value:.0f}"


def count(value: int) -> str:
    """Thousands separated: ``12,345``."""
    return f"{value:,}"


def money(value: float | None) -> str:
    """``$34.10``; amounts under a cent as ``< $0.01``; unknown as ``n/a``."""
    if value is None:
        return "n/a"
    if 0 < value < 0.005:
        return "< $0.01"
    return f"${value:,.2f}"


def percent(fraction: float | None, digits: int = 1) -> str:
    """``41.5%`` (``n/a`` without data)."""
    return "n/a" if fraction is None else f"{100 * fraction:.{digits}f}%"


def duration_ms(value: float | None) -> str:
    """``8 ms``, ``120 ms``, ``2.5 s`` (``n/a`` without data)."""
    if value is None:
        return "n/a"
    if value >= 1000:
        return f"{value / 1000:.1f} s"
    return f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"
