"""Framework prompt layouts through the proxy: openai SDK -> proxy -> fake upstream.

Each layout of tests/layouts/corpus.py is sent as its framework sends it. The compressor is
the tiny random model, so which documents survive is chance; what is checked is the mapping:
compression applied (the context is found wherever it stands), the question and every label
forwarded verbatim, JSON results still JSON, and the ``x-linguagate-mapping`` header.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.layouts.corpus import LAYOUTS, make_items
from tests.support.compression import CompressionStack, assert_only_text_changed
from tests.support.upstream import FakeUpstream

pytestmark = pytest.mark.integration

MODEL = "gpt-4o-mini"
CHAT = "/v1/chat/completions"
ITEM = make_items(1, 1000, 61)[0]
# Labels and output instructions the layouts' templates put around the context.
TEMPLATE = re.compile(
    r"Question:|Query:|Context:|Answer:|\[\[ ## \w+ ## \]\]|Relevant memory content:|"
    r"Additional Information:|Provide your complete response:|Include citations"
)


@pytest.fixture
def stack(compression_stack: CompressionStack, upstream: FakeUpstream) -> CompressionStack:
    compression_stack.wait_idle()
    return compression_stack


def _send(stack: CompressionStack, tenant: str, messages: list[dict[str, Any]]) -> tuple[
    dict[str, str], bytes
]:
    with stack.client(tenant) as sdk:
        raw = sdk.chat.completions.with_raw_response.create(
            model=MODEL, messages=messages  # type: ignore[arg-type]
        )
        raw.parse()
    return dict(raw.headers), stack.upstream.last(CHAT).body


def _texts(body: bytes) -> str:
    out = []
    for m in json.loads(body)["messages"]:
        content = m.get("content")
        out.append(content if isinstance(content, str) else "")
    return "\n".join(out)


@pytest.mark.parametrize(
    "name", [n for n, lay in sorted(LAYOUTS.items()) if lay.kind == "chat"]
)
def test_layout_is_compressed_with_question_and_template_verbatim(
    stack: CompressionStack, name: str
) -> None:
    messages = LAYOUTS[name].render(ITEM)
    assert isinstance(messages, list)
    original = _send(stack, "off", messages)[1]
    headers, received = _send(stack, "team-a", messages)
    assert headers["x-linguagate-compression"] == "applied", headers
    mapping = headers["x-linguagate-mapping"]
    assert "question=1" in mapping and "context=0" not in mapping and "rules=" in mapping
    assert assert_only_text_changed(original, received)
    sent = _texts(received)
    assert ITEM.question in sent  # never compressed, wherever it stands
    assert TEMPLATE.findall(_texts(original)) == TEMPLATE.findall(sent)
    assert int(headers["x-linguagate-forwarded-tokens"]) < int(
        headers["x-linguagate-original-tokens"]
    )


def test_json_retrieval_result_stays_json_with_its_keys(stack: CompressionStack) -> None:
    messages = LAYOUTS["tool_result_retrieval"].render(ITEM)
    assert isinstance(messages, list)
    headers, received = _send(stack, "team-a", messages)
    assert headers["x-linguagate-compression"] == "applied"
    assert "json_documents" in headers["x-linguagate-mapping"]
    results = json.loads(json.loads(received)["messages"][2]["content"])
    assert [r["title"] for r in results] == [d.title for d in ITEM.documents]
    assert sum(len(r["content"]) for r in results) < sum(len(d.text) for d in ITEM.documents)


def test_mode_off_and_skips_still_name_the_mapping(stack: CompressionStack) -> None:
    messages = [{"role": "user", "content": "Hi?"}]
    headers, _ = _send(stack, "team-a", messages)
    assert headers["x-linguagate-compression"] == "skipped: below_min_tokens"
    assert headers["x-linguagate-mapping"].startswith("instruction=0; context=0; question=1")
