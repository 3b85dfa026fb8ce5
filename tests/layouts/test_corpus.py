"""The layout corpus renders valid requests that carry every item part verbatim (no model)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.layouts.corpus import (
    LAYOUTS,
    Item,
    Layout,
    count_tokens,
    make_items,
    rendered_text,
)

ITEMS = make_items(6, 1000, seed=7) + make_items(3, 2000, seed=7)

REQUIRED = {
    "langchain_hub_rag",
    "langchain_retrieval_chain",
    "llamaindex_text_qa",
    "llamaindex_chat_text_qa",
    "llamaindex_refine",
    "llamaindex_chat_refine",
    "haystack_rag",
    "dspy_chat_adapter",
    "openai_cookbook_qa",
    "anthropic_doc_tags",
    "separate_user_messages",
    "tool_result_retrieval",
}
AGENT_LAYOUTS = {"langgraph_agent", "autogen_memory_rag", "semantic_kernel_text_search",
                 "crewai_knowledge"}  # fmt: skip


def _check_messages(messages: list[dict[str, Any]]) -> None:
    """The OpenAI chat ``messages`` shape: roles, content types, tool-call pairing."""
    assert isinstance(messages, list) and messages
    open_calls: set[str] = set()
    for message in messages:
        role = message["role"]
        assert role in {"system", "user", "assistant", "tool"}
        assert set(message) <= {"role", "content", "name", "tool_calls", "tool_call_id"}
        if role == "assistant" and message.get("tool_calls"):
            assert message["content"] is None or isinstance(message["content"], str)
            for call in message["tool_calls"]:
                assert call["type"] == "function" and call["id"].startswith("call_")
                assert isinstance(json.loads(call["function"]["arguments"]), dict)
                open_calls.add(call["id"])
            continue
        assert isinstance(message["content"], str) and message["content"].strip()
        if role == "tool":
            assert message["tool_call_id"] in open_calls
            open_calls.discard(message["tool_call_id"])
        if "name" in message:
            assert re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", message["name"])
    assert not open_calls, "every tool call is answered"
    assert messages[-1]["role"] != "assistant", "the request ends on input, not on a reply"


def test_registry_covers_the_issue() -> None:
    assert REQUIRED <= set(LAYOUTS)
    assert len(AGENT_LAYOUTS & set(LAYOUTS)) >= 2
    for name, layout in LAYOUTS.items():
        assert layout.name == name and layout.kind in {"chat", "completion"}
        assert layout.source.strip() and layout.notes.strip()
    assert {n for n, lay in LAYOUTS.items() if lay.kind == "completion"} == {
        "llamaindex_text_qa",
        "llamaindex_refine",
    }


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=list(LAYOUTS))
def test_layout_renders_valid_request_with_everything(layout: Layout) -> None:
    for item in ITEMS:
        rendered = layout.render(item)
        if layout.kind == "completion":
            assert isinstance(rendered, str)
        else:
            assert isinstance(rendered, list)
            _check_messages(rendered)
        text = rendered_text(rendered)
        assert item.question in text
        assert item.answer in text
        for doc in item.documents:
            assert doc.text in text
        assert rendered == layout.render(item), "rendering is deterministic"


@pytest.mark.parametrize("layout", LAYOUTS.values(), ids=list(LAYOUTS))
def test_messages_validate_against_the_openai_sdk_types(layout: Layout) -> None:
    if layout.kind != "chat":
        pytest.skip("completion prompt")
    pytest.importorskip("openai")
    from openai.types.chat import ChatCompletionMessageParam
    from pydantic import TypeAdapter

    adapter = TypeAdapter(list[ChatCompletionMessageParam])
    adapter.validate_python(layout.render(ITEMS[0]))


def test_the_facts_the_mapping_rules_depend_on() -> None:
    """Pin the positions that surprised: question before context, trailing text after it."""
    item = ITEMS[0]
    context = item.documents[0].text

    def user(name: str) -> str:
        messages = LAYOUTS[name].render(item)
        assert isinstance(messages, list)
        return str([m for m in messages if m["role"] == "user"][-1]["content"])

    hub = user("langchain_hub_rag")
    assert hub.index(item.question) < hub.index(context) and hub.endswith(" \nAnswer:")
    refine = LAYOUTS["llamaindex_refine"].render(item)
    assert isinstance(refine, str)
    assert refine.startswith(f"The original query is as follows: {item.question}\n")
    chat_refine = user("llamaindex_chat_refine")
    assert chat_refine.index(context) < chat_refine.index(f"Query: {item.question}\n")
    assert chat_refine.endswith("\nOriginal Answer: The information provided does not state "
                                "this.\nNew Answer: ")  # fmt: skip
    crew = user("crewai_knowledge")
    assert crew.index(item.question) < crew.index(context)
    assert "not a summary.Additional Information: " in crew
    assert user("semantic_kernel_text_search").endswith(
        f"\n{item.question}\n\nInclude citations to the relevant information where it is "
        "referenced in the response."
    )
    autogen = LAYOUTS["autogen_memory_rag"].render(item)
    assert isinstance(autogen, list)
    assert [m["role"] for m in autogen] == ["system", "user", "system"]
    assert autogen[1]["content"] == item.question and context in autogen[2]["content"]
    chain = LAYOUTS["langchain_retrieval_chain"].render(item)
    assert isinstance(chain, list)
    assert context in chain[0]["content"] and chain[1]["content"] == item.question
    dspy = user("dspy_chat_adapter")
    assert f"[1] «{context}»" in dspy
    assert dspy.endswith("then ending with the marker for `[[ ## completed ## ]]`.")


def test_haystack_rendering_matches_jinja() -> None:
    """The hand rendering equals what Haystack's ChatPromptBuilder environment produces."""
    sandbox = pytest.importorskip("jinja2.sandbox")
    template = (
        "\nGiven the following information, answer the question.\n\nContext:\n"
        "{% for document in documents %}\n    {{ document.content }}\n{% endfor %}\n\n"
        "Question: {{question}}\nAnswer:\n"
    )
    item = ITEMS[0]
    docs = [{"content": d.text} for d in item.documents]
    expected = (
        sandbox.SandboxedEnvironment()
        .from_string(template)
        .render(documents=docs, question=item.question)
    )
    messages = LAYOUTS["haystack_rag"].render(item)
    assert isinstance(messages, list)
    assert messages[0]["content"] == expected


def test_items_are_deterministic_and_prefix_stable() -> None:
    assert make_items(5, 1000, seed=3) == make_items(5, 1000, seed=3)
    assert make_items(3, 1000, seed=3) == make_items(6, 1000, seed=3)[:3]
    assert make_items(3, 1000, seed=3) != make_items(3, 1000, seed=4)
    assert len({item.id for item in make_items(24, 1000, seed=3)}) == 24


@pytest.mark.parametrize("size", [1000, 2000])
def test_items_are_needles_among_distractors(size: int) -> None:
    items = make_items(24, size, seed=11)
    for item in items:
        assert 7 <= len(item.documents) <= 12
        assert [i for i, d in enumerate(item.documents) if item.answer in d.text] == [item.gold]
        assert item.answer not in item.question
        assert len(item.answer) <= 12
        # Distractors mention the question's entities (company and the place or person).
        for doc in item.documents:
            assert item.topic in doc.text
        # Texts survive JSON, XML tags and HTML-encoding templates unchanged.
        for doc in item.documents:
            assert not set(doc.text + doc.title + item.question) & set("\"'&<>\\\n")
    golds = {item.gold for item in items}
    assert len(golds) > 3, "the needle is not always in the same position"
    mean = sum(count_tokens(_docs_text(item)) for item in items) / len(items)
    assert 0.85 * size <= mean <= 1.15 * size


def test_some_distractors_are_near_misses() -> None:
    """Hard negatives: same sentence shape as the answer's, another entity and code."""
    items = make_items(24, 1000, seed=5)
    near = 0
    for item in items:
        shape = _code_shape(item.answer)
        for i, doc in enumerate(item.documents):
            if i != item.gold and re.search(shape, doc.text):
                near += 1
    assert near >= len(items)


def _docs_text(item: Item) -> str:
    return "\n\n".join(f"{d.title}\n{d.text}" for d in item.documents)


def _code_shape(code: str) -> str:
    return re.sub(r"[A-Z]", "[A-Z]", re.sub(r"\d", r"\\d", code))
