"""The message mapping on real framework layouts (tests/layouts/corpus.py) and on variants of
them that no rule was written against (other labels, delimiters, positions)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from proxy.compression.layouts import context_layout, final_layout, json_documents, system_layout
from proxy.compression.messages import (
    ChatComponents,
    replacements_for,
    split_chat,
    split_completion,
)
from tests.layouts.corpus import LAYOUTS, make_items

ITEMS = make_items(4, 1000, 16) + make_items(2, 2000, 16)


def _split(rendered: list[dict[str, Any]] | str) -> ChatComponents:
    if isinstance(rendered, str):
        return split_completion({"model": "gpt-4o", "prompt": rendered})
    return split_chat({"model": "gpt-4o", "messages": rendered})


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layout_maps_question_documents_and_template(name: str) -> None:
    layout = LAYOUTS[name]
    for item in ITEMS:
        comps = _split(layout.render(item))
        # The question, whole and alone, wherever the template put it.
        assert [q.text for q in comps.question] == [item.question], comps.mapping()
        # One context item per document, each ranked by the question; the answer in one.
        docs = [d for d in comps.demonstrations if d.compressible]
        assert len(docs) == len(item.documents), comps.mapping()
        assert all(d.retrieved for d in docs)
        assert [item.answer in d.text for d in docs].count(True) == 1
        for doc, source in zip(docs, item.documents, strict=True):
            assert source.text in doc.text  # a document is never cut in two
        # Template text (labels, rules, output instructions) is never compressible.
        assert all(i.reason == "template" for i in comps.instruction if i.role != "system")
        assert "rules=" in comps.mapping() and "context=" in comps.mapping()


def test_context_in_the_system_message_is_context() -> None:
    item = ITEMS[0]
    comps = _split(LAYOUTS["langchain_retrieval_chain"].render(item))
    [instruction] = comps.instruction
    assert instruction.compressible and instruction.text.startswith("You are an assistant")
    assert item.documents[0].text not in instruction.text
    assert "system_context" in comps.rules


def test_worked_examples_in_a_system_prompt_are_demonstrations() -> None:
    # A tutoring system prompt: its own sentences, then few-shot examples it announces.
    shots = "\n\n".join(
        f"Question: A crate holds {n} apples and {n + 3} pears. How many fruits are there?\n"
        f"Let's think step by step. {n} + {n + 3} = {2 * n + 3}. The answer is {2 * n + 3}."
        for n in range(3, 7))
    text = f"You are a patient math tutor. Worked examples follow.\n\n{shots}"
    layout = system_layout(text)
    assert [s.kind for s in layout.spans].count("instruction") == 1
    assert text[layout.spans[0].start:layout.spans[0].end].startswith("You are a patient")
    assert "system_context" in layout.rules


def test_dspy_schema_placeholders_stay_instruction() -> None:
    rendered = LAYOUTS["dspy_chat_adapter"].render(ITEMS[0])
    assert isinstance(rendered, list)
    layout = system_layout(rendered[0]["content"])
    assert [s.kind for s in layout.spans] == ["instruction"]


def test_autogen_memory_after_the_question_is_context() -> None:
    comps = _split(LAYOUTS["autogen_memory_rag"].render(ITEMS[0]))
    assert comps.question[0].path == ("messages", 1, "content")
    label = [i for i in comps.instruction if i.path == ("messages", 2, "content")]
    assert [i.text for i in label] == ["Relevant memory content:"]


def test_json_retrieval_results_compress_values_and_stay_valid_json() -> None:
    item = ITEMS[0]
    rendered = LAYOUTS["tool_result_retrieval"].render(item)
    assert isinstance(rendered, list)
    comps = _split(rendered)
    docs = [d for d in comps.demonstrations if d.compressible]
    # Compress every document to its first three words: still JSON, same keys and titles.
    new = replacements_for(comps, {d: " ".join(d.text.split()[:3]) for d in docs})
    [(path, text)] = new.items()
    assert path == ("messages", 2, "content")
    parsed = json.loads(text)
    assert [r["title"] for r in parsed] == [d.title for d in item.documents]
    assert all(len(r["content"].split()) == 3 for r in parsed)
    # Non-document JSON stays protected, and escaped values are never spans.
    assert json_documents('{"temp": 21, "unit": "C"}') == []
    escaped = json.dumps([{"content": "a \"quoted\" " + "word " * 20}] * 2)
    assert json_documents(escaped) == []
    value = "see https://a.example.com/x/y/z?q=1 and b c d"
    rows = json.dumps([{"k": i, "v": value} for i in (1, 2)])
    assert json_documents(rows) == []  # short values of a data table: not documents


def _spans(text: str, kind: str) -> list[str]:
    return [text[s.start : s.end] for s in final_layout(text).spans if s.kind == kind]


DOCS = [
    "The Harrow depot opened in 1998 and handles about four hundred parcels every single day.",
    "Staff at the Harrow depot park in the north lot because the south lot is being resurfaced.",
    "The gate code for the Harrow depot loading bay was changed in March to the number 4471.",
]


def test_variants_no_rule_was_written_for() -> None:
    # Other labels and orders than the corpus: "User question", "Sources", "Final answer".
    joined = "\n\n".join(DOCS)
    text = f"Sources:\n{joined}\n\nUser question: What is the gate code?\nFinal answer:"
    assert _spans(text, "question") == ["What is the gate code?"]
    assert _spans(text, "context") == DOCS
    # Question first, numbered passages, trailing instruction paragraph without a label.
    numbered = "\n".join(f"{i}) {d}" for i, d in enumerate(DOCS, 1))
    text = f"Q: What is the gate code?\n\nPassages:\n{numbered}\n\nBe brief and cite passages."
    assert _spans(text, "question") == ["What is the gate code?"]
    assert _spans(text, "context") == [f"{i}) {d}" for i, d in enumerate(DOCS, 1)]
    # No labels: "===" rules around each document, the question, then an instruction.
    ruled = "".join(f"{d}\n=====\n" for d in DOCS)
    text = f"{ruled}\nWhat is the gate code?\n\nAnswer in one word."
    assert _spans(text, "question") == ["What is the gate code?"]
    assert _spans(text, "context") == DOCS
    assert _spans(text, "instruction")[-1] == "Answer in one word."
    # Rules between documents (none after the last one), then the question.
    text = "\n---\n".join(DOCS) + "\n\nWhat is the gate code?"
    assert _spans(text, "context") == DOCS
    assert _spans(text, "question") == ["What is the gate code?"]


def test_a_question_label_inside_pasted_text_is_not_the_question() -> None:
    text = "Notes from the call.\nQuestion: raised by Ann about parking.\n\nWhat did Ann ask?"
    assert _spans(text, "question") == ["What did Ann ask?"]


def test_tool_and_unanswered_user_texts_are_cut_into_documents() -> None:
    assert [s.kind for s in context_layout("\n\n".join(DOCS)).spans] == ["context"] * 3
    lines = context_layout("\n".join(DOCS))
    assert [s.kind for s in lines.spans] == ["context"] * 3 and lines.rules == ("lines",)
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": d} for d in DOCS
    ] + [{"role": "user", "content": "What is the gate code?"}]
    comps = split_chat({"messages": messages})
    assert all(d.retrieved for d in comps.demonstrations) and len(comps.demonstrations) == 3


def test_few_shot_turns_are_not_context_for_the_question() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "What is 3 + 3?"},
        ]
    }
    comps = split_chat(body)
    assert [d.retrieved for d in comps.demonstrations] == [False, False]


def test_mapping_summary_names_counts_and_rules() -> None:
    comps = _split(LAYOUTS["haystack_rag"].render(ITEMS[1]))
    summary = comps.mapping()
    assert summary.startswith("instruction=3; context=")
    assert "question=1" in summary and "question_label" in summary and "context_label" in summary


def test_a_question_forwarded_in_an_earlier_turn_still_ranks_the_new_context() -> None:
    from proxy.compression.plan import plan_units
    from proxy.policy.model import CompressionPolicy

    rendered = LAYOUTS["langgraph_agent"].render(ITEMS[0])
    assert isinstance(rendered, list)
    comps = _split(rendered)
    # What the step hands the planner when the question's message is frozen (step._tail).
    frozen = dataclasses.replace(comps, items=tuple(
        dataclasses.replace(i, compressible=False, reason="frozen") if i.kind == "question" else i
        for i in comps.items
    ))
    [unit] = plan_units(frozen, CompressionPolicy(), rate=0.33, original_tokens=1000,
                        tenant="t", model_id="m").units
    assert unit.question_aware and unit.question_text == ITEMS[0].question
    assert unit.question is None  # ranks, is never rewritten
