"""`linguagate report --proxy`: reading the in-memory ledger of a running proxy."""

from __future__ import annotations

import json

import pytest

from proxy.cli.commands import main
from tests.support.compression import CompressionStack, few_shot, key_of

pytestmark = pytest.mark.integration


def test_report_reads_a_running_proxy(
    compression_stack: CompressionStack, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = compression_stack.client("team-a").chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=few_shot(71)  # type: ignore[arg-type]
    )
    assert raw.headers["x-linguagate-compression"] == "applied"
    original = int(raw.headers["x-linguagate-original-tokens"])
    forwarded = int(raw.headers["x-linguagate-forwarded-tokens"])
    url = compression_stack.server.base_url.removesuffix("/v1")

    assert main(["report", "--proxy", url, "--key", key_of("ops"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    team_a = [r for r in rows if r["tenant"] == "team-a"]
    assert team_a and sum(r["original_tokens"] for r in team_a) >= original
    assert sum(r["saved_tokens"] for r in team_a) >= original - forwarded

    # A tenant key reads its own rows only, and never another tenant's.
    assert main(["report", "--proxy", url, "--key", key_of("team-b"), "--json"]) == 0
    assert all(r["tenant"] == "team-b" for r in json.loads(capsys.readouterr().out))
    assert main(["report", "--proxy", url, "--key", key_of("team-b"),
                 "--tenant", "team-a"]) == 1
    assert "403" in capsys.readouterr().err

    assert main(["report", "--proxy", url, "--key", key_of("ops")]) == 0
    assert "team-a" in capsys.readouterr().out
