"""Real servers on loopback ports for integration tests: any ASGI app in a uvicorn thread,
and the proxy itself (`run_proxy`) with given settings and policies folder.

Ports are chosen by the OS (bind to port 0) so parallel runs never collide; servers are
always shut down (context managers), and start-up waits on uvicorn's own `started` flag
instead of sleeping.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from proxy.app import ServicesFactory, create_app
from proxy.core.settings import Settings
from proxy.gateway.http_limits import HttpLimits, limited_protocol
from proxy.gateway.state import Services

__all__ = ["ProxyServer", "ServerThread", "run_proxy", "write_tenant"]

_START_TIMEOUT_S = 10.0


class ServerThread:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(
        self,
        app: Any,
        *,
        loop: str = "asyncio",
        name: str = "server",
        server_header: bool = True,
        http: Any = "httptools",
    ) -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            loop=loop,
            http=http,
            ws="none",
            lifespan="on",
            log_level="critical",
            access_log=False,
            timeout_graceful_shutdown=2,
            server_header=server_header,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=name, daemon=True)
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start (see the lifespan error above)")
            time.sleep(0.005)
        self.port = int(self._server.servers[0].sockets[0].getsockname()[1])

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> ServerThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class ProxyServer:
    url: str
    settings: Settings

    @property
    def base_url(self) -> str:
        """What an OpenAI SDK client uses as `base_url`."""
        return self.url + "/v1"


@contextmanager
def run_proxy(
    settings: Settings,
    *,
    services: Services | ServicesFactory | None = None,
    reload_interval_s: float = 0.1,
) -> Iterator[ProxyServer]:
    """The real proxy app under uvicorn (uvloop + httptools with the proxy's client limits, as
    `linguagate serve` runs it)."""
    app = create_app(settings, services=services, reload_interval_s=reload_interval_s)
    http = limited_protocol(HttpLimits.from_settings(settings))
    with ServerThread(app, loop="uvloop", name="proxy", server_header=False, http=http) as server:
        yield ProxyServer(server.url, settings)


def write_tenant(
    directory: Path, name: str, keys: list[str], *, anonymous: bool = False, mode: str = "off"
) -> Path:
    """Write a minimal policy file for tenant `name` accepting `keys`."""
    digests = ", ".join(f'"{hashlib.sha256(k.encode()).hexdigest()}"' for k in keys)
    path = directory / f"{name}.toml"
    path.write_text(
        f'[tenant]\nname = "{name}"\napi_key_sha256 = [{digests}]\n'
        f"anonymous = {str(anonymous).lower()}\n\n"
        f'[compression]\nmode = "{mode}"\n'
    )
    return path
