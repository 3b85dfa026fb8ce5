"""Real Redis topologies on loopback for failover tests: a Redis Cluster with replicas, a
primary + replica watched by three Sentinels, and a TLS server with an ACL user.

All are started by the tests from the apt ``redis-server`` (v7 runs all three: ``--cluster-
enabled``, ``--sentinel``, ``--tls-port``), with short failure-detection timeouts so that a
failover takes a few seconds. ``kill`` is SIGKILL: an outage, not a graceful shutdown.

``start_cluster(..., tls=True)`` and ``start_sentinel(..., tls=True)`` start the same
topologies speaking TLS only (``--port 0 --tls-port``, client certificates required): the
cluster bus and replication over TLS too, and the sentinels on TLS ports talking TLS to the
data nodes and to each other; their ``url`` is then the ``rediss+`` form with the CA and a
client certificate.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

__all__ = [
    "Certs",
    "ClusterTopology",
    "Node",
    "SentinelTopology",
    "TlsServer",
    "redis_has_tls",
    "start_cluster",
    "start_sentinel",
    "start_tls_server",
]

_START_TIMEOUT_S = 15.0


def _binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server/redis-cli are not installed (scripts/install installs them)")
    return binary


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(count: int, *, bus: bool = False) -> list[int]:
    """``count`` free loopback ports (and their cluster bus ports, port + 10000), all below
    Linux's ephemeral range (32768+), where a client socket could take one before the server
    binds it."""
    found: list[int] = []
    while len(found) < count:
        port = random.randint(20000, 22700)
        if port not in found and _port_free(port) and (not bus or _port_free(port + 10000)):
            found.append(port)
    return found


@dataclass(frozen=True)
class Certs:
    """The files ``make_certs`` writes: a CA, a server and a client certificate signed by it."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    def server_args(self) -> list[str]:
        """redis-server's TLS file options (the server certificate is also the one it shows
        as a client: cluster bus, replication, sentinel to data node)."""
        return ["--tls-cert-file", str(self.directory / "server.crt"),
                "--tls-key-file", str(self.directory / "server.key"),
                "--tls-ca-cert-file", str(self.ca)]

    def client_kwargs(self) -> dict[str, object]:
        """redis-py's options for a client presenting the client certificate."""
        return {"ssl": True, "ssl_ca_certs": str(self.ca),
                "ssl_certfile": str(self.directory / "client.crt"),
                "ssl_keyfile": str(self.directory / "client.key")}

    def url_query(self) -> str:
        """The same as a ``rediss`` URL's query string."""
        return "&".join(f"{k}={v}" for k, v in self.client_kwargs().items() if k != "ssl")

    def cli_args(self) -> list[str]:
        return ["--tls", "--cacert", str(self.ca), "--cert", str(self.directory / "client.crt"),
                "--key", str(self.directory / "client.key")]


def _certs(directory: Path) -> Certs:
    make_certs(directory)
    return Certs(directory)


@dataclass
class Node:
    """One redis-server (or sentinel) process; ``certs`` when it speaks TLS only."""

    port: int
    directory: Path
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None
    certs: Certs | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [_binary(), *self.args], cwd=self.directory,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def client(self, **kwargs: object) -> redis.Redis:
        tls = self.certs.client_kwargs() if self.certs is not None else {}
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1,
                           decode_responses=True, **tls, **kwargs)  # type: ignore[arg-type]

    def wait_ping(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with self.client() as c:
                    if c.ping():
                        return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis on {self.port} did not start")


def _listen_args(port: int, certs: Certs | None) -> list[str]:
    """With ``certs``: ``port`` is the TLS port, the plain one is off, replication over TLS."""
    if certs is None:
        return ["--port", str(port)]
    return ["--port", "0", "--tls-port", str(port), *certs.server_args(),
            "--tls-replication", "yes"]


def _server_args(port: int, *extra: str, certs: Certs | None = None) -> list[str]:
    # No diskless-sync delay: a replica must hold the data before a test kills its primary.
    return [*_listen_args(port, certs), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--loglevel", "warning", "--repl-diskless-sync-delay", "0",
            *extra]


@dataclass
class ClusterTopology:
    """``primaries`` primaries, one replica each, created with ``redis-cli --cluster create``."""

    nodes: list[Node]
    alive: list[Node] = field(default_factory=list)
    certs: Certs | None = None

    @property
    def url(self) -> str:
        seeds = ",".join(n.address for n in self.nodes[:3])
        if self.certs is None:
            return "redis+cluster://" + seeds
        return f"rediss+cluster://{seeds}?{self.certs.url_query()}"

    def roles(self) -> dict[str, str]:
        """address -> "master" / "slave" as a live node's CLUSTER NODES says (failed ones left
        out)."""
        for node in self.alive:
            try:
                with node.client() as c:
                    text = str(c.execute_command("CLUSTER", "NODES"))
            except redis.RedisError:
                continue
            roles = {}
            for line in text.splitlines():
                parts = line.split()
                flags = parts[2].split(",")
                if "fail" in flags or "fail?" in flags:
                    continue
                roles[parts[1].split("@")[0]] = "master" if "master" in flags else "slave"
            return roles
        return {}

    def replicas_in_sync(self, expected: int) -> bool:
        synced = 0
        for node in self.alive:
            try:
                with node.client() as c:
                    info = c.info("replication")
            except redis.RedisError:
                return False
            synced += info.get("role") == "slave" and info.get("master_link_status") == "up" \
                and not info.get("master_sync_in_progress")
        return synced >= expected

    def owner_of(self, key: str) -> Node:
        """The primary serving ``key``'s slot now."""
        with self.alive[0].client() as c:
            slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    port = int(primary[1])
                    return next(n for n in self.nodes if n.port == port)
        raise RuntimeError("slot not covered")

    def kill(self, node: Node) -> None:
        node.kill()
        self.alive.remove(node)

    def wait_state_ok(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                states = []
                for node in self.alive:
                    with node.client() as c:
                        info = str(c.execute_command("CLUSTER", "INFO"))
                        states.append("cluster_state:ok" in info)
                if all(states):
                    return
            except redis.RedisError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise RuntimeError(f"the cluster did not reach cluster_state:ok ({last})")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def start_cluster(directory: Path, *, primaries: int = 3, replicas: int = 1,
                  node_timeout_ms: int = 1000, tls: bool = False) -> ClusterTopology:
    """A cluster of ``primaries`` primaries with ``replicas`` replicas each; ``stop()`` after.
    ``tls``: TLS-only nodes, the cluster bus over TLS too (``--tls-cluster``)."""
    certs = _certs(directory / "certs") if tls else None
    ports = _ports((1 + replicas) * primaries, bus=True)
    nodes = [
        Node(port, directory / f"node-{port}", _server_args(
            port, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(node_timeout_ms),
            # Replicas may always take over: the test kills a primary they just synced from.
            "--cluster-replica-validity-factor", "0",
            "--cluster-require-full-coverage", "no",
            *(["--tls-cluster", "yes"] if tls else []), certs=certs), certs=certs)
        for port in ports
    ]
    topology = ClusterTopology(nodes, list(nodes), certs)
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ping()
        subprocess.run(
            ["redis-cli", *(certs.cli_args() if certs else []),
             "--cluster", "create", *(n.address for n in nodes),
             "--cluster-replicas", str(replicas), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60,
        )
        topology.wait_state_ok()
        # Replicas must have finished their first sync before a primary is killed: one
        # promoted before that has none of the data (the role shows before the sync ends).
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not topology.replicas_in_sync(replicas * primaries):
            if time.monotonic() > deadline:
                raise RuntimeError("replicas did not sync")
            time.sleep(0.1)
    except BaseException:
        topology.stop()
        raise
    return topology


@dataclass
class SentinelTopology:
    primary: Node
    replica: Node
    sentinels: list[Node]
    service: str = "lgmain"
    certs: Certs | None = None

    @property
    def url(self) -> str:
        hosts = ",".join(s.address for s in self.sentinels)
        if self.certs is None:
            return f"redis+sentinel://{hosts}/{self.service}"
        return f"rediss+sentinel://{hosts}/{self.service}?{self.certs.url_query()}"

    def primary_address(self) -> str | None:
        """The primary's address as the first answering sentinel has it."""
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as c:
                    host, port = c.execute_command(
                        "SENTINEL", "get-master-addr-by-name", self.service)
                    return f"{host}:{port}"
            except (redis.RedisError, TypeError, ValueError):
                continue
        return None

    def stop(self) -> None:
        for node in (*self.sentinels, self.primary, self.replica):
            node.kill()


def start_sentinel(directory: Path, *, down_after_ms: int = 1000,
                   tls: bool = False) -> SentinelTopology:
    """A primary, one replica and three sentinels (quorum 2); call ``stop()`` after.
    ``tls``: everything on TLS ports only; the replica syncs and the sentinels talk to the
    data nodes and to each other over TLS (``tls-replication yes``)."""
    certs = _certs(directory / "certs") if tls else None
    p, r, *s = _ports(5)
    primary = Node(p, directory / "primary", _server_args(p, certs=certs), certs=certs)
    replica = Node(r, directory / "replica", _server_args(
        r, "--replicaof", "127.0.0.1", str(p), certs=certs), certs=certs)
    sentinels = []
    for port in s:
        folder = directory / f"sentinel-{port}"
        folder.mkdir(parents=True)
        # A data node's TLS options as sentinel.conf lines ("--tls-cert-file F" -> "tls-cert-
        # file F"); tls-replication: TLS to the data nodes and to the other sentinels too.
        args = _listen_args(port, certs)
        listen = [f"{key[2:]} {value}" for key, value in zip(args[::2], args[1::2], strict=True)]
        (folder / "sentinel.conf").write_text(
            "\n".join(listen) + "\nbind 127.0.0.1\ndaemonize no\nloglevel warning\n"
            f"sentinel monitor lgmain 127.0.0.1 {p} 2\n"
            f"sentinel down-after-milliseconds lgmain {down_after_ms}\n"
            "sentinel failover-timeout lgmain 10000\n"
            "sentinel parallel-syncs lgmain 1\n"
        )
        sentinels.append(Node(port, folder, ["sentinel.conf", "--sentinel"], certs=certs))
    topology = SentinelTopology(primary, replica, sentinels, certs=certs)
    try:
        for node in (primary, replica):
            node.start()
        for node in (primary, replica):
            node.wait_ping()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:  # the replica in sync first: the sentinels' first INFO then lists it
            with primary.client() as c:
                replica_info = c.info("replication").get("slave0")
            if isinstance(replica_info, dict) and replica_info.get("state") == "online":
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync")
            time.sleep(0.05)
        for node in sentinels:
            node.start()
        for node in sentinels:
            node.wait_ping()
        while True:  # every sentinel knowing the others and the replica
            known = []
            for sentinel in sentinels:
                with sentinel.client() as c:
                    info = c.execute_command("SENTINEL", "MASTER", "lgmain")
                    fields = info if isinstance(info, dict) else dict(
                        zip(info[::2], info[1::2], strict=True))
                    known.append(int(fields["num-other-sentinels"]) == 2
                                 and int(fields["num-slaves"]) == 1)
            if all(known):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("sentinels did not discover each other and the replica")
            time.sleep(0.1)
    except BaseException:
        topology.stop()
        raise
    return topology


def redis_has_tls() -> bool:
    """Whether the installed redis-server was built with TLS (Debian's is)."""
    # A build without TLS refuses the option; one with TLS fails on the missing files.
    missing = "/nonexistent/linguagate"
    out = subprocess.run([_binary(), "--port", "0", "--tls-port", "1", "--tls-cert-file", missing,
                          "--tls-key-file", missing, "--tls-ca-cert-file", missing],
                         capture_output=True, text=True, timeout=10)
    text = (out.stdout + out.stderr).lower()
    return "not supported" not in text and "bad directive" not in text


@dataclass
class TlsServer:
    node: Node
    ca: Path
    client_cert: Path
    client_key: Path
    user: str = "app"
    password: str = "s3cret-pw"

    def url(self, **options: str) -> str:
        query = {"ssl_ca_certs": str(self.ca), "ssl_certfile": str(self.client_cert),
                 "ssl_keyfile": str(self.client_key), **options}
        qs = "&".join(f"{k}={v}" for k, v in query.items())
        return f"rediss://{self.user}:{self.password}@127.0.0.1:{self.node.port}/0?{qs}"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(directory: Path, names: Sequence[str] = ("server", "client")) -> None:
    """A CA, and a certificate for each name signed by it (``127.0.0.1`` as the SAN)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=linguagate-test-ca", "-keyout", "ca.key", "-out", "ca.pem", cwd=directory)
    for name in names:
        (directory / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=directory)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                 "-out", f"{name}.crt", cwd=directory)


def start_tls_server(directory: Path) -> TlsServer:
    """redis-server on a TLS port only, client certificates required, the default user off
    and one ACL user; call ``node.kill()`` after."""
    certs = _certs(directory / "certs")
    (port,) = _ports(1)
    server = TlsServer(Node(port, directory / "tls", []), certs.ca,
                       certs.directory / "client.crt", certs.directory / "client.key")
    server.node.args = _server_args(
        port, "--tls-auth-clients", "yes",
        "--user", "default", "off",
        "--user", server.user, "on", f">{server.password}", "~*", "&*", "+@all",
        certs=certs,
    )
    server.node.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        try:
            with redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(server.ca),
                             ssl_certfile=str(server.client_cert),
                             ssl_keyfile=str(server.client_key), username=server.user,
                             password=server.password, socket_timeout=1) as c:
                c.ping()
                return server
        except (redis.RedisError, OSError):
            if time.monotonic() > deadline or server.node.proc is None or \
                    server.node.proc.poll() is not None:
                server.node.kill()
                raise RuntimeError("the TLS redis-server did not start") from None
            time.sleep(0.05)
