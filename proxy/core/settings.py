"""Process configuration: one frozen value built from flags and `LINGUAGATE_*` variables.

Precedence is command-line flag > environment variable > default. `Settings.to_env()` is
the inverse of `Settings.from_env()`, which is how `serve --workers N` hands the settings
to each worker process (every worker builds its own app from its environment).

| field              | flag               | environment variable          | default          |
|--------------------|--------------------|-------------------------------|------------------|
| host               | --host             | LINGUAGATE_HOST               | 127.0.0.1        |
| port               | --port             | LINGUAGATE_PORT               | 8080             |
| upstream_url       | --upstream         | LINGUAGATE_UPSTREAM_URL       | OpenAI's /v1     |
| upstream_api_key   | (none: secret)     | LINGUAGATE_UPSTREAM_API_KEY   | unset: BYO-key   |
| policies_dir       | --policies         | LINGUAGATE_POLICIES           | ./policies       |
| redis_url          | --redis-url        | LINGUAGATE_REDIS_URL          | unset            |
| workers            | --workers          | LINGUAGATE_WORKERS            | 1                |
| max_body_bytes     | --max-body-bytes   | LINGUAGATE_MAX_BODY_BYTES     | 33554432 (32 MiB)|
| log_level          | --log-level        | LINGUAGATE_LOG_LEVEL          | info             |
| connect_timeout_s  | --connect-timeout  | LINGUAGATE_CONNECT_TIMEOUT    | 10               |
| read_timeout_s     | --read-timeout     | LINGUAGATE_READ_TIMEOUT       | 600              |
| max_connections    | --max-connections  | LINGUAGATE_MAX_CONNECTIONS    | 512              |
| max_header_bytes   | (none)             | LINGUAGATE_MAX_HEADER_BYTES   | 65536 (64 KiB)   |
| max_headers        | (none)             | LINGUAGATE_MAX_HEADERS        | 100              |
| header_timeout_s   | (none)             | LINGUAGATE_HEADER_TIMEOUT     | 10               |
| body_timeout_s     | (none)             | LINGUAGATE_BODY_TIMEOUT       | 30               |
| max_concurrency    | (none)             | LINGUAGATE_MAX_CONCURRENCY    | 1024 per worker  |
| upstream_transport | --upstream-transport | LINGUAGATE_UPSTREAM_TRANSPORT | wire (or aiohttp) |
| compressor_model   | --compressor-model | LINGUAGATE_COMPRESSOR_MODEL   | packaged SmolLM2 |
| compressor_url     | --compressor-url   | LINGUAGATE_COMPRESSOR_URL     | unset: in-process |
| device             | --device           | LINGUAGATE_DEVICE             | auto (cuda, cpu) |
| compress_workers   | --compress-workers | LINGUAGATE_COMPRESS_WORKERS   | 1                |
| compress_queue     | --compress-queue   | LINGUAGATE_COMPRESS_QUEUE     | 32               |
| torch_threads      | --torch-threads    | LINGUAGATE_TORCH_THREADS      | 1 (0: torch's)   |
| cpu_precision      | --cpu-precision    | LINGUAGATE_CPU_PRECISION      | auto (bf16 if native) |
| compress_batching  | --compress-batching | LINGUAGATE_COMPRESS_BATCHING | auto (GPU: on)   |
| compress_batch_tokens | --compress-batch-tokens | LINGUAGATE_COMPRESS_BATCH_TOKENS | 32768 |
| compress_batch_wait_ms | --compress-batch-wait-ms | LINGUAGATE_COMPRESS_BATCH_WAIT_MS | 2 |
| compress_batch_queue | --compress-batch-queue | LINGUAGATE_COMPRESS_BATCH_QUEUE | 4096 |
| cache_ttl_s        | --cache-ttl        | LINGUAGATE_CACHE_TTL          | 604800 (7 days)  |
| dashboard_secret   | (none: secret)     | LINGUAGATE_DASHBOARD_SECRET   | random per serve |
| dashboard_session_ttl_s | (none)        | LINGUAGATE_DASHBOARD_SESSION_TTL | 28800 (8 h)   |
| capture_dir        | --capture-dir      | LINGUAGATE_CAPTURE_DIR        | ./captures       |
| prices_path        | (none)             | LINGUAGATE_PRICES             | built-in list    |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = ["Settings", "SettingsError"]

_PREFIX = "LINGUAGATE_"
_TRANSPORTS = ("wire", "aiohttp")
_BATCHING = ("auto", "on", "off")
# proxy.compress.numerics.CPU_PRECISIONS (not imported: settings import nothing).
_CPU_PRECISIONS = ("auto", "fp32", "bf16", "bf16-matmul")
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class SettingsError(ValueError):
    """A flag or environment variable has an unusable value."""


@dataclass(frozen=True)
class Settings:
    """Everything the proxy process needs to know; immutable once built."""

    host: str = "127.0.0.1"
    port: int = 8080
    upstream_url: str = "https://api.openai.com/v1"
    upstream_api_key: str | None = field(default=None, repr=False)
    policies_dir: Path = Path("policies")
    # Any form of proxy.store.topology (redis://, rediss://, redis+sentinel://, redis+cluster://);
    # out of repr: it may hold an ACL password.
    redis_url: str | None = field(default=None, repr=False)
    workers: int = 1
    max_body_bytes: int = 32 * 1024 * 1024
    log_level: str = "info"
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 600.0
    max_connections: int = 512
    # Limits on clients (proxy.gateway.http_limits): request line + headers, header count,
    # seconds to send the headers (from the first byte) and between body bytes, requests
    # in flight per worker.
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_concurrency: int = 1024
    upstream_transport: str = "wire"
    compressor_model: str | None = None
    # `linguagate compressor-worker`s to send compressions to (comma-separated, used in turn)
    # instead of loading the small LM in this process.
    compressor_url: str | None = None
    device: str | None = None
    compress_workers: int = 1
    compress_queue: int = 32
    torch_threads: int = 1
    # The small LM's numerics on a CPU (proxy.compress.numerics): auto = bf16 where the CPU
    # does bf16 natively (AVX512_BF16 / AMX), else fp32.
    cpu_precision: str = "auto"
    # Cross-request batching of the small LM's forwards (proxy.compress.batching), auto: on a
    # GPU only. Tokens: padded tokens per forward; the queue counts waiting forwards.
    compress_batching: str = "auto"
    compress_batch_tokens: int = 32768
    compress_batch_wait_ms: float = 2.0
    compress_batch_queue: int = 4096
    cache_ttl_s: int = 7 * 24 * 3600
    # Signs dashboard session cookies; `serve` generates one when unset (shared by workers).
    dashboard_secret: str | None = field(default=None, repr=False)
    dashboard_session_ttl_s: int = 8 * 3600
    # Where tenants with `[alignment] capture = true` get their pair files (prompt text!).
    capture_dir: Path = Path("captures")
    prices_path: Path | None = None  # USD per 1M input tokens (see proxy.accounting.report)

    def __post_init__(self) -> None:
        if not self.upstream_url.startswith(("http://", "https://")):
            raise SettingsError(
                f"upstream URL must start with http:// or https://: {self.upstream_url!r}"
            )
        # Normalised so that path joining never produces "//".
        object.__setattr__(self, "upstream_url", self.upstream_url.rstrip("/"))
        if self.upstream_api_key is not None:
            # Secrets mounted from files often end in a newline; inside a header it would break
            # the request (or inject one).
            key = self.upstream_api_key.strip()
            if not key.isprintable() or not key.isascii():
                raise SettingsError("LINGUAGATE_UPSTREAM_API_KEY contains unprintable characters")
            object.__setattr__(self, "upstream_api_key", key or None)
        if not 0 < self.port < 65536:
            raise SettingsError(f"port out of range: {self.port}")
        if self.workers < 1:
            raise SettingsError(f"workers must be >= 1: {self.workers}")
        if self.max_body_bytes < 1:
            raise SettingsError(f"max body bytes must be >= 1: {self.max_body_bytes}")
        if self.log_level not in _LOG_LEVELS:
            raise SettingsError(
                f"log level must be one of {', '.join(_LOG_LEVELS)}: {self.log_level!r}"
            )
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise SettingsError("timeouts must be > 0")
        if self.upstream_transport not in _TRANSPORTS:
            raise SettingsError(f"upstream transport must be one of {', '.join(_TRANSPORTS)}")
        if self.compress_workers < 1 or self.compress_queue < 1 or self.torch_threads < 0:
            raise SettingsError("compress workers/queue must be >= 1, torch threads >= 0")
        _check_batching(self)
        if self.cache_ttl_s < 1:
            raise SettingsError(f"cache TTL must be >= 1 s: {self.cache_ttl_s}")
        if self.max_connections < 1:
            raise SettingsError(f"max connections must be >= 1: {self.max_connections}")
        _check_client_limits(self)
        _check_dashboard(self)
        if isinstance(self.prices_path, str):  # from the environment: `Path | None` is a str
            object.__setattr__(self, "prices_path", Path(self.prices_path))

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Build settings from `LINGUAGATE_*` variables; non-None `overrides` (flags) win."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(_env_name(f.name))
            if raw is not None and raw != "":
                values[f.name] = _convert(f.name, raw, cls.__dataclass_fields__[f.name].type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The environment that makes `from_env` rebuild exactly these settings."""
        env: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                env[_env_name(f.name)] = str(value)
        return env

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)


def _check_client_limits(s: Settings) -> None:
    if min(s.max_header_bytes, s.max_headers, s.max_concurrency) < 1:
        raise SettingsError("max header bytes, max headers and max concurrency must be >= 1")
    if s.header_timeout_s <= 0 or s.body_timeout_s <= 0:
        raise SettingsError("header and body timeouts must be > 0")


def _check_dashboard(settings: Settings) -> None:
    secret = settings.dashboard_secret
    if secret is not None and len(secret.encode()) < 16:
        raise SettingsError("LINGUAGATE_DASHBOARD_SECRET must be at least 16 bytes")
    if settings.dashboard_session_ttl_s < 60:
        raise SettingsError("dashboard session TTL must be >= 60 s")


def _check_batching(s: Settings) -> None:
    for url in (s.compressor_url or "").split(","):
        if s.compressor_url is not None and not url.strip().startswith(("http://", "https://")):
            raise SettingsError(f"compressor URLs must start with http:// or https://: {url!r}")
    if s.cpu_precision not in _CPU_PRECISIONS:
        raise SettingsError(f"cpu precision must be one of {', '.join(_CPU_PRECISIONS)}")
    if s.compress_batching not in _BATCHING:
        raise SettingsError(f"compress batching must be one of {', '.join(_BATCHING)}")
    if s.compress_batch_tokens < 1 or s.compress_batch_queue < 1 or s.compress_batch_wait_ms < 0:
        raise SettingsError("compress batch tokens/queue must be >= 1, wait >= 0 ms")


def _env_name(field_name: str) -> str:
    special = {
        "upstream_url": "UPSTREAM_URL",
        "upstream_api_key": "UPSTREAM_API_KEY",
        "policies_dir": "POLICIES",
        "connect_timeout_s": "CONNECT_TIMEOUT",
        "read_timeout_s": "READ_TIMEOUT",
        "header_timeout_s": "HEADER_TIMEOUT",
        "body_timeout_s": "BODY_TIMEOUT",
        "cache_ttl_s": "CACHE_TTL",
        "dashboard_session_ttl_s": "DASHBOARD_SESSION_TTL",
        "prices_path": "PRICES",
    }
    return _PREFIX + special.get(field_name, field_name.upper())


def _convert(name: str, raw: str, annotation: object) -> Any:
    kind = str(annotation)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise SettingsError(f"{_env_name(name)} must be a number: {raw!r}") from None
    if kind == "Path":
        return Path(raw)
    if name == "log_level":
        return raw.lower()
    return raw
