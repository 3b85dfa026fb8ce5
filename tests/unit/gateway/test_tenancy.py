"""API keys from headers, and key -> tenant resolution."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from proxy.gateway.tenancy import (
    api_key_from_headers,
    bearer_token,
    hash_api_key,
    hash_api_key_hex,
    proxy_key_headers,
    resolve_tenant,
)
from proxy.policy.model import CompressionPolicy, PolicySnapshot, Tenant
from proxy.policy.schema import load_directory


def tenant(name: str, *keys: str, anonymous: bool = False) -> Tenant:
    return Tenant(
        name=name,
        anonymous=anonymous,
        admin=False,
        key_digests=tuple(hash_api_key(k) for k in keys),
        policy_version="0" * 64,
    )


TEAM_A = tenant("a", "key-a1", "key-a2")
TEAM_B = tenant("b", "key-b")
ANON = tenant("default", anonymous=True)


def test_hash_matches_sha256_of_utf8() -> None:
    assert hash_api_key("sk-é") == hashlib.sha256("sk-é".encode()).digest()
    assert hash_api_key_hex("abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(hash_api_key("x")) == 32


def test_authenticate_by_key() -> None:
    snapshot = PolicySnapshot((TEAM_A, TEAM_B, ANON))
    assert snapshot.authenticate("key-a1") is TEAM_A
    assert snapshot.authenticate("key-a2") is TEAM_A
    assert snapshot.authenticate("key-b") is TEAM_B


@pytest.mark.parametrize("key", [None, "", "unknown", "key-a1 ", "KEY-A1"])
def test_unknown_or_missing_key_falls_back_to_anonymous(key: str | None) -> None:
    assert PolicySnapshot((TEAM_A, ANON, TEAM_B)).authenticate(key) is ANON
    assert PolicySnapshot((TEAM_A, TEAM_B)).authenticate(key) is None


def test_anonymous_tenant_with_keys_is_found_by_key_too() -> None:
    shared = tenant("shared", "key-s", anonymous=True)
    snapshot = PolicySnapshot((TEAM_A, shared))
    assert snapshot.authenticate("key-s") is shared
    assert snapshot.authenticate(None) is shared
    assert snapshot.anonymous is shared
    assert PolicySnapshot(()).authenticate("key-a1") is None


def test_snapshot_lookup_by_name() -> None:
    snapshot = PolicySnapshot((TEAM_A, TEAM_B))
    assert snapshot.tenant("b") is TEAM_B
    assert snapshot.tenant("zzz") is None
    assert snapshot.anonymous is None


def test_tenant_repr_hides_key_digests() -> None:
    assert hash_api_key("key-b").hex() not in repr(TEAM_B)
    assert "key_digests" not in repr(TEAM_B)


def test_tenant_default_policy() -> None:
    assert TEAM_A.policy_for("gpt-4o") == CompressionPolicy()


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("Bearer sk-1", "sk-1"),
        ("bearer sk-1", "sk-1"),
        ("BEARER   sk-1  ", "sk-1"),
        ("  Bearer sk-1", "sk-1"),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic dXNlcjpwdw==", None),
        ("sk-1", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(value: str | None, token: str | None) -> None:
    assert bearer_token(value) == token


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"authorization": "Bearer sk-1"}, "sk-1"),
        ({"Authorization": "Bearer sk-1"}, "sk-1"),
        ({"api-key": "sk-2"}, "sk-2"),
        ({"Api-Key": " sk-2 "}, "sk-2"),
        ({"authorization": "Bearer sk-1", "api-key": "sk-2"}, "sk-1"),
        ({"authorization": "Basic abc", "api-key": "sk-2"}, "sk-2"),
        ({"api-key": "  "}, None),
        ({"x-linguagate-key": "lg-1", "authorization": "Bearer sk-up"}, "lg-1"),
        ({"X-LinguaGate-Key": " lg-1 ", "api-key": "sk-2"}, "lg-1"),
        ({"x-linguagate-key": " ", "authorization": "Bearer sk-1"}, "sk-1"),
        ({"x-other": "sk-1"}, None),
        ({}, None),
    ],
)
def test_api_key_from_headers(headers: dict[str, str], key: str | None) -> None:
    assert api_key_from_headers(headers) == key


def test_api_key_from_starlette_headers() -> None:
    from starlette.datastructures import Headers

    headers = Headers(raw=[(b"authorization", b"Bearer sk-9")])
    assert api_key_from_headers(headers) == "sk-9"


def test_resolve_tenant_end_to_end(tmp_path: Path) -> None:
    digest = hash_api_key_hex("sk-team")
    (tmp_path / "team.toml").write_text(
        f'[tenant]\nname = "team"\napi_key_sha256 = ["{digest}"]\n', encoding="utf-8"
    )
    snapshot = load_directory(tmp_path)
    found = resolve_tenant(snapshot, {"authorization": "Bearer sk-team"})
    assert found is not None and found.name == "team"
    assert resolve_tenant(snapshot, {"authorization": "Bearer sk-other"}) is None
    assert resolve_tenant(snapshot, {}) is None


def test_proxy_key_headers_name_every_header_holding_a_proxy_key() -> None:
    snapshot = PolicySnapshot((TEAM_A, TEAM_B, ANON))
    headers = {"Authorization": "Bearer key-b", "api-key": "key-a1", "x-linguagate-key": "key-a2"}
    assert proxy_key_headers(snapshot, headers) == {
        b"authorization", b"api-key", b"x-linguagate-key"
    }
    # A team's own upstream key is no proxy key: bring-your-own-key mode forwards it.
    own = {"authorization": "Bearer sk-upstream", "api-key": "sk-azure"}
    assert proxy_key_headers(snapshot, own) == frozenset()
