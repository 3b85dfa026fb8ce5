"""Dashboard session tokens: signed, expiring, naming a tenant and never the key."""

from __future__ import annotations

import base64
import json

import pytest

from proxy.dashboard.sessions import SessionCodec
from proxy.policy.model import hash_api_key

SECRET = b"s" * 32
KEY = "sk-lg-team-a-secret"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def codec(secret: bytes = SECRET, ttl_s: int = 3600, clock: Clock | None = None) -> SessionCodec:
    return SessionCodec(secret, ttl_s, clock=clock or Clock())


def test_round_trip_names_the_tenant_and_never_the_key() -> None:
    clock = Clock()
    token = codec(clock=clock).issue("team-a", hash_api_key(KEY))
    session = codec(clock=clock).read(token)  # another codec with the same secret: a worker
    assert session is not None
    assert (session.tenant, session.expires_at) == ("team-a", int(clock.now) + 3600)
    assert KEY not in token
    assert hash_api_key(KEY).hex() not in token
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert set(payload) == {"t", "k", "exp"}


def test_tampered_payload_or_mac_is_rejected() -> None:
    c = codec()
    version, payload, mac = c.issue("team-a", hash_api_key(KEY)).split(".")
    forged = (
        base64.urlsafe_b64encode(json.dumps({"t": "ops", "k": "x", "exp": 9_999_999_999}).encode())
        .rstrip(b"=")
        .decode()
    )
    assert c.read(f"{version}.{forged}.{mac}") is None
    flipped = mac[:-1] + ("A" if mac[-1] != "A" else "B")
    assert c.read(f"{version}.{payload}.{flipped}") is None
    assert c.read(f"v2.{payload}.{mac}") is None
    for junk in ("", "abc", "v1..", "v1.%%%.x", None, "v1." + "a" * 5000):
        assert c.read(junk) is None


def test_wrong_secret_is_rejected() -> None:
    token = codec().issue("team-a", hash_api_key(KEY))
    assert codec(b"another secret of 32 bytes......").read(token) is None


def test_expiry() -> None:
    clock = Clock()
    c = codec(ttl_s=60, clock=clock)
    token = c.issue("team-a", hash_api_key(KEY))
    clock.now += 59
    assert c.read(token) is not None
    clock.now += 1
    assert c.read(token) is None


def test_key_tag_ties_the_session_to_the_key_it_signed_in_with() -> None:
    c = codec()
    session = c.read(c.issue("team-a", hash_api_key(KEY)))
    assert session is not None
    assert c.key_still_valid(session, [hash_api_key("other"), hash_api_key(KEY)])
    assert not c.key_still_valid(session, [hash_api_key("other")])
    assert not c.key_still_valid(session, [])


def test_short_secret_refused() -> None:
    with pytest.raises(ValueError):
        SessionCodec(b"short", 60)
