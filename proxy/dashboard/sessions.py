"""Dashboard sessions: an HMAC-signed, expiring token that names a tenant, never a key.

Token: ``v1.<payload>.<mac>``, both parts base64url. The payload holds the tenant name,
the expiry (unix seconds) and a *key tag*: an HMAC of the SHA-256 digest of the key used
to sign in. The tag lets every request check that this key still belongs to the tenant
(a policy reload that removes the key ends the session at once) without the token ever
holding the key or its digest. The MAC and the tag use keys derived from the one secret,
so a tag can never be replayed as a MAC.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["Session", "SessionCodec"]

_VERSION = "v1"


@dataclass(frozen=True)
class Session:
    """A verified session: who signed in, with which key (tag), until when."""

    tenant: str
    key_tag: str
    expires_at: int


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionCodec:
    """Issues and verifies session tokens with one secret and one lifetime."""

    def __init__(
        self, secret: bytes, ttl_s: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the dashboard secret must be at least 16 bytes")
        self.ttl_s = ttl_s
        self._mac_key = hmac.digest(secret, b"linguagate/dashboard/session-mac", "sha256")
        self._tag_key = hmac.digest(secret, b"linguagate/dashboard/key-tag", "sha256")
        self._clock = clock

    def key_tag(self, key_digest: bytes) -> str:
        """The tag of a key (given as its SHA-256 digest, as policies store it)."""
        return _b64(hmac.digest(self._tag_key, key_digest, "sha256")[:16])

    def issue(self, tenant: str, key_digest: bytes) -> str:
        """A token for ``tenant``, signed in with the key whose digest is ``key_digest``."""
        payload = {
            "t": tenant,
            "k": self.key_tag(key_digest),
            "exp": int(self._clock()) + self.ttl_s,
        }
        body = f"{_VERSION}.{_b64(json.dumps(payload, separators=(',', ':')).encode())}"
        return f"{body}.{self._mac(body)}"

    def read(self, token: str | None) -> Session | None:
        """The session in ``token``; None when malformed, tampered with, or expired."""
        if not token or len(token) > 4096:
            return None
        body, _, mac = token.rpartition(".")
        if not body.startswith(_VERSION + ".") or not hmac.compare_digest(
            mac.encode(), self._mac(body).encode()
        ):
            return None
        try:
            payload = json.loads(_unb64(body[len(_VERSION) + 1 :]))
            session = Session(str(payload["t"]), str(payload["k"]), int(payload["exp"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if session.expires_at <= self._clock():
            return None
        return session

    def key_still_valid(self, session: Session, digests: Iterable[bytes]) -> bool:
        """Whether the session's key is one of ``digests`` (the tenant's current keys)."""
        found = False
        for digest in digests:  # compare all: timing says nothing about which matched
            found |= hmac.compare_digest(self.key_tag(digest), session.key_tag)
        return found

    def _mac(self, body: str) -> str:
        return _b64(hmac.digest(self._mac_key, body.encode(), "sha256"))
