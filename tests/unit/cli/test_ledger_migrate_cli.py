"""`linguagate ledger-migrate`: the old key names it maps, and its command line (issue 15)."""

from __future__ import annotations

import hashlib

import pytest

from proxy.accounting.ledger_keys import model_prefix, models_key
from proxy.cli import commands as cli
from proxy.cli.ledger_migrate import new_names


def old_t16(name: str) -> str:
    # The digest the ledger used before commit 464f56c: sha256(name.encode())[:16].
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def test_old_names_map_to_the_names_the_ledger_reads_now() -> None:
    t, m = old_t16("research"), old_t16("gpt-4o")
    assert new_names(f"lg:v1:{t}:ledger:models") == (
        t, models_key("research"),
        f"lg:v1:{{{t}}}:ledger:migrated:"
        + hashlib.sha256(f"lg:v1:{t}:ledger:models".encode()).hexdigest()[:16])
    total = new_names(f"lg:v1:{t}:ledger:m:{m}:total")
    assert total is not None and total[1] == model_prefix("research", "gpt-4o") + ":total"
    hour = new_names(f"lg:v1:{t}:ledger:m:{m}:h:2026120517")
    assert hour is not None and hour[1] == model_prefix("research", "gpt-4o") + ":h:2026120517"
    assert hour[2] != total[2]  # one marker per old key


@pytest.mark.parametrize("key", [
    "lg:v1:ledger:tenants",  # kept its name
    "lg:v1:{0123456789abcdef}:ledger:models",  # already new
    "lg:v1:0123456789abcdef:ledger:w:0123456789abcdef",  # never written under the old form
    "lg:v1:0123456789abcdef:cmp:ab12",  # the cache
    "lg:v1:0123456789abcdef:ledger:m:0123456789abcdef:h:20261205",
    "lg:v1:0123456789abcdef:ledger:models:x",
])
def test_other_keys_are_not_migrated(key: str) -> None:
    assert new_names(key) is None


def test_registered_alone() -> None:
    _, registered = cli.build_parser("ledger-migrate")
    assert registered == ["proxy.cli.ledger_migrate"]


def test_needs_a_valid_url(monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("LINGUAGATE_REDIS_URL", raising=False)
    assert cli.main(["ledger-migrate", "--dry-run"]) == 2
    assert "--redis-url" in capsys.readouterr().err
    assert cli.main(["ledger-migrate", "--redis-url", "http://nope"]) == 2
