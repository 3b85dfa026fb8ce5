"""`linguagate keys` and `linguagate policies` subcommands."""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
from pathlib import Path

import pytest

from proxy.cli.admin import add_subcommands

REPO = Path(__file__).resolve().parents[3]


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="linguagate")
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def test_keys_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["keys", "hash", "sk-research-1"]) == 0
    out = capsys.readouterr().out
    assert out == hashlib.sha256(b"sk-research-1").hexdigest() + "\n"


def test_keys_hash_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("sk-é\n"))
    assert run(["keys", "hash", "-"]) == 0
    assert capsys.readouterr().out.strip() == hashlib.sha256("sk-é".encode()).hexdigest()
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert run(["keys", "hash", "-"]) == 2


def test_keys_generate(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["keys", "generate"]) == 0
    lines = capsys.readouterr().out.splitlines()
    key = lines[0].split()[-1]
    assert key.startswith("lg-") and len(key) > 40
    assert lines[1].split()[-1] == hashlib.sha256(key.encode()).hexdigest()


def test_keys_requires_an_action() -> None:
    with pytest.raises(SystemExit):
        run(["keys"])


def test_policies_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["policies", "check", str(REPO / "policies")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert out[0].startswith("OK default (")
    assert "anonymous" in out[0] and "mode=off" in out[0]


def test_policies_check_example_folder(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["policies", "check", str(REPO / "policies" / "examples")]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("OK research (")
    assert "mode=enforce rate=0.5" in line
    assert "model overrides: gpt-4o-mini*, gpt-4o*" in line


def test_policies_check_reports_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(REPO / "policies" / "default.toml", tmp_path / "default.toml")
    bad = tmp_path / "team.toml"
    bad.write_text(
        '[tenant]\nname = "team"\napi_key_sha256 = ["sk-plain-key"]\n\n'
        '[compression]\nmode = "enforce"\nrate = 1.5\nmin_tokn = 10\n',
        encoding="utf-8",
    )
    assert run(["policies", "check", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"{bad}:3: tenant.api_key_sha256[0] must be 64 hex characters (the sha256 of the key:"
        " `linguagate keys hash KEY`); value not shown",
        f"{bad}:7: compression.rate must be in (0, 1], got 1.5",
        f"{bad}:8: unknown key compression.min_tokn (did you mean 'min_tokens'?)",
    ]
    assert "sk-plain-key" not in captured.out + captured.err
    assert captured.err.strip() == f"{tmp_path}: 3 problems"


def test_policies_check_default_dir_from_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LINGUAGATE_POLICIES", str(tmp_path))
    assert run(["policies", "check"]) == 1
    assert capsys.readouterr().out.strip() == f"{tmp_path}:1: no *.toml policy files found"
