import pytest

from proxy.compression.overrides import read_override
from proxy.core.errors import InvalidParameter
from proxy.policy.model import CompressionPolicy

ALLOW = CompressionPolicy(mode="enforce", allow_request_override=True,
                          override_min_rate=0.2, override_max_rate=0.8)


def test_no_headers_no_override() -> None:
    o = read_override(ALLOW, {})
    assert o.rate is None and not o.mode_off and o.note is None


def test_rate_within_bounds_is_applied() -> None:
    o = read_override(ALLOW, {"x-linguagate-rate": "0.4"})
    assert o.rate == 0.4 and o.note == "applied"


@pytest.mark.parametrize(("given", "bounded"), [("0.05", 0.2), ("1", 0.8)])
def test_rate_outside_bounds_is_clamped(given: str, bounded: float) -> None:
    o = read_override(ALLOW, {"x-linguagate-rate": given})
    assert o.rate == bounded and o.note == f"clamped to {bounded:g}"


def test_not_allowed_is_ignored_not_an_error() -> None:
    o = read_override(CompressionPolicy(mode="enforce"),
                      {"x-linguagate-rate": "0.3", "x-linguagate-mode": "off"})
    assert o.rate is None and not o.mode_off
    assert o.note is not None and o.note.startswith("ignored")


def test_mode_off() -> None:
    assert read_override(ALLOW, {"x-linguagate-mode": "OFF"}).mode_off


@pytest.mark.parametrize("value", ["abc", "0", "-0.5", "1.5", "nan", "inf"])
def test_bad_rate_is_a_400(value: str) -> None:
    with pytest.raises(InvalidParameter) as info:
        read_override(ALLOW, {"x-linguagate-rate": value})
    assert info.value.param == "x-linguagate-rate"


def test_bad_mode_is_a_400() -> None:
    with pytest.raises(InvalidParameter):
        read_override(ALLOW, {"x-linguagate-mode": "turbo"})
