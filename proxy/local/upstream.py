"""The offline embedded upstream: OpenAI-shaped chat completions from a local model.

``create_local_upstream_app(model)`` serves ``POST /v1/chat/completions``
(streaming and not), ``GET /v1/models`` and ``GET /v1/models/{id}`` from a
``LocalChatModel``. ``start_local_upstream_server()`` runs that app on a
loopback port in a background thread, so ``linguagate serve --upstream local``
can point its ordinary upstream client at it: streaming, disconnects and errors
then take exactly the path they take with a remote provider.

Any requested ``model`` name is answered by the local model (so clients and
tenant policies written for e.g. ``gpt-4o-mini`` work offline); responses name
the model that actually answered. Generation runs in worker threads, at most
``max_concurrent`` at a time; further requests wait in a bounded queue, and a
full queue answers 429 with ``retry-after``.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from proxy.local.model import Generation, LocalChatModel, PromptTooLongError
from proxy.local.wire import BadRequestError, ChatRequest, parse_chat_request

__all__ = [
    "LocalUpstreamServer",
    "build_local_upstream",
    "create_local_upstream_app",
    "start_local_upstream_server",
]

_log = logging.getLogger("linguagate.local_upstream")
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# Checking for a vanished client costs a receive() per check; every few tokens is plenty.
_DISCONNECT_CHECK_EVERY = 4


class _QueueFullError(Exception):
    pass


class _Engine:
    """The model plus the admission bound; owned by one app."""

    def __init__(self, model: LocalChatModel, max_concurrent: int, max_waiting: int) -> None:
        self.model = model
        self.created = int(time.time())
        self._slots = anyio.Semaphore(max_concurrent)
        self._limit = max_concurrent + max_waiting
        self._admitted = 0

    def check_room(self) -> None:
        if self._admitted >= self._limit:
            raise _QueueFullError

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Wait for a generation slot; the caller generates while holding it."""
        self._admitted += 1
        try:
            async with self._slots:
                yield
        finally:
            self._admitted -= 1


@dataclass(frozen=True)
class _Reply:
    """Identity shared by every chunk of one completion."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, model: str) -> _Reply:
        return cls(f"chatcmpl-{secrets.token_hex(12)}", int(time.time()), model)


def create_local_upstream_app(
    generator: LocalChatModel,
    *,
    max_concurrent: int = 1,
    max_waiting: int = 64,
    default_temperature: float = 1.0,
) -> Starlette:
    """An ASGI app serving OpenAI-shaped chat completions from ``generator``.

    ``default_temperature`` applies when a request omits ``temperature``
    (OpenAI's default is 1.0).
    """
    engine = _Engine(generator, max_concurrent, max_waiting)

    async def chat_completions(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            chat = parse_chat_request(body, default_temperature=default_temperature)
            engine.check_room()
            generation = await anyio.to_thread.run_sync(
                generator.generate, chat.messages, chat.params
            )
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return _error(400, f"We could not parse the JSON body of your request: {exc}.")
        except BadRequestError as exc:
            return _error(400, exc.message, param=exc.param, code=exc.code)
        except PromptTooLongError as exc:
            return _error(400, str(exc), param="messages", code="context_length_exceeded")
        except _QueueFullError:
            return _error(
                429,
                "The local model is busy; retry shortly.",
                type_="rate_limit_error",
                code="queue_full",
                headers={"retry-after": "1"},
            )
        reply = _Reply.new(generator.name)
        if chat.stream:
            return StreamingResponse(
                _sse_events(engine, generation, chat, reply),
                media_type="text/event-stream",
                headers={**_SSE_HEADERS, "x-request-id": reply.id},
            )
        return await _complete(engine, request, generation, reply)

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [_model_card(engine)]})

    async def get_model(request: Request) -> Response:
        if request.path_params["model"] != generator.name:
            message = f"The model '{request.path_params['model']}' does not exist."
            return _error(404, message, param="model", code="model_not_found")
        return JSONResponse(_model_card(engine))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model": generator.name})

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error})


def build_local_upstream(
    model: str | None = None,
    *,
    device: str | None = None,
    max_concurrent: int = 1,
    default_temperature: float = 1.0,
) -> Starlette:
    """Load ``model`` (None = the packaged SmolLM2-135M-Instruct) and build its app.

    ``model`` is a Hugging Face id or a local folder of a chat model with a chat
    template; ``device`` None picks CUDA when available, else CPU.
    """
    _log.info("loading local upstream model %s", model or "SmolLM2-135M-Instruct (default)")
    started = time.perf_counter()
    chat_model = LocalChatModel.load(model, device)
    elapsed = time.perf_counter() - started
    _log.info("local upstream model %s loaded in %.1f s", chat_model.name, elapsed)
    return create_local_upstream_app(
        chat_model, max_concurrent=max_concurrent, default_temperature=default_temperature
    )


async def _complete(
    engine: _Engine, request: Request, generation: Generation, reply: _Reply
) -> Response:
    parts: list[str] = []
    try:
        async with engine.slot():
            async for piece in _pieces(generation):
                parts.append(piece)
                # Nobody is waiting for this answer any more: stop spending CPU on it.
                if len(parts) % _DISCONNECT_CHECK_EVERY == 0 and await request.is_disconnected():
                    return Response(status_code=499)
    except Exception as exc:  # any model failure becomes an OpenAI error
        _log.error("local generation failed: %s", type(exc).__name__)
        return _error(500, "The local model failed to generate a response.", type_="server_error")
    finally:
        generation.close()
    message = {"role": "assistant", "content": "".join(parts), "refusal": None}
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": generation.finish_reason,
    }
    body = {
        "id": reply.id,
        "object": "chat.completion",
        "created": reply.created,
        "model": reply.model,
        "choices": [choice],
        "usage": _usage(generation),
        "system_fingerprint": None,
    }
    return JSONResponse(body, headers={"x-request-id": reply.id})


async def _sse_events(
    engine: _Engine, generation: Generation, chat: ChatRequest, reply: _Reply
) -> AsyncIterator[bytes]:
    """The SSE body. A client disconnect cancels this generator; ``finally`` stops the model."""
    extra = {"usage": None} if chat.include_usage else {}
    try:
        yield _chunk(reply, {"role": "assistant", "content": "", "refusal": None}, None, extra)
        try:
            async with engine.slot():
                async for piece in _pieces(generation):
                    yield _chunk(reply, {"content": piece}, None, extra)
        except Exception as exc:  # reported in-stream, as OpenAI does
            _log.error("local generation failed mid-stream: %s", type(exc).__name__)
            error = {
                "message": "The local model failed while generating.",
                "type": "server_error",
                "param": None,
                "code": None,
            }
            yield _event({"error": error})
            yield b"data: [DONE]\n\n"
            return
        yield _chunk(reply, {}, generation.finish_reason, extra)
        if chat.include_usage:
            yield _event(
                {
                    "id": reply.id,
                    "object": "chat.completion.chunk",
                    "created": reply.created,
                    "model": reply.model,
                    "choices": [],
                    "usage": _usage(generation),
                    "system_fingerprint": None,
                }
            )
        yield b"data: [DONE]\n\n"
    finally:
        generation.close()


async def _pieces(generation: Generation) -> AsyncIterator[str]:
    """Advance the generation one token at a time in a worker thread.

    Each step waits for its thread to finish even when cancelled, so the
    generation is never closed while a thread is still inside it.
    """
    while True:
        piece = await anyio.to_thread.run_sync(_next_piece, generation)
        if piece is None:
            return
        yield piece


def _next_piece(generation: Generation) -> str | None:
    return next(generation, None)


def _chunk(
    reply: _Reply, delta: dict[str, Any], finish: str | None, extra: dict[str, Any]
) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return _event(
        {
            "id": reply.id,
            "object": "chat.completion.chunk",
            "created": reply.created,
            "model": reply.model,
            "choices": [choice],
            "system_fingerprint": None,
            **extra,
        }
    )


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


def _usage(generation: Generation) -> dict[str, int]:
    return {
        "prompt_tokens": generation.prompt_tokens,
        "completion_tokens": generation.completion_tokens,
        "total_tokens": generation.prompt_tokens + generation.completion_tokens,
    }


def _model_card(engine: _Engine) -> dict[str, Any]:
    return {
        "id": engine.model.name,
        "object": "model",
        "created": engine.created,
        "owned_by": "linguagate-local",
    }


def _error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class LocalUpstreamServer:
    """A local upstream served by uvicorn on a loopback port, in a background thread.

    The thread owns its own event loop, so the proxy's loop never runs model
    code or this server's I/O. Use as a context manager or call ``stop()``.
    """

    def __init__(
        self, app: Starlette, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(
            app, lifespan="off", log_level=log_level, access_log=False, timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name="linguagate-local-upstream",
            daemon=True,
        )

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:43121/v1``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"local upstream failed to start on {self.base_url}")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, end in-flight requests (cancelling their generation), join."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> LocalUpstreamServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_local_upstream_server(
    host: str = "127.0.0.1",
    port: int = 0,
    model: str | LocalChatModel | None = None,
    *,
    device: str | None = None,
    max_concurrent: int = 1,
    default_temperature: float = 1.0,
    log_level: str = "warning",
) -> LocalUpstreamServer:
    """Load the model, serve it on ``host:port`` (0 = any free port), return the running handle.

    Blocks until the server accepts connections. ``model`` is an HF id or folder,
    an already-built ``LocalChatModel``, or None for the packaged SmolLM2.
    """
    if isinstance(model, LocalChatModel):
        app = create_local_upstream_app(
            model, max_concurrent=max_concurrent, default_temperature=default_temperature
        )
    else:
        app = build_local_upstream(
            model,
            device=device,
            max_concurrent=max_concurrent,
            default_temperature=default_temperature,
        )
    server = LocalUpstreamServer(app, host, port, log_level=log_level)
    server.start()
    _log.info("local upstream serving %s", server.base_url)
    return server
