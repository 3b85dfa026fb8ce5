"""Settings: environment, flag precedence, round trip for workers, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.core.settings import Settings, SettingsError


def test_defaults() -> None:
    settings = Settings()
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8080, 1)
    assert settings.policies_dir == Path("policies")
    assert settings.upstream_api_key is None and settings.redis_url is None


def test_from_env_and_flag_precedence() -> None:
    env = {
        "LINGUAGATE_UPSTREAM_URL": "http://up:9000/v1/",
        "LINGUAGATE_UPSTREAM_API_KEY": "sk-org",
        "LINGUAGATE_POLICIES": "/etc/lg",
        "LINGUAGATE_REDIS_URL": "redis://r:6379/0",
        "LINGUAGATE_PORT": "9999",
        "LINGUAGATE_MAX_BODY_BYTES": "1000",
        "LINGUAGATE_LOG_LEVEL": "DEBUG",
        "LINGUAGATE_READ_TIMEOUT": "2.5",
        "UNRELATED": "x",
    }
    settings = Settings.from_env(env, port=7000, host=None)
    assert settings.upstream_url == "http://up:9000/v1"
    assert settings.upstream_api_key == "sk-org"
    assert settings.policies_dir == Path("/etc/lg")
    assert settings.redis_url == "redis://r:6379/0"
    assert settings.port == 7000  # the flag wins
    assert settings.host == "127.0.0.1"  # None flags do not override
    assert settings.max_body_bytes == 1000
    assert settings.log_level == "debug"
    assert settings.read_timeout_s == 2.5


def test_to_env_round_trip() -> None:
    original = Settings(
        upstream_url="http://x/v1", upstream_api_key="k", workers=3, redis_url="redis://h"
    )
    assert Settings.from_env(original.to_env()) == original


def test_secret_not_in_repr() -> None:
    assert "sk-secret" not in repr(Settings(upstream_api_key="sk-secret"))


@pytest.mark.parametrize(
    "changes",
    [
        {"upstream_url": "ftp://x"},
        {"port": 0},
        {"workers": 0},
        {"max_body_bytes": 0},
        {"log_level": "loud"},
        {"read_timeout_s": 0.0},
        {"max_connections": 0},
    ],
)
def test_invalid_values(changes: dict[str, object]) -> None:
    with pytest.raises(SettingsError):
        Settings(**changes)  # type: ignore[arg-type]


def test_non_numeric_env() -> None:
    with pytest.raises(SettingsError, match="LINGUAGATE_PORT"):
        Settings.from_env({"LINGUAGATE_PORT": "eighty"})


def test_org_key_is_trimmed_and_checked() -> None:
    assert Settings(upstream_api_key="sk-abc\n").upstream_api_key == "sk-abc"
    assert Settings(upstream_api_key="  ").upstream_api_key is None
    with pytest.raises(SettingsError):
        Settings(upstream_api_key="sk-a\r\nx-evil: 1")


def test_cpu_precision_flag_env_and_choices() -> None:
    assert Settings().cpu_precision == "auto"
    env = {"LINGUAGATE_CPU_PRECISION": "fp32"}
    assert Settings.from_env(env).cpu_precision == "fp32"
    assert Settings.from_env(env, cpu_precision="bf16").cpu_precision == "bf16"  # flag wins
    assert Settings.from_env(Settings(cpu_precision="bf16-matmul").to_env()).cpu_precision == (
        "bf16-matmul"
    )
    with pytest.raises(SettingsError, match="cpu precision"):
        Settings(cpu_precision="fp16")
