"""Numbers for people."""

from __future__ import annotations

import pytest

from proxy.dashboard import fmt


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (950, "950"),
        (999, "999"),
        (1000, "1.0 k"),
        (12_345, "12.3 k"),
        (999_499, "999 k"),
        (999_999, "1.0 M"),
        (1_234_567, "1.2 M"),
        (250_000_000, "250 M"),
        (3_400_000_000, "3.4 B"),
        (-1500, "-1.5 k"),
    ],
)
def test_tokens(value: float, text: str) -> None:
    assert fmt.tokens(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (34.1, "$34.10"),
        (1234.5, "$1,234.50"),
        (0.0, "$0.00"),
        (0.004, "< $0.01"),
        (0.006, "$0.01"),
        (None, "n/a"),
    ],
)
def test_money(value: float | None, text: str) -> None:
    assert fmt.money(value) == text


def test_percent_count_and_durations() -> None:
    assert fmt.percent(0.415) == "41.5%"
    assert fmt.percent(None) == "n/a"
    assert fmt.count(12345) == "12,345"
    assert fmt.duration_ms(None) == "n/a"
    assert fmt.duration_ms(4.25) == "4.2 ms"
    assert fmt.duration_ms(120.4) == "120 ms"
    assert fmt.duration_ms(2500) == "2.5 s"
