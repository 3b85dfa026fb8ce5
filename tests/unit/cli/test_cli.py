"""`linguagate` CLI: serve flags/env to Settings to uvicorn; plugged subcommands."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from proxy.app import ProxyApp
from proxy.cli import commands as cli
from proxy.gateway.http_limits import HttpLimits, LimitedHttpToolsProtocol


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, dict[str, Any]]]:
    import uvicorn

    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.append((app, kwargs)))
    for name in (
        "LINGUAGATE_UPSTREAM_URL",
        "LINGUAGATE_PORT",
        "LINGUAGATE_WORKERS",
        "LINGUAGATE_POLICIES",
    ):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_serve_one_worker(
    uvicorn_calls: list[tuple[Any, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LINGUAGATE_UPSTREAM_URL", "http://env-upstream/v1")
    monkeypatch.setenv("LINGUAGATE_PORT", "9001")
    status = cli.main(
        [
            "serve",
            "--port",
            "9002",
            "--policies",
            "/tmp/p",
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    )
    assert status == 0
    app, kwargs = uvicorn_calls[0]
    assert isinstance(app, ProxyApp)
    assert kwargs["port"] == 9002  # flag beats environment
    assert (kwargs["loop"], kwargs["access_log"]) == ("uvloop", False)
    http = kwargs["http"]  # httptools with the proxy's client limits (issue 13)
    assert http.func is LimitedHttpToolsProtocol and http.keywords["limits"] == HttpLimits()
    assert kwargs["ws"] == "none"


def test_serve_workers_use_factory_and_env(
    uvicorn_calls: list[tuple[Any, dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "environ", {})
    assert (
        cli.main(["serve", "--workers", "3", "--upstream", "http://u/v1", "--policies", "pol"]) == 0
    )
    app, kwargs = uvicorn_calls[0]
    assert app == "proxy.app:create_app_from_env"
    assert kwargs["factory"] is True and kwargs["workers"] == 3
    pickle.dumps(kwargs["http"])  # each worker process gets it through pickle
    assert os.environ["LINGUAGATE_UPSTREAM_URL"] == "http://u/v1"
    assert Path(os.environ["LINGUAGATE_POLICIES"]) == Path("pol")


def test_bad_setting_exits_2(
    uvicorn_calls: list[tuple[Any, dict[str, Any]]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--upstream", "ftp://nope"]) == 2
    assert "upstream URL" in capsys.readouterr().err
    assert uvicorn_calls == []


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "serve" in capsys.readouterr().out


def test_serve_does_not_import_other_subcommands() -> None:
    parser, registered = cli.build_parser("serve")
    assert registered == []
    assert parser.parse_args(["serve"]).func is not None


def test_admin_subcommands_registered() -> None:
    _, registered = cli.build_parser("keys")
    assert registered == ["proxy.cli.admin"]


def test_serve_banner_says_how_compression_starts(
    uvicorn_calls: list[tuple[Any, dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    (tmp_path / "team.toml").write_text(
        '[tenant]\nname = "team"\nanonymous = true\n\n[compression]\nmode = "enforce"\n'
    )
    monkeypatch.setenv("LINGUAGATE_CACHE_DIR", str(tmp_path / "cache"))  # nothing converted
    argv = ["serve", "--upstream", "http://u/v1", "--policies", str(tmp_path)]
    assert cli.main([*argv, "--cpu-precision", "fp32"]) == 0
    err = capsys.readouterr().err
    assert "on a CPU: fp32 (requested)" in err
    assert "skipped: compressor_loading" in err and "compressor ready" in err
    # Where the packaged model is installed, a first start converts it.
    assert "a first start converts the packaged GGUF" in err or "model is missing" in err
    (tmp_path / "team.toml").write_text('[tenant]\nname = "team"\nanonymous = true\n')
    assert cli.main(argv) == 0
    assert "No policy compresses yet" in capsys.readouterr().err
