"""Every shared-state URL form parses to the client redis-py builds for it; bad URLs say why."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection

from proxy.store.clients import SentinelRedis, SpreadCluster
from proxy.store.redis import connect_redis, tenant_namespace, tenant_slot_namespace
from proxy.store.topology import parse_redis_url, redact_redis_url


def test_plain_url_with_acl_user_and_db() -> None:
    target = parse_redis_url("redis://app:p%40ss@cache.internal:6380/2")
    assert target.mode == "standalone" and not target.tls
    assert target.nodes == (("cache.internal", 6380),) and target.db == 2
    assert (target.username, target.password) == ("app", "p@ss")
    assert "p@ss" not in repr(target)


def test_password_only_and_default_port() -> None:
    target = parse_redis_url("redis://secret@localhost")
    assert (target.username, target.password, target.nodes) == (
        None, "secret", (("localhost", 6379),))


def test_tls_options() -> None:
    target = parse_redis_url(
        "rediss://u:p@h:6380/0?ssl_ca_certs=/ca.pem&ssl_certfile=/c.crt&ssl_keyfile=/c.key"
    )
    assert target.tls and target.tls_options == {
        "ssl_cert_reqs": "required", "ssl_check_hostname": True,
        "ssl_ca_certs": "/ca.pem", "ssl_certfile": "/c.crt", "ssl_keyfile": "/c.key",
    }
    lax = parse_redis_url("rediss://h?ssl_cert_reqs=none")
    assert lax.tls_options == {"ssl_cert_reqs": "none", "ssl_check_hostname": False}


def test_sentinel_and_cluster_forms() -> None:
    sentinel = parse_redis_url(
        "redis+sentinel://app:pw@s1:26379,s2:26380,s3/mymaster/1?sentinel_password=sp")
    assert sentinel.mode == "sentinel" and sentinel.service == "mymaster" and sentinel.db == 1
    assert sentinel.nodes == (("s1", 26379), ("s2", 26380), ("s3", 26379))
    assert sentinel.sentinel_auth == {"password": "sp"} and sentinel.password == "pw"
    cluster = parse_redis_url("rediss+cluster://n1:7000,[::1]:7001?ssl_cert_reqs=optional")
    assert cluster.mode == "cluster" and cluster.tls
    assert cluster.nodes == (("n1", 7000), ("::1", 7001))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h", "must start with"),
        ("redis://h?ssl_ca_certs=/x", "need a rediss://"),
        ("rediss://h?ssl_verify=none", "unknown option"),
        ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs"),
        ("redis://a:1,b:2", "several hosts"),
        ("redis+sentinel://s1:26379", "service name"),
        ("redis+cluster://n1:7000/3", "only db 0"),
        ("redis://h:port", "bad port"),
        ("redis://h/x", "db must be a number"),
    ],
)
def test_bad_urls_say_why(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_redis_url(url)


def test_redaction_hides_passwords() -> None:
    assert redact_redis_url("redis://u:secret@h:1/0") == "redis://u:***@h:1/0"
    assert "sp" not in redact_redis_url("redis+sentinel://s:1/m?sentinel_password=sp")


async def test_redis_py_clients_per_form() -> None:
    plain = connect_redis("rediss://u:p@h:6380/0?ssl_cert_reqs=none")
    assert type(plain) is aioredis.Redis
    assert plain.connection_pool.connection_class is SSLConnection
    assert plain.connection_pool.connection_kwargs["username"] == "u"
    sentinel = connect_redis("redis+sentinel://s1:26379,s2:26379/mymaster")
    assert isinstance(sentinel, SentinelRedis) and sentinel.service == "mymaster"
    assert sentinel.manager is not None and len(sentinel.manager.sentinels) == 2
    cluster = connect_redis("redis+cluster://n1:7000,n2:7001")
    assert isinstance(cluster, SpreadCluster)
    for client in (plain, sentinel, cluster):
        await client.aclose()


async def test_tls_options_reach_cluster_nodes_and_sentinels() -> None:
    """``rediss+cluster``: every node (seeds and those found later share these kwargs) gets
    TLS and the client certificate; ``rediss+sentinel``: the sentinels and the primary."""
    tls = "?ssl_ca_certs=/ca.pem&ssl_certfile=/c.crt&ssl_keyfile=/c.key"
    expected = {"ssl_ca_certs": "/ca.pem", "ssl_certfile": "/c.crt", "ssl_keyfile": "/c.key",
                "ssl_cert_reqs": "required", "ssl_check_hostname": True}
    cluster = connect_redis("rediss+cluster://app:pw@n1:7000,n2:7001" + tls)
    assert isinstance(cluster, SpreadCluster)
    assert cluster.connection_kwargs["connection_class"] is SSLConnection
    assert expected.items() <= cluster.connection_kwargs.items()
    assert cluster.connection_kwargs["username"] == "app"
    for node in cluster.nodes_manager.startup_nodes.values():
        assert expected.items() <= node.connection_kwargs.items()
    sentinel = connect_redis("rediss+sentinel://app:pw@s1:26379,s2:26380/mymaster"
                             + tls + "&sentinel_password=sp")
    assert isinstance(sentinel, SentinelRedis) and sentinel.manager is not None
    pool = sentinel.connection_pool
    assert issubclass(pool.connection_class, SSLConnection)
    assert expected.items() <= pool.connection_kwargs.items()
    assert pool.connection_kwargs["username"] == "app"
    for client in sentinel.manager.sentinels:
        kwargs = client.connection_pool.connection_kwargs
        assert client.connection_pool.connection_class is SSLConnection
        assert expected.items() <= kwargs.items() and kwargs["password"] == "sp"
    for shared in (cluster, sentinel):
        await shared.aclose()


def test_key_families_and_hash_tags() -> None:
    spread, tagged = tenant_namespace("team-a"), tenant_slot_namespace("team-a")
    assert "{" not in spread and tagged == spread.replace(spread[6:], "{" + spread[6:] + "}")


def test_report_refuses_a_bad_url_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.cli.commands import main

    assert main(["report", "--redis-url", "rediss://h?ssl_verify=0"]) == 2
    assert "unknown option(s) ssl_verify" in capsys.readouterr().err


def test_serve_refuses_a_bad_url_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    from proxy.cli.commands import main

    argv = ["serve", "--upstream", "http://127.0.0.1:9/v1", "--redis-url", "redis://a:1,b:2"]
    assert main(argv) == 2
    assert "several hosts need redis+sentinel:// or redis+cluster://" in capsys.readouterr().err


def test_settings_never_show_the_redis_password() -> None:
    from proxy.core.settings import Settings

    assert "s3cret" not in repr(Settings(redis_url="rediss://app:s3cret@h:6380/0"))
