"""``linguagate compressor-worker``: one process that owns the small LM (one per GPU).

Proxy workers and replicas started with ``--compressor-url`` send it their compressions
(``proxy.compressor_remote``). Here every compression runs in its own thread of a bounded
executor and, on a GPU (or with ``--compress-batching on``), their model forwards share
batches in one engine thread: the more proxies send work, the fuller the batches.
A full queue answers 429 (the proxy forwards uncompressed: ``queue_full``).

Endpoints: ``POST /v1/compress``, ``POST /v1/nll``, ``GET /v1/info``, ``GET /healthz``.
No authentication: listen on loopback or a private network only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.compressor_remote import options_from_wire, result_to_wire
from proxy.compressor_service import CompressionEngine, CompressorService, batching_for
from proxy.executor import QueueFull
from proxy.settings import Settings

__all__ = ["add_subcommand", "create_worker_app"]

_log = logging.getLogger("linguagate.compressor")


def _error(status: int, message: str, kind: str) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=status)


def create_worker_app(service: CompressorService) -> Starlette:
    """The worker's HTTP app around a (loaded or loading) ``service``; closes it on shutdown."""

    def engine() -> CompressionEngine | None:
        return service.engine

    async def run(request: Request, call: str) -> Response:
        eng = engine()
        if eng is None:
            state, _ = service.status
            return _error(503, f"compressor {state}", "compressor_unavailable")
        try:
            body: dict[str, Any] = json.loads(await request.body())
            if call == "nll":
                text = str(body["text"])
                nll = await service.run(lambda: eng.mean_nll(text), deadline_s=None)
                return JSONResponse({"nll": nll})
            options = options_from_wire(body.get("options") or {})
            args = (body["instruction"], list(body["demonstrations"]), body["question"])
            rate = float(body["rate"])
            result = await service.run(
                lambda: eng.compress(*args, rate, **options), deadline_s=None
            )
        except QueueFull:
            return _error(429, "compressor queue full", "queue_full")
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f"bad request: {type(exc).__name__}", "invalid_request_error")
        except Exception as exc:  # the type only: messages may quote the prompt
            _log.error("compressor error: %s", type(exc).__name__)
            return _error(500, f"compressor error: {type(exc).__name__}", "compressor_error")
        return JSONResponse({"result": result_to_wire(result)})

    async def compress(request: Request) -> Response:
        return await run(request, "compress")

    async def nll(request: Request) -> Response:
        return await run(request, "nll")

    async def info(_: Request) -> Response:
        eng = engine()
        state, detail = service.status
        if eng is None:
            return _error(503, f"compressor {state}", "compressor_unavailable")
        device = str(getattr(getattr(eng, "device", None), "type", "cpu"))
        stats = service.batch_stats
        return JSONResponse(
            {
                "model_id": eng.model_id,
                "device": device,
                "status": detail,
                "batch": None if stats is None else stats.__dict__,
                "peak_gpu_bytes": service.peak_gpu_bytes(),
            }
        )

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": service.status[0]})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.close()

    return Starlette(
        routes=[
            Route("/v1/compress", compress, methods=["POST"]),
            Route("/v1/nll", nll, methods=["POST"]),
            Route("/v1/info", info, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def add_subcommand(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``compressor-worker`` on the ``linguagate`` subparsers."""
    p = sub.add_parser(
        "compressor-worker",
        help="serve the small LM to proxies (--compressor-url): one process per GPU",
        description="Load the compressor once and serve compressions over HTTP to any number of "
        "proxy workers/replicas started with --compressor-url. Concurrent compressions share "
        "batched forwards on a GPU. Unauthenticated: bind to loopback or a private network.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8181)
    p.add_argument("--compressor-model", metavar="MODEL", help="as for serve")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default auto)")
    p.add_argument(
        "--compress-queue",
        type=int,
        metavar="N",
        default=256,
        help="compressions in flight before answering 429 (default 256)",
    )
    p.add_argument("--compress-batching", choices=["auto", "on", "off"])
    p.add_argument("--compress-batch-tokens", type=int, metavar="N")
    p.add_argument("--compress-batch-wait-ms", type=float, metavar="MS")
    p.add_argument("--torch-threads", type=int, metavar="N")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import uvicorn

    settings = Settings.from_env(
        os.environ,
        compressor_model=args.compressor_model,
        device=args.device,
        compress_queue=args.compress_queue,
        compress_batching=args.compress_batching,
        compress_batch_tokens=args.compress_batch_tokens,
        compress_batch_wait_ms=args.compress_batch_wait_ms,
        torch_threads=args.torch_threads,
    )
    service = CompressorService(
        lambda: _load(settings),
        max_workers=settings.compress_workers,
        max_pending=settings.compress_queue,
        description=settings.compressor_model or "SmolLM2-135M-Instruct (packaged)",
        batching=batching_for(settings),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    uvicorn.run(create_worker_app(service), host=args.host, port=args.port, log_level="info")
    return 0


def _load(settings: Settings) -> CompressionEngine:
    import torch

    from proxy.compress import Compressor

    engine = Compressor(settings.compressor_model, settings.device)
    if engine.device.type == "cpu" and settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    return engine
