"""Policy-named models on `linguagate compressor-worker` (`--extra-model`), end to end.

One real worker on loopback serves the tiny default model and a tiny model saved to a folder
(the name policies use), plus one named model that fails to load. The proxy side
(`--compressor-url`) must get the bytes a local `Compressor` of that folder gives, under the
identity a local load reports; a name the workers were not started with is a 404 at the
worker and a `down` engine (requests forwarded untouched) at the proxy, never a load.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest

from proxy.compress import Compressor, ProtectRules
from proxy.compression.remote import ModelNotServed, RemoteEngine
from proxy.compression.service import Batching, CompressionEngine, CompressorService
from proxy.compression.worker import create_worker_app
from proxy.core.settings import Settings
from proxy.services import open_services
from tests.support.compression import few_shot, key_of, write_policy
from tests.support.servers import ProxyServer, ServerThread, run_proxy
from tests.support.tiny_lm import sample_text
from tests.support.upstream import FakeUpstream

if TYPE_CHECKING:
    from proxy.gateway.state import Services

pytestmark = pytest.mark.usefixtures("torch_single_thread")

MODEL = "gpt-4o-mini"
_COMPRESS = {"mode": "enforce", "rate": 0.5, "min_tokens": 50, "models": ["gpt-*"],
             "ood_max_nll": 1000.0}
_BROKEN = "broken/on-the-worker"


def _fail_to_load() -> CompressionEngine:
    raise OSError("no weights here")


@pytest.fixture(scope="module")
def named(tiny_base_dir: Path) -> Compressor:
    """The folder's model loaded here, as a proxy without workers would."""
    return Compressor(str(tiny_base_dir), "cpu")


@pytest.fixture(scope="module")
def worker(
    tiny_compressor: Compressor, tiny_base_dir: Path, named: Compressor
) -> Iterator[ServerThread]:
    # After `named`: transformers cannot load two models at once in one process.
    default = CompressorService.ready(tiny_compressor, max_pending=16)
    extra = {
        # Loaded in the background when the app starts, as `--extra-model` does.
        str(tiny_base_dir): CompressorService(lambda: Compressor(str(tiny_base_dir), "cpu"),
                                              max_pending=16, batching=Batching("on")),
        _BROKEN: CompressorService(_fail_to_load),
    }
    app = create_worker_app(default, extra, default_name="tiny/default")
    with ServerThread(app, name="compressor-worker") as server:
        yield server


def test_a_named_model_compresses_remotely_to_the_local_bytes(
    worker: ServerThread, named: Compressor, tiny_base_dir: Path
) -> None:
    remote = RemoteEngine.connect(worker.url, model=str(tiny_base_dir))
    try:
        # The cache key's model identity: the same folder, the same id, local or remote.
        assert remote.model_id == named.model_id
        assert remote.model_id.startswith(str(tiny_base_dir) + "@")
        demos = [sample_text(60, 11), sample_text(45, 12)]
        cases: list[dict[str, Any]] = [
            {}, {"question_aware": True, "protect": ProtectRules(number=True)}]
        for options in cases:
            args = ("Instruction: " + sample_text(15, 13), demos, sample_text(12, 14), 0.4)
            got = remote.compress(*args, **options)
            assert got == replace(named.compress(*args, **options), elapsed_ms=got.elapsed_ms)
        text = sample_text(40, 15)
        assert remote.mean_nll(text) == named.mean_nll(text)
    finally:
        remote.close()
    info = httpx.get(worker.url + "/v1/info", params={"model": str(tiny_base_dir)}).json()
    assert info["batch"]["forwards"] > 0  # its own batcher ran them, on the worker


def test_default_and_named_models_side_by_side(
    worker: ServerThread, tiny_compressor: Compressor, named: Compressor, tiny_base_dir: Path
) -> None:
    default = RemoteEngine.connect(worker.url)
    by_name = RemoteEngine.connect(worker.url, model="tiny/default")  # the default's own name
    aligned = RemoteEngine.connect(worker.url, model=str(tiny_base_dir))
    try:
        assert default.model_id == by_name.model_id == tiny_compressor.model_id
        assert aligned.model_id != default.model_id
        text = sample_text(50, 21)
        assert default.mean_nll(text) == tiny_compressor.mean_nll(text)
        assert aligned.mean_nll(text) == named.mean_nll(text) != tiny_compressor.mean_nll(text)
        args = ("", [sample_text(70, 22)], sample_text(10, 23), 0.5)
        mine, theirs = default.compress(*args), aligned.compress(*args)
        assert mine == replace(tiny_compressor.compress(*args), elapsed_ms=mine.elapsed_ms)
        assert theirs == replace(named.compress(*args), elapsed_ms=theirs.elapsed_ms)
    finally:
        for engine in (default, by_name, aligned):
            engine.close()


def test_an_unserved_model_is_a_404_and_never_loaded(
    worker: ServerThread, tmp_path: Path
) -> None:
    folder = str(tmp_path / "not-served")
    body = {"model": folder, "instruction": "", "demonstrations": ["x y z"], "question": "",
            "rate": 0.5}
    for response in (httpx.post(worker.url + "/v1/compress", json=body),
                     httpx.post(worker.url + "/v1/nll", json={"model": folder, "text": "x"}),
                     httpx.get(worker.url + "/v1/info", params={"model": folder})):
        assert response.status_code == 404
        error = response.json()["error"]
        assert (error["code"], error["type"]) == ("model_not_served", "invalid_request_error")
        assert f"--extra-model {folder}" in error["message"]
    bad = httpx.post(worker.url + "/v1/nll", json={"model": 7, "text": "x"})
    assert bad.status_code == 400
    listed = httpx.get(worker.url + "/v1/info").json()["models"]
    assert folder not in {m["name"] for m in listed}
    started = time.monotonic()
    with pytest.raises(ModelNotServed, match=f"do not serve {folder}; start them with "
                                             f"--extra-model {folder}"):
        RemoteEngine.connect(worker.url, model=folder)
    assert time.monotonic() - started < 25  # a clear answer, not the 30 s start-up wait


def test_info_and_healthz_list_every_served_model(
    worker: ServerThread, tiny_compressor: Compressor, named: Compressor, tiny_base_dir: Path
) -> None:
    RemoteEngine.connect(worker.url, model=str(tiny_base_dir)).close()  # waits for its load
    info = httpx.get(worker.url + "/v1/info").json()
    assert (info["name"], info["model_id"], info["device"]) == (
        "tiny/default", tiny_compressor.model_id, "cpu")
    rows = {m["name"]: m for m in info["models"]}
    assert set(rows) == {"tiny/default", str(tiny_base_dir), _BROKEN}
    assert rows["tiny/default"]["default"] and not rows[str(tiny_base_dir)]["default"]
    assert (rows[str(tiny_base_dir)]["state"], rows[str(tiny_base_dir)]["model_id"]) == (
        "ok", named.model_id)
    assert (rows[_BROKEN]["state"], rows[_BROKEN]["model_id"]) == ("down", None)
    assert "no weights here" in rows[_BROKEN]["detail"]
    broken = httpx.get(worker.url + "/v1/info", params={"model": _BROKEN})
    assert broken.status_code == 503 and "down" in broken.json()["error"]["message"]
    health = httpx.get(worker.url + "/healthz").json()
    assert health == {"status": "ok", "models": {str(tiny_base_dir): "ok", _BROKEN: "down"}}


@dataclass(frozen=True)
class _Proxy:
    server: ProxyServer

    def send(self, tenant: str, messages: list[dict[str, Any]]) -> Any:
        """The OpenAI SDK's raw response (headers included) to a chat completion."""
        client = openai.OpenAI(base_url=self.server.base_url, api_key=key_of(tenant),
                               max_retries=0, timeout=30)
        create: Any = client.chat.completions.with_raw_response.create
        return create(model=MODEL, messages=messages)

    def models(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(self.server.url + "/readyz", timeout=10).json()
        return dict(body["models"])


@pytest.fixture(scope="module")
def proxy(worker: ServerThread, fake_upstream: FakeUpstream, tiny_base_dir: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Proxy]:
    root = tmp_path_factory.mktemp("remote-models")
    policies = root / "policies"
    policies.mkdir()
    write_policy(policies, "aligned", [key_of("aligned")],
                 {**_COMPRESS, "model": str(tiny_base_dir)})
    write_policy(policies, "unserved", [key_of("unserved")],
                 {**_COMPRESS, "model": str(root / "not-on-the-workers")})
    settings = Settings(upstream_url=fake_upstream.base_url, upstream_api_key="sk-org",
                        policies_dir=policies, capture_dir=root / "captures",
                        compressor_url=worker.url, torch_threads=0)

    @asynccontextmanager
    async def services(s: Settings) -> AsyncIterator[Services]:
        async with open_services(s) as built:  # the real default and pool: remote engines
            yield built

    with run_proxy(settings, services=services) as server:
        built = _Proxy(server)
        deadline = time.monotonic() + 60
        while f"{tiny_base_dir}: ok" not in built.models().get("detail", ""):
            assert time.monotonic() < deadline, "the named model never became ready"
            time.sleep(0.05)
        yield built


def test_the_proxy_sends_named_models_to_the_workers(
    proxy: _Proxy, worker: ServerThread, upstream: FakeUpstream, tiny_base_dir: Path
) -> None:
    before = httpx.get(worker.url + "/v1/info", params={"model": str(tiny_base_dir)}).json()
    raw = proxy.send("aligned", few_shot(31))
    assert raw.headers["x-linguagate-compression"] == "applied"
    assert upstream.last("/v1/chat/completions").json()["messages"] != few_shot(31)
    after = httpx.get(worker.url + "/v1/info", params={"model": str(tiny_base_dir)}).json()
    assert after["batch"]["forwards"] > before["batch"]["forwards"]  # scored on the worker


def test_an_unserved_policy_model_is_down_and_fails_open(
    proxy: _Proxy, worker: ServerThread, upstream: FakeUpstream
) -> None:
    models = proxy.models()
    assert models["status"] == "down"
    missing = "not-on-the-workers"
    assert f"{missing}: down (ModelNotServed: compressor workers at {worker.url} do not serve" \
        in models["detail"]
    assert "start them with --extra-model " in models["detail"]
    raw = proxy.send("unserved", few_shot(32))
    assert raw.headers["x-linguagate-compression"] == "skipped: compressor_unavailable"
    assert upstream.last("/v1/chat/completions").json()["messages"] == few_shot(32)


def test_the_worker_cli_takes_repeatable_extra_models() -> None:
    import argparse

    from proxy.compression.worker import add_subcommand

    parser = argparse.ArgumentParser()
    add_subcommand(parser.add_subparsers())
    args = parser.parse_args(["compressor-worker", "--extra-model", "/models/aligned",
                              "--extra-model", "org/other-135m"])
    assert args.extra_model == ["/models/aligned", "org/other-135m"]
    assert parser.parse_args(["compressor-worker"]).extra_model == []


def test_the_pool_retries_a_down_engine_only_when_asked_to(tiny_compressor: Compressor) -> None:
    from proxy.compression.pool import CompressorPool

    attempts: list[str] = []

    def factory(model: str) -> CompressorService:
        attempts.append(model)
        if len(attempts) == 1:  # the workers did not serve it yet
            return CompressorService(_fail_to_load)
        return CompressorService.ready(tiny_compressor)

    default = CompressorService.ready(tiny_compressor)
    for retry in (None, 0.0):
        attempts.clear()
        pool = CompressorPool(default, factory, retry_down_s=retry)
        first = pool.service_for("aligned")
        assert first.wait_ready(10) and first.status[0] == "down"
        pool.ensure(["aligned"])  # the /readyz probe's call: starts a due retry
        # While the retry loads, the down service still answers (never "loading").
        assert pool.statuses()["aligned"][0] in ("down", "ok")
        deadline = time.monotonic() + 10
        while pool.service_for("aligned") is first and time.monotonic() < deadline:
            time.sleep(0.01)
            if retry is None:
                break
        assert pool.service_for("aligned").status[0] == ("down" if retry is None else "ok")
        assert pool.statuses()["aligned"][0] == ("down" if retry is None else "ok")
        assert len(attempts) == (1 if retry is None else 2)
        pool.close()
