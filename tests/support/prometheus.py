"""Reading one sample out of Prometheus text exposition (what /metrics serves)."""

from __future__ import annotations

import re


def sample(text: str, name: str, **labels: str) -> float:
    """The value of ``name{labels}`` in ``text`` (labels must match exactly)."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and dict(re.findall(r'(\w+)="([^"]*)"', match[1])) == labels:
            return float(match[2])
    raise AssertionError(f"no sample {name}{labels}")
