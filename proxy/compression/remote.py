"""A compressor in another process: the proxy's side of ``linguagate compressor-worker``.

One worker process owns a GPU (its model, its batch engine); any number of proxy workers
and replicas send it compressions over HTTP (``--compressor-url``). ``RemoteEngine`` is a
``CompressionEngine``: the request path, the cache and the fail-open rules do not change.
The worker's back-pressure (HTTP 429) becomes ``QueueFull`` here, so a full GPU queue
forwards prompts uncompressed with the skip reason ``queue_full``.

Several workers (comma-separated URLs, e.g. a few per GPU when one process's Python side
is the limit) are used in turn, call by call; they must serve the same model.
A ``RemoteEngine`` is bound to one model: the workers' default (``model`` None) or a model
a tenant policy names, which the workers must have been started with (``--extra-model``);
its ``model_id`` (part of every cache key) is the one the workers report.

Wire format (JSON): ``POST /v1/compress`` {instruction, demonstrations, question, rate,
options[, model]} -> {result}; ``POST /v1/nll`` {text[, model]} -> {nll};
``GET /v1/info[?model=NAME]`` -> {name, model_id, device, models, ...}; a model the worker
does not serve is a 404 with code ``model_not_served``. Prompt text crosses this link: keep
the worker on loopback or a private network.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from proxy.core.executor import QueueFull

if TYPE_CHECKING:
    from proxy.compress import CompressionResult

__all__ = [
    "RemoteDevice",
    "RemoteEngine",
    "ModelNotServed",
    "RemoteError",
    "options_from_wire",
    "options_to_wire",
    "result_from_wire",
    "result_to_wire",
]


class RemoteError(RuntimeError):
    """The worker answered with an error (its message names only the error type)."""


class ModelNotServed(RemoteError):
    """The workers were not started with the model a policy names (``--extra-model``)."""


@dataclass(frozen=True)
class RemoteDevice:
    type: str  # the worker's device type ("cuda", "cpu"): default deadlines follow it


def options_to_wire(options: dict[str, Any]) -> dict[str, Any]:
    out = dict(options)
    protect = out.get("protect")
    if protect is not None:
        out["protect"] = dataclasses.asdict(protect)
    return out


def options_from_wire(options: dict[str, Any]) -> dict[str, Any]:
    from proxy.compress import ProtectRules

    out = dict(options)
    protect = out.get("protect")
    if protect is not None:
        out["protect"] = ProtectRules(**{**protect, "regexes": tuple(protect.get("regexes", ()))})
    return out


def result_to_wire(r: CompressionResult) -> dict[str, Any]:
    out = dataclasses.asdict(r)
    out["component_tokens"] = {k: list(v) for k, v in r.component_tokens.items()}
    return out


def result_from_wire(raw: dict[str, Any]) -> CompressionResult:
    from proxy.compress import CompressionResult

    return CompressionResult(
        instruction=raw["instruction"],
        demonstrations=tuple(raw["demonstrations"]),
        question=raw["question"],
        original_tokens=int(raw["original_tokens"]),
        compressed_tokens=int(raw["compressed_tokens"]),
        rate=float(raw["rate"]),
        elapsed_ms=float(raw["elapsed_ms"]),
        component_tokens={k: (int(v[0]), int(v[1])) for k, v in raw["component_tokens"].items()},
    )


class RemoteEngine:
    """Compressions run by a ``linguagate compressor-worker`` at ``url``. Thread-safe."""

    # Calls wait on the network: the proxy may run as many at once as it admits.
    parallel_calls = True

    def __init__(
        self,
        clients: Sequence[httpx.Client],
        model_id: str,
        device: RemoteDevice,
        model: str | None = None,
    ) -> None:
        self._clients = tuple(clients)
        self._turn = itertools.count()  # next() is atomic under the GIL
        self.model_id = model_id
        self.device = device
        self.model = model  # the name the workers know it by (None: their default)

    @classmethod
    def connect(
        cls,
        urls: str,
        *,
        model: str | None = None,
        wait_s: float = 30.0,
        timeout_s: float = 600.0,
    ) -> RemoteEngine:
        """Ask each worker (``urls``: comma-separated) about ``model`` (None: its default),
        retrying while they start or load it (up to ``wait_s``); they must all serve it, with
        the same identity. A worker that does not serve it raises ``ModelNotServed`` at once."""
        clients: list[httpx.Client] = []
        infos: list[dict[str, Any]] = []
        try:
            for url in (u.strip() for u in urls.split(",") if u.strip()):
                clients.append(
                    httpx.Client(
                        base_url=url.rstrip("/"),
                        timeout=httpx.Timeout(timeout_s, connect=5.0),
                        limits=httpx.Limits(max_connections=1024, max_keepalive_connections=256),
                    )
                )
                try:
                    info = _wait_info(clients[-1], model, time.monotonic() + wait_s)
                except ModelNotServed:
                    raise ModelNotServed(
                        f"compressor workers at {url} do not serve {model}; "
                        f"start them with --extra-model {model}"
                    ) from None
                if model is not None and info.get("name") != model:
                    # A worker from before named models answers with its default's identity.
                    raise ModelNotServed(
                        f"compressor worker at {url} cannot serve named models (upgrade it)"
                    )
                infos.append(info)
            models = {str(i["model_id"]) for i in infos}
            if len(models) != 1:
                raise RemoteError(f"compressor workers serve different models: {sorted(models)}")
        except BaseException:
            for client in clients:
                client.close()
            raise
        return cls(clients, models.pop(), RemoteDevice(str(infos[0]["device"])), model)

    @property
    def _client(self) -> httpx.Client:
        return self._clients[next(self._turn) % len(self._clients)]

    def compress(
        self,
        instruction: str,
        demonstrations: list[str],
        question: str,
        rate: float,
        **options: Any,
    ) -> CompressionResult:
        body: dict[str, Any] = {
            "instruction": instruction,
            "demonstrations": list(demonstrations),
            "question": question,
            "rate": rate,
            "options": options_to_wire(options),
        }
        if self.model is not None:
            body["model"] = self.model
        return result_from_wire(_json(self._client.post("/v1/compress", json=body))["result"])

    def mean_nll(self, text: str) -> float:
        body: dict[str, Any] = {"text": text}
        if self.model is not None:
            body["model"] = self.model
        return float(_json(self._client.post("/v1/nll", json=body))["nll"])

    def close(self) -> None:
        for client in self._clients:
            client.close()


def _wait_info(client: httpx.Client, model: str | None, deadline: float) -> dict[str, Any]:
    params = {} if model is None else {"model": model}
    while True:
        try:
            return _json(client.get("/v1/info", params=params))
        except ModelNotServed:
            raise  # the worker is up and answered: waiting will not change its model list
        except (httpx.TransportError, RemoteError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _json(response: httpx.Response) -> dict[str, Any]:
    if response.status_code == 429:
        raise QueueFull("the compressor worker's queue is full")
    if response.status_code != 200:
        try:
            error = response.json()["error"]
            message, code = str(error["message"]), error.get("code")
        except (ValueError, KeyError, TypeError):
            message, code = f"HTTP {response.status_code}", None
        if response.status_code == 404 and code == "model_not_served":
            raise ModelNotServed(f"compressor worker: {message}")
        raise RemoteError(f"compressor worker: {message}")
    data: dict[str, Any] = response.json()
    return data
