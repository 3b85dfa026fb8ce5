"""Per-request overrides: ``x-linguagate-rate`` and ``x-linguagate-mode: off``.

Honoured only when the tenant's policy allows it (``[compression.override] allow``)
and only within its bounds: a rate outside ``[min_rate, max_rate]`` is clamped, so a
client can never make compression stronger (or weaker) than its team agreed to. An
override the policy does not allow is ignored and reported, never an error; a value
that is not a rate at all is the client's mistake (400).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from proxy.core.errors import InvalidParameter
from proxy.policy.model import CompressionPolicy

__all__ = ["RATE_HEADER", "MODE_HEADER", "Override", "read_override"]

RATE_HEADER = "x-linguagate-rate"
MODE_HEADER = "x-linguagate-mode"


@dataclass(frozen=True)
class Override:
    rate: float | None = None
    mode_off: bool = False
    note: str | None = None  # for the x-linguagate-override response header


def read_override(policy: CompressionPolicy, headers: Mapping[str, str]) -> Override:
    raw_rate = headers.get(RATE_HEADER)
    raw_mode = headers.get(MODE_HEADER)
    if raw_rate is None and raw_mode is None:
        return Override()
    mode_off = False
    if raw_mode is not None:
        mode = raw_mode.strip().lower()
        if mode not in ("off", "on"):
            raise InvalidParameter(
                f"{MODE_HEADER} must be 'off' (or 'on'), got {raw_mode[:20]!r}.",
                param=MODE_HEADER, code="invalid_header",
            )
        mode_off = mode == "off"
    rate: float | None = None
    if raw_rate is not None:
        try:
            rate = float(raw_rate)
        except ValueError:
            rate = math.nan
        if not (0.0 < rate <= 1.0):
            raise InvalidParameter(
                f"{RATE_HEADER} must be a number in (0, 1], got {raw_rate[:20]!r}.",
                param=RATE_HEADER, code="invalid_header",
            )
    if not policy.allow_request_override:
        return Override(note="ignored: not allowed by policy")
    if rate is not None:
        bounded = min(max(rate, policy.override_min_rate), policy.override_max_rate)
        note = "applied" if bounded == rate else f"clamped to {bounded:g}"
        return Override(bounded, mode_off, note)
    return Override(None, mode_off, "applied")
