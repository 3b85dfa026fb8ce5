"""The ASGI application factory. All state lives in the lifespan; nothing at module level.

```python
app = create_app(Settings(upstream_url="http://127.0.0.1:9000/v1"))
```

`services` may be a ready `Services` (the caller owns and closes it) or a factory like
`open_services` returning an async context manager (the lifespan enters and exits it, once
per worker process). The lifespan also runs the policy hot-reload loop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from proxy.core.errors import ProxyError, error_response
from proxy.core.settings import Settings
from proxy.core.tokens import encoding_for_model
from proxy.gateway.intake import request_id_for
from proxy.gateway.state import Services
from proxy.policy.store import PolicyStore
from proxy.routes import dispatch_v1, routes
from proxy.services import open_services

__all__ = ["ProxyApp", "ServicesFactory", "create_app", "create_app_from_env"]

ServicesFactory = Callable[[Settings], AbstractAsyncContextManager[Services]]

_log = logging.getLogger("linguagate.app")
_RELOAD_INTERVAL_S = 1.0


def create_app(
    settings: Settings,
    *,
    services: Services | ServicesFactory | None = None,
    reload_interval_s: float = _RELOAD_INTERVAL_S,
) -> ProxyApp:
    """Build the proxy app for `settings`; see the module docstring for `services`."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            if isinstance(services, Services):
                active = services
            else:
                active = await stack.enter_async_context((services or open_services)(settings))
            reloader = asyncio.create_task(_reload_policies(active.policies, reload_interval_s))
            stack.push_async_callback(_cancel, reloader)
            # Every request counts tokens; parsing an encoding's rank file takes 1-2 s, which
            # the first request per encoding would otherwise wait for. Off the event loop.
            warm = asyncio.create_task(asyncio.to_thread(_load_encodings))
            stack.push_async_callback(_settle, warm)
            # Everything built so far (modules, pools, a loaded model's many objects) lives as
            # long as the process: keep it out of the collector's full scans, whose pauses
            # would otherwise land on requests as tail latency.
            gc.collect()
            gc.freeze()
            _log.info(
                "linguagate ready: upstream=%s mode=%s policies=%s",
                settings.upstream_url,
                "org-key" if settings.upstream_api_key else "bring-your-own-key",
                settings.policies_dir,
            )
            yield {"services": active}

    return ProxyApp(
        routes=routes(), lifespan=lifespan, exception_handlers={Exception: _internal_error}
    )


class ProxyApp(Starlette):
    """Starlette, with `/v1/*` dispatched straight to its two handlers.

    The relay path skips Starlette's router and middleware stack (measured: ~25% of the
    app's own CPU per relayed request); every other path goes through Starlette as usual.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            scope["app"] = self
            await dispatch_v1(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


async def _internal_error(request: Request, exc: Exception) -> Response:
    """An unexpected error on a non-`/v1` route: the OpenAI envelope, not Starlette's text."""
    _log.error("unhandled error on %s: %s", request.url.path, type(exc).__name__)
    return error_response(ProxyError("Internal proxy error."), request_id_for(request))


def create_app_from_env() -> ProxyApp:
    """Factory for `uvicorn --factory` (and `serve --workers N`): settings from `LINGUAGATE_*`."""
    return create_app(Settings.from_env(os.environ))


async def _reload_policies(store: PolicyStore, interval_s: float) -> None:
    """Poll the policies folder; a changed folder is reloaded off the event loop."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(store.reload_if_changed)
        except Exception as exc:  # the loop must survive anything a bad file can cause
            _log.error("policy reload failed: %s", type(exc).__name__)


def _load_encodings() -> None:
    for model in (None, "gpt-4o"):  # cl100k_base and o200k_base, the two there are
        encoding_for_model(model)


async def _settle(task: asyncio.Task[None]) -> None:
    # A thread cannot be cancelled; shutdown waits the second or two it may still need.
    try:
        await task
    except Exception as exc:  # a missing encoding package fails requests later, clearly
        _log.warning("token encodings not preloaded: %s", type(exc).__name__)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
