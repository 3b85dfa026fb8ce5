"""The client-limit settings (issue 13): environment names, defaults, validation."""

from __future__ import annotations

import pytest

from proxy.core.settings import Settings, SettingsError
from proxy.gateway.http_limits import HttpLimits


def test_defaults_are_the_documented_limits() -> None:
    assert HttpLimits.from_settings(Settings()) == HttpLimits(
        max_header_bytes=65536, max_headers=100, header_timeout_s=10.0, body_timeout_s=30.0,
        max_concurrency=1024,
    )


def test_limits_come_from_the_environment_and_round_trip() -> None:
    env = {
        "LINGUAGATE_MAX_HEADER_BYTES": "8192",
        "LINGUAGATE_MAX_HEADERS": "20",
        "LINGUAGATE_HEADER_TIMEOUT": "2.5",
        "LINGUAGATE_BODY_TIMEOUT": "4",
        "LINGUAGATE_MAX_CONCURRENCY": "64",
    }
    settings = Settings.from_env(env)
    assert HttpLimits.from_settings(settings) == HttpLimits(8192, 20, 2.5, 4.0, 64)
    assert Settings.from_env(settings.to_env()) == settings


@pytest.mark.parametrize(
    "change",
    [{"max_header_bytes": 0}, {"max_headers": 0}, {"max_concurrency": 0},
     {"header_timeout_s": 0.0}, {"body_timeout_s": -1.0}],
)
def test_unusable_limits_are_rejected(change: dict[str, float]) -> None:
    with pytest.raises(SettingsError):
        Settings(**change)  # type: ignore[arg-type]
