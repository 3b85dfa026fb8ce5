"""`serve` makes one dashboard secret in the parent, so every worker signs alike."""

from __future__ import annotations

import os
from typing import Any

import pytest

from proxy.cli import commands as cli
from proxy.core.settings import Settings, SettingsError


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import uvicorn

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append(kwargs))
    for name in list(os.environ):
        if name.startswith("LINGUAGATE_"):
            monkeypatch.delenv(name)
    return calls


def test_workers_inherit_a_generated_secret(
    uvicorn_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "environ", dict(os.environ))  # serve writes the workers' env here
    assert cli.main(["serve", "--upstream", "http://127.0.0.1:9/v1", "--workers", "2"]) == 0
    assert uvicorn_calls and uvicorn_calls[0]["workers"] == 2
    secret = os.environ["LINGUAGATE_DASHBOARD_SECRET"]
    assert len(secret) >= 32
    # What each worker process rebuilds from that environment.
    assert Settings.from_env(os.environ).dashboard_secret == secret


def test_a_configured_secret_is_kept(
    uvicorn_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "environ", dict(os.environ))
    os.environ["LINGUAGATE_DASHBOARD_SECRET"] = "configured-secret-0123456789"
    assert cli.main(["serve", "--upstream", "http://127.0.0.1:9/v1", "--workers", "2"]) == 0
    assert os.environ["LINGUAGATE_DASHBOARD_SECRET"] == "configured-secret-0123456789"


def test_secret_is_not_in_repr_and_must_be_long_enough() -> None:
    settings = Settings(dashboard_secret="configured-secret-0123456789")
    assert "configured-secret" not in repr(settings)
    with pytest.raises(SettingsError):
        Settings(dashboard_secret="short")
    with pytest.raises(SettingsError):
        Settings(dashboard_session_ttl_s=5)
