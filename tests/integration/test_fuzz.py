"""Property-based fuzzing of `/v1/chat/completions` and `/v1/completions` (issue 13).

Bodies range from well-formed requests with hostile values (lone surrogates, huge numbers,
unknown fields, deep nesting) to arbitrary JSON and raw bytes; the proxy key travels in
every header a client may use. Whatever comes in, in both key modes:

* the proxy never answers 5xx;
* an error the proxy produced itself is the OpenAI envelope;
* a 2xx means the upstream got the client's bytes unchanged;
* no proxy key reaches the upstream.

Bounded and seeded (`derandomize`): the same few hundred cases on every run. The larger
probe is `bench/abuse.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support.proxy import ALPHA_KEY, BETA_KEY
from tests.support.servers import ProxyServer
from tests.support.upstream import FakeUpstream, json_reply

pytestmark = pytest.mark.integration

PATHS = ("/chat/completions", "/completions")
PROXY_KEYS = (ALPHA_KEY.encode(), BETA_KEY.encode())
OK = json_reply({"id": "x", "object": "chat.completion", "choices": []})
FUZZ = settings(
    max_examples=150,
    derandomize=True,  # seeded: a failure here reproduces on every run
    database=None,  # nothing to remember between seeded runs (and no .hypothesis/ folder)
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Every code point, lone surrogates included: `json.dumps` escapes them (`"\ud800"`).
_text = st.text(st.characters(exclude_categories=()), max_size=40)
_scalars = st.none() | st.booleans() | st.integers() | st.floats() | _text
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)
_role = st.sampled_from(["system", "developer", "user", "assistant", "tool", "function"]) | _text
_part = st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]) | _text,
                               "text": _text | _json})
_message = st.fixed_dictionaries(
    {"role": _role},
    optional={"content": _text | st.lists(_part, max_size=3) | _json, "name": _text | _json,
              "tool_calls": _json},
)
_request = st.fixed_dictionaries(
    {"model": _text | st.sampled_from(["gpt-4o-mini", "gpt-4o"]) | _json},
    optional={"messages": st.lists(_message, max_size=4) | _json, "prompt": _text | _json,
              "stream": st.booleans() | _json, "temperature": _json, "n": _json,
              "metadata": _json, "unknown_field": _json},
)

# Requests the proxy accepts (model a string, messages objects): the 2xx share of the mix.
_valid = st.fixed_dictionaries(
    {"model": _text, "messages": st.lists(st.fixed_dictionaries({"role": _role,
                                                                 "content": _text}), max_size=3),
     "prompt": _text},
    optional={"stream": st.booleans(), "temperature": _json, "metadata": _json, "x": _json},
)


def _nested(depth: int) -> bytes:
    return b'{"model":"m","messages":[],"metadata":' + b"[" * depth + b"]" * depth + b"}"


_bodies = st.one_of(
    _valid.map(lambda body: json.dumps(body).encode()),
    _valid.map(lambda body: json.dumps(body, ensure_ascii=False).encode("utf-8", "replace")),
    _request.map(lambda body: json.dumps(body).encode()),
    _json.map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=200),
    st.integers(100, 5000).map(_nested),
    _request.map(lambda body: json.dumps(body).encode()[: len(json.dumps(body)) // 2]),
)
# Where the client puts its proxy key (the SDK uses authorization; Azure-style api-key).
_placement = st.sampled_from(["authorization", "api-key", "x-linguagate-key", "both"])


def _headers(placement: str, key: str) -> dict[str, str]:
    if placement == "authorization":
        return {"authorization": f"Bearer {key}"}
    if placement == "both":  # BYO style: own upstream key beside the proxy key
        return {"authorization": "Bearer sk-team-upstream", "x-linguagate-key": key,
                "api-key": key}
    return {placement: key}


def _check(response: httpx.Response, sent: bytes, upstream: FakeUpstream) -> None:
    seen = list(upstream.requests)
    event(f"HTTP {response.status_code}")  # --hypothesis-show-statistics shows the mix
    assert response.status_code < 500, (response.status_code, response.text[:300])
    for request in seen:
        for name, value in request.headers:
            assert not any(key in value for key in PROXY_KEYS), (name, value)
    if 200 <= response.status_code < 300:
        assert [r.body for r in seen] == [sent]
    elif not seen:  # the proxy's own answer, not a relayed upstream error
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert isinstance(error["message"], str) and isinstance(error["type"], str)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def _fuzz_once(server: ProxyServer, upstream: FakeUpstream, http: httpx.Client,
               path: str, body: bytes, headers: dict[str, Any]) -> None:
    upstream.reset()
    upstream.enqueue("/v1" + path, OK)
    response = http.post(server.base_url + path, content=body,
                         headers={**headers, "content-type": "application/json"})
    _check(response, body, upstream)


@FUZZ
@given(path=st.sampled_from(PATHS), body=_bodies, placement=_placement)
def test_fuzz_org_key_mode(proxy: ProxyServer, fake_upstream: FakeUpstream, http: httpx.Client,
                           path: str, body: bytes, placement: str) -> None:
    _fuzz_once(proxy, fake_upstream, http, path, body, _headers(placement, ALPHA_KEY))


@FUZZ
@given(path=st.sampled_from(PATHS), body=_bodies,
       placement=_placement | st.just("anonymous"))
def test_fuzz_bring_your_own_key_mode(
    byo_proxy: ProxyServer, fake_upstream: FakeUpstream, http: httpx.Client,
    path: str, body: bytes, placement: str,
) -> None:
    headers = ({"authorization": "Bearer sk-team-upstream"} if placement == "anonymous"
               else _headers(placement, ALPHA_KEY))
    _fuzz_once(byo_proxy, fake_upstream, http, path, body, headers)
