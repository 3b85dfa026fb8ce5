"""``linguagate compressor-worker``: one process that owns the small LM (one per GPU).

Proxy workers and replicas started with ``--compressor-url`` send it their compressions
(``proxy.compression.remote``). Here every compression runs in its own thread of a bounded
executor and, on a GPU (or with ``--compress-batching on``), their model forwards share
batches in one engine thread: the more proxies send work, the fuller the batches.
A full queue answers 429 (the proxy forwards uncompressed: ``queue_full``).

Besides its default model (``--compressor-model``) a worker serves the models listed with
``--extra-model NAME`` (the strings tenant policies use in ``[compression] model = ...``),
each with its own executor and batcher, loaded in the background at start (one at a
time: transformers cannot load two models at once in one process). Requests
pick one with ``"model"`` (absent: the default); a name it was not started with is a 404
(``model_not_served``), never a load.

Endpoints: ``POST /v1/compress``, ``POST /v1/nll``, ``GET /v1/info[?model=NAME]``,
``GET /healthz``. No authentication: listen on loopback or a private network only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from proxy.compression.engine_metrics import CompressorCollector
from proxy.compression.remote import options_from_wire, result_to_wire
from proxy.compression.service import (
    CompressionEngine,
    CompressorService,
    batching_for,
    load_local_engine,
)
from proxy.core.executor import QueueFull
from proxy.core.settings import Settings

__all__ = ["add_subcommand", "create_worker_app"]

_log = logging.getLogger("linguagate.compressor")


def _error(
    status: int,
    message: str,
    kind: str,
    code: str | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse({**body, **(extra or {})}, status_code=status)


class _NotServed(LookupError):
    """A request named a model this worker was not started with."""


class _Models:
    """The models one worker serves: its default and the named extras (fixed at start)."""

    def __init__(
        self, default: CompressorService, default_name: str | None,
        extra: Mapping[str, CompressorService],
    ) -> None:
        self.default = default
        self.default_name = default_name
        self.others = {k: v for k, v in extra.items() if k != default_name}

    @property
    def all(self) -> tuple[CompressorService, ...]:
        return (self.default, *self.others.values())

    def pick(self, name: object) -> CompressorService:
        if name is None or name == self.default_name:
            return self.default
        if not isinstance(name, str):
            raise TypeError("model must be a string")
        found = self.others.get(name)
        if found is None:
            raise _NotServed(name)
        return found

    def name_of(self, service: CompressorService) -> str | None:
        if service is self.default:
            return self.default_name
        return next(n for n, s in self.others.items() if s is service)

    def not_served(self, name: str) -> JSONResponse:
        served = [n for n in (self.default_name, *self.others) if n is not None]
        return _error(404, f"this compressor worker does not serve model {name!r} "
                      f"(named models it serves: {served or 'none'}; "
                      f"start it with --extra-model {name})",
                      "invalid_request_error", "model_not_served")

    def by_name(self) -> dict[str, CompressorService]:
        return {self.default_name or "default": self.default, **self.others}

    def listing(self) -> list[dict[str, Any]]:
        out = []
        for svc in self.all:
            state, detail = svc.status
            eng = svc.engine
            out.append({"name": self.name_of(svc), "default": svc is self.default,
                        "state": state, "detail": detail,
                        "model_id": None if eng is None else eng.model_id})
        return out


async def _run(models: _Models, request: Request, call: str) -> Response:
    try:
        body: dict[str, Any] = json.loads(await request.body())
        svc = models.pick(body.get("model"))
    except _NotServed as exc:
        return models.not_served(str(exc))
    except (ValueError, TypeError, AttributeError) as exc:
        return _error(400, f"bad request: {type(exc).__name__}", "invalid_request_error")
    eng = svc.engine
    if eng is None:
        return _error(503, f"compressor {svc.status[0]}", "compressor_unavailable")
    try:
        if call == "nll":
            text = str(body["text"])
            nll = await svc.run(lambda: eng.mean_nll(text), deadline_s=None)
            return JSONResponse({"nll": nll})
        options = options_from_wire(body.get("options") or {})
        args = (body["instruction"], list(body["demonstrations"]), body["question"])
        rate = float(body["rate"])
        result = await svc.run(lambda: eng.compress(*args, rate, **options), deadline_s=None)
    except QueueFull:
        return _error(429, "compressor queue full", "queue_full")
    except (ValueError, KeyError, TypeError) as exc:
        return _error(400, f"bad request: {type(exc).__name__}", "invalid_request_error")
    except Exception as exc:  # the type only: messages may quote the prompt
        _log.error("compressor error: %s", type(exc).__name__)
        return _error(500, f"compressor error: {type(exc).__name__}", "compressor_error")
    return JSONResponse({"result": result_to_wire(result)})


def _info(models: _Models, request: Request) -> Response:
    name = request.query_params.get("model")
    try:
        svc = models.pick(name)
    except _NotServed:
        return models.not_served(str(name))
    eng = svc.engine
    state, detail = svc.status
    if eng is None:
        why = f": {detail}" if state == "down" and detail else ""
        # The listing still helps an operator while the model loads (or after it failed).
        return _error(503, f"compressor {state}{why}", "compressor_unavailable",
                      extra={"models": models.listing()})
    stats = svc.batch_stats
    return JSONResponse(
        {
            "name": models.name_of(svc),
            "model_id": eng.model_id,
            "device": str(getattr(getattr(eng, "device", None), "type", "cpu")),
            "status": detail,
            "batch": None if stats is None else stats.__dict__,
            "peak_gpu_bytes": svc.peak_gpu_bytes(),
            "models": models.listing(),
        }
    )


def create_worker_app(
    service: CompressorService,
    extra: Mapping[str, CompressorService] | None = None,
    *,
    default_name: str | None = None,
) -> Starlette:
    """The worker's HTTP app around (loaded or loading) services; closes them on shutdown.

    ``service`` answers requests without a ``"model"`` (or naming ``default_name``);
    ``extra`` maps the other model names it serves (the exact strings policies use) to
    their services. Any other name is a 404: the worker never loads a model a request names
    (it is unauthenticated, so a request must not make it read arbitrary paths)."""
    models = _Models(service, default_name, extra or {})

    async def compress(request: Request) -> Response:
        return await _run(models, request, "compress")

    async def nll(request: Request) -> Response:
        return await _run(models, request, "nll")

    async def info(request: Request) -> Response:
        return _info(models, request)

    registry = CollectorRegistry(auto_describe=True)  # per app: tests run several workers
    registry.register(CompressorCollector(models.by_name))

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": service.status[0],
                             "models": {n: s.status[0] for n, s in models.others.items()}})

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        for svc in models.all:
            svc.start()
        try:
            yield
        finally:
            for svc in models.all:
                svc.close()

    return Starlette(
        routes=[
            Route("/v1/compress", compress, methods=["POST"]),
            Route("/v1/nll", nll, methods=["POST"]),
            Route("/v1/info", info, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
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
    p.add_argument("--compressor-model", metavar="MODEL", help="as for serve (the default model)")
    p.add_argument(
        "--extra-model",
        metavar="MODEL",
        action="append",
        default=[],
        help="another model to serve, by the exact string policies name it with ([compression] "
        "model = ...: an HF id or a folder); repeatable. Requests naming any other model get 404",
    )
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
    p.add_argument("--cpu-precision", choices=["auto", "fp32", "bf16", "bf16-matmul"],
                   help="numerics on a CPU (LINGUAGATE_CPU_PRECISION, default auto)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
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
        cpu_precision=args.cpu_precision,
    )

    # One load at a time: transformers' from_pretrained is not thread-safe (its meta-device
    # initialisation is process-wide; measured: concurrent loads fail "Cannot copy out of meta
    # tensor"), and the extra models load in background threads beside the default.
    loading = threading.Lock()

    def load(own: Settings) -> CompressionEngine:
        with loading:
            return load_local_engine(own)

    def service_for(own: Settings, description: str) -> CompressorService:
        return CompressorService(
            lambda: load(own),
            max_workers=settings.compress_workers,
            max_pending=settings.compress_queue,
            description=description,
            batching=batching_for(settings),
        )

    service = service_for(settings, settings.compressor_model or "SmolLM2-135M-Instruct (packaged)")
    extra = {
        name: service_for(settings.with_overrides(compressor_model=name), name)
        for name in dict.fromkeys(args.extra_model)
        if name != settings.compressor_model
    }
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    app = create_worker_app(service, extra, default_name=settings.compressor_model)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
