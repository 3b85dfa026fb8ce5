"""Where the shared state lives: one URL names a Redis server, a Sentinel-managed primary or a
Redis Cluster; ``proxy.store.clients`` builds redis-py's own client for it
(``redis.asyncio.sentinel.Sentinel``, ``redis.asyncio.cluster.RedisCluster``).

| form | client |
|---|---|
| ``redis://[user:password@]host:port[/db]`` | ``redis.asyncio.Redis`` |
| ``rediss://...`` | the same over TLS |
| ``redis+sentinel://[user:password@]host:port,host:port/service[/db]`` | ``Sentinel.master_for`` |
| ``rediss+sentinel://...`` | the same, TLS to the sentinels and the data nodes |
| ``redis+cluster://[user:password@]host:port,host:port`` | ``RedisCluster`` |
| ``rediss+cluster://...`` | the same over TLS |

``user:password`` are the data nodes' ACL credentials (percent-encode reserved characters).
Query options (anything else is refused, so a typo never silently drops TLS verification):

* TLS (``rediss`` forms only): ``ssl_ca_certs`` (CA bundle file), ``ssl_ca_path`` (folder),
  ``ssl_certfile`` + ``ssl_keyfile`` (client certificate), ``ssl_cert_reqs``
  (``required``, the default; ``optional``; ``none``), ``ssl_check_hostname``
  (``true`` unless ``ssl_cert_reqs=none``);
* Sentinel only: ``sentinel_username``, ``sentinel_password`` (the sentinels' own ACL);
* ``db`` (not with a cluster, which has only db 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["RedisTarget", "parse_redis_url", "redact_redis_url"]

Mode = Literal["standalone", "sentinel", "cluster"]
_SCHEMES: Mapping[str, tuple[Mode, bool]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
_TLS_OPTIONS = frozenset(
    {"ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs",
     "ssl_check_hostname"}
)
_SENTINEL_OPTIONS = frozenset({"sentinel_username", "sentinel_password"})
_CERT_REQS = ("required", "optional", "none")
_DEFAULT_PORT = {"standalone": 6379, "sentinel": 26379, "cluster": 6379}


@dataclass(frozen=True)
class RedisTarget:
    """A parsed shared-state URL: what to connect to and how; never holds a client."""

    mode: Mode
    nodes: tuple[tuple[str, int], ...]  # the server, the sentinels or the cluster seed nodes
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    service: str | None = None  # the Sentinel service (primary) name
    tls_options: Mapping[str, Any] = field(default_factory=dict)
    sentinel_auth: Mapping[str, str] = field(default_factory=dict, repr=False)

    def connection_kwargs(self) -> dict[str, Any]:
        """Credentials and TLS knobs every data-node connection takes."""
        kwargs: dict[str, Any] = dict(self.tls_options)
        if self.username is not None:
            kwargs["username"] = self.username
        if self.password is not None:
            kwargs["password"] = self.password
        return kwargs


def _split_nodes(netloc: str, mode: Mode) -> tuple[tuple[str, int], ...]:
    hosts = netloc.rpartition("@")[2]
    nodes = []
    for part in hosts.split(","):
        part = part.strip()
        if not part:
            continue
        if part.startswith("["):  # [ipv6]:port
            host, _, port = part[1:].partition("]")
            port = port.lstrip(":")
        else:
            host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
        try:
            nodes.append((host, int(port) if port else _DEFAULT_PORT[mode]))
        except ValueError:
            raise ValueError(f"redis URL: bad port in {part!r}") from None
    if not nodes or any(not host for host, _ in nodes):
        raise ValueError("redis URL: no host")
    if mode == "standalone" and len(nodes) > 1:
        raise ValueError("redis URL: several hosts need redis+sentinel:// or redis+cluster://")
    return tuple(nodes)


def _credentials(netloc: str) -> tuple[str | None, str | None]:
    userinfo, at, _ = netloc.rpartition("@")
    if not at:
        return None, None
    user, colon, password = userinfo.partition(":")
    if not colon:  # "redis://secret@host": redis-cli's habit, a password with no user
        return None, unquote(user)
    return unquote(user) or None, unquote(password)


def _tls_options(options: dict[str, str], tls: bool) -> dict[str, Any]:
    given = {k: v for k, v in options.items() if k in _TLS_OPTIONS}
    if given and not tls:
        raise ValueError(f"redis URL: {', '.join(sorted(given))} need a rediss:// form (TLS)")
    if not tls:
        return {}
    reqs = given.pop("ssl_cert_reqs", "required").lower()
    if reqs not in _CERT_REQS:
        raise ValueError(f"redis URL: ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}")
    check = given.pop("ssl_check_hostname", "false" if reqs == "none" else "true").lower()
    if check not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError("redis URL: ssl_check_hostname must be true or false")
    return {"ssl_cert_reqs": reqs, "ssl_check_hostname": check in ("true", "1", "yes"), **given}


def parse_redis_url(url: str) -> RedisTarget:
    """Parse any form in the module docstring; ``ValueError`` says what is wrong (never
    echoing the password)."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ValueError(
            f"redis URL must start with one of {', '.join(s + '://' for s in _SCHEMES)}"
        )
    mode, tls = _SCHEMES[scheme.lower()]
    parts = urlsplit("x://" + url.partition("://")[2])  # urlsplit rejects "host:1,host:2" ports
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    allowed = _TLS_OPTIONS | {"db"} | (_SENTINEL_OPTIONS if mode == "sentinel" else set())
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"redis URL: unknown option(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(allowed))}")
    path = [unquote(p) for p in parts.path.split("/") if p]
    service = None
    if mode == "sentinel":
        if not path:
            raise ValueError("redis+sentinel URL needs the service name: .../mymaster")
        service, path = path[0], path[1:]
    db_text = options.get("db") or (path[0] if path else "0")
    if len(path) > 1:
        raise ValueError("redis URL: too many path segments")
    try:
        db = int(db_text)
    except ValueError:
        raise ValueError(f"redis URL: db must be a number, not {db_text!r}") from None
    if mode == "cluster" and db != 0:
        raise ValueError("redis+cluster URL: a cluster has only db 0")
    username, password = _credentials(parts.netloc)
    return RedisTarget(
        mode=mode,
        nodes=_split_nodes(parts.netloc, mode),
        tls=tls,
        username=username,
        password=password,
        db=db,
        service=service,
        tls_options=_tls_options(options, tls),
        sentinel_auth={k[len("sentinel_"):]: v for k, v in options.items()
                       if k in _SENTINEL_OPTIONS},
    )


def redact_redis_url(url: str) -> str:
    """The URL with its password (and a sentinel password) replaced by ``***``, for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if colon else f"***@{hosts}"
    if "sentinel_password=" in tail:
        query = tail.partition("?")
        pairs = [("sentinel_password", "***") if k == "sentinel_password" else (k, v)
                 for k, v in parse_qsl(query[2], keep_blank_values=True)]
        tail = query[0] + "?" + "&".join(f"{k}={v}" for k, v in pairs)
    return f"{scheme}://{netloc}{slash}{tail}"
