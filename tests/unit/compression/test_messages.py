from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from proxy.compression.messages import (
    Item,
    compressor_inputs,
    replacements_for,
    split_chat,
    split_completion,
    split_documents,
    text_token_count,
)
from proxy.core.tokens import count_tokens


def kinds(body: dict[str, Any], **kw: bool) -> list[tuple[str, tuple[str | int, ...], str]]:
    return [(i.kind, i.path, i.text) for i in split_chat(body, **kw).items]


def test_roles_map_to_instruction_demonstrations_question() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Q: 2+2?"},
            {"role": "assistant", "content": "A: 4", "name": "bot"},
            {"role": "user", "content": "Q: 3+3?"},
        ],
    }
    assert kinds(body) == [
        ("instruction", ("messages", 0, "content"), "You are terse."),
        ("instruction", ("messages", 1, "content", 0, "text"), "Answer in French."),
        ("demonstration", ("messages", 2, "content"), "Q: 2+2?"),
        ("demonstration", ("messages", 3, "content"), "A: 4"),
        ("instruction", ("messages", 4, "content"), "Q:"),  # a label: template, kept verbatim
        ("question", ("messages", 4, "content"), "3+3?"),
    ]


def test_final_turn_last_paragraph_is_the_question() -> None:
    text = "  Long context paragraph one.\n\nParagraph two.\n \nWhat is the answer?\n"
    items = split_chat({"messages": [{"role": "user", "content": text}]}).items
    assert [(i.kind, i.text) for i in items] == [
        ("demonstration", "Long context paragraph one."),  # paragraphs: the budget's units
        ("demonstration", "Paragraph two."),
        ("question", "What is the answer?"),
    ]
    for item in items:
        assert text[item.start : item.end] == item.text


def test_non_text_parts_tool_calls_and_refusals_are_never_items() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
            {"role": "tool", "tool_call_id": "call_2", "content": "It is sunny in Paris today."},
            {
                "role": "assistant",
                "content": [
                    {"type": "refusal", "refusal": "no"},
                    {"type": "text", "text": "Sunny, 21C."},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Here is a photo."},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
                    {"type": "text", "text": "What is in it?"},
                ],
            },
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
    }
    comps = split_chat(body)
    paths = {i.path for i in comps.items}
    assert paths == {
        ("messages", 0, "content"),
        ("messages", 2, "content"),
        ("messages", 3, "content"),
        ("messages", 4, "content", 1, "text"),
        ("messages", 5, "content", 0, "text"),
        ("messages", 5, "content", 3, "text"),
    }
    [json_tool] = [i for i in comps.items if i.path == ("messages", 2, "content")]
    assert not json_tool.compressible and json_tool.reason == "json_tool_result"
    assert [i.text for i in comps.question] == ["What is in it?"]
    assert ("messages", 5, "content", 0, "text") in {i.path for i in comps.demonstrations}
    allowed = split_chat(body, compress_json_tool_results=True)
    assert all(i.compressible for i in allowed.items)


def test_documents_in_tags_separators_and_headers() -> None:
    tagged = "Use these.\n<document id=1>Alpha text.</document>\n<document>Beta text.</document>"
    assert [tagged[s:e] for s, e in split_documents(tagged)] == [
        "Use these.",
        "Alpha text.",
        "Beta text.",
    ]
    separated = "First doc.\n---\nSecond doc.\n=====\n\nThird doc."
    assert [separated[s:e] for s, e in split_documents(separated)] == [
        "First doc.",
        "Second doc.",
        "Third doc.",
    ]
    headed = "Answer from the results.\nDocument [1](Title: A) alpha.\nDocument [2](Title: B) beta."
    assert [headed[s:e] for s, e in split_documents(headed)] == [
        "Answer from the results.",
        "(Title: A) alpha.",
        "(Title: B) beta.",
    ]
    assert split_documents("  plain  ") == [(2, 7)]
    assert split_documents(" \n ") == []


def test_final_turn_with_documents() -> None:
    nq = (
        "Write an answer using the search results.\n\nDocument [1](Title: A) Alpha.\n\n"
        "Document [2](Title: B) Beta.\n\nQuestion: who?\nAnswer:"
    )
    items = split_chat({"messages": [{"role": "user", "content": nq}]}).items
    assert [(i.kind, i.text, i.compressible) for i in items] == [
        # The text around delimited documents is template: labels, headers, instructions.
        ("instruction", "Write an answer using the search results.\n\nDocument [1]", False),
        ("demonstration", "(Title: A) Alpha.", True),
        ("instruction", "Document [2]", False),
        ("demonstration", "(Title: B) Beta.", True),
        ("instruction", "Question:", False),
        ("question", "who?", True),
        ("instruction", "Answer:", False),
    ]
    q_first = "Summarise the documents.\n<document>One.</document><document>Two.</document>"
    items = split_chat({"messages": [{"role": "user", "content": q_first}]}).items
    assert [(i.kind, i.text) for i in items] == [
        ("question", "Summarise the documents."),
        ("instruction", "<document>"),
        ("demonstration", "One."),
        ("instruction", "</document><document>"),
        ("demonstration", "Two."),
        ("instruction", "</document>"),
    ]


def test_json_object_response_format_requires_json_word() -> None:
    body = {
        "messages": [{"role": "user", "content": "Reply in JSON."}],
        "response_format": {"type": "json_object"},
    }
    comps = split_chat(body)
    assert comps.json_word_required and comps.protect_regexes == (r"(?i)\bjson\b",)
    schema = {**body, "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}
    assert split_chat(schema).protect_regexes == ()


def test_malformed_bodies_give_no_items() -> None:
    assert split_chat({}).items == ()
    assert split_chat({"messages": "nope"}).items == ()
    assert (
        split_chat(
            {
                "messages": [
                    1,
                    {"role": "user", "content": 5},
                    {"role": "wizard", "content": "x"},
                    {"content": "no role"},
                ]
            }
        ).items
        == ()
    )


def test_replacements_splice_documents_and_skip_unchanged() -> None:
    text = "Intro.\n---\nDoc one is long.\n---\nDoc two is long.\n---\n\nQuestion?"
    body = {"messages": [{"role": "system", "content": "Sys."}, {"role": "user", "content": text}]}
    comps = split_chat(body)
    demos = comps.demonstrations
    assert [d.text for d in demos] == ["Doc one is long.", "Doc two is long."]  # "Intro.": heading
    new = replacements_for(
        comps, {demos[0]: "Doc one.", demos[1]: "Doc two.", comps.instruction[0]: "Sys."}
    )
    assert new == {
        ("messages", 1, "content"): "Intro.\n---\nDoc one.\n---\nDoc two.\n---\n\nQuestion?"
    }
    assert replacements_for(comps, {}) == {}


def test_replacements_reject_protected_and_foreign_items() -> None:
    body = {"messages": [{"role": "tool", "content": "[1, 2]"}, {"role": "user", "content": "q"}]}
    comps = split_chat(body)
    tool = comps.items[0]
    assert replacements_for(comps, {tool: tool.text}) == {}
    with pytest.raises(ValueError, match="not compressible"):
        replacements_for(comps, {tool: "[1]"})
    stranger = Item("question", ("messages", 9, "content"), 0, 1, "x", "user")
    with pytest.raises(ValueError, match="not part"):
        replacements_for(comps, {stranger: "y"})


@dataclass(frozen=True)
class FakeResult:
    instruction: str
    demonstrations: tuple[str, ...]
    question: str


def test_compressor_inputs_round_trip() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": "Example question one"},
            {"role": "assistant", "content": "Example answer one"},
            {"role": "tool", "content": '{"a": 1}'},
            {"role": "user", "content": "Real question"},
        ]
    }
    comps = split_chat(body)
    inputs = compressor_inputs(comps)
    assert inputs.instruction == "You are a careful assistant."
    assert inputs.demonstrations == ("Example question one", "Example answer one")
    assert inputs.question == "Real question"
    result = FakeResult("You are careful.", ("question one", ""), "Real question")
    new = replacements_for(comps, inputs.assign(result))
    assert new == {
        ("messages", 0, "content"): "You are careful.",
        ("messages", 1, "content"): "question one",
        ("messages", 2, "content"): "",
    }
    with pytest.raises(ValueError):
        inputs.assign(FakeResult("x", ("only one",), "q"))


def test_several_instruction_messages_are_joined_and_not_split_back() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Rule one."},
            {"role": "developer", "content": "Rule two."},
            {"role": "user", "content": "Go."},
        ]
    }
    comps = split_chat(body)
    inputs = compressor_inputs(comps)
    assert inputs.instruction == "Rule one.\n\nRule two."
    mapped = inputs.assign(FakeResult("Rule one. two.", (), "Go."))
    assert all(item.kind != "instruction" for item in mapped)


def test_completion_prompts() -> None:
    prompt = "Context line.\n\nMore context.\n\nFinal ask:"
    comps = split_completion({"model": "gpt-3.5-turbo-instruct", "prompt": prompt})
    assert [(i.kind, i.path, i.text) for i in comps.items] == [
        ("demonstration", ("prompt",), "Context line."),
        ("demonstration", ("prompt",), "More context."),
        ("question", ("prompt",), "Final ask:"),
    ]
    assert split_completion({"prompt": ["a", "b"]}).items == ()
    assert split_completion({"prompt": [1, 2, 3]}).items == ()


# bpe_openai (o200k_base for gpt-4o) calls a deprecated importlib API when it loads.
@pytest.mark.filterwarnings("ignore:open_binary is deprecated:DeprecationWarning")
def test_text_token_count_counts_message_text_only() -> None:
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Hello there"},
                    {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
                ],
            },
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"a": 1}}}],
    }
    comps = split_chat(body)
    expected = count_tokens("You are terse.", "gpt-4o") + count_tokens("Hello there", "gpt-4o")
    assert text_token_count(comps) == expected
    after = text_token_count(comps, replacements={("messages", 0, "content"): "Terse."})
    assert after == count_tokens("Terse.", "gpt-4o") + count_tokens("Hello there", "gpt-4o")


def test_replacements_apply_with_rewrite_byte_faithfully() -> None:
    rewrite = pytest.importorskip("proxy.compression.rewrite")
    raw = (
        b'{"model":"gpt-4o","temperature":1.0,"messages":[{"role":"system","content":'
        b'"You are a very very careful assistant."},{"role":"user","content":[{"type":"text",'
        b'"text":"Doc A.\\n---\\nDoc B \\u00e9."},'
        b'{"type":"image_url","image_url":{"url":"x"}}]},'
        b'{"role":"user","content":"Why?"}], "x_unknown": [1e3]}'
    )
    comps = split_chat(json.loads(raw))
    doc_b = comps.demonstrations[1]
    assert doc_b.text == "Doc B é."
    out = rewrite.replace_strings(raw, replacements_for(comps, {doc_b: "B é"}))
    assert out == raw.replace(b"Doc B \\u00e9.", "B é".encode())


def test_body_text_tokens_matches_the_split_count() -> None:
    from proxy.compression.messages import body_text_tokens

    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Doc one.\n---\nDoc two."},
                                         {"type": "image_url", "image_url": {"url": "x"}}]},
            {"role": "assistant", "content": None, "tool_calls": []},
            {"role": "tool", "tool_call_id": "t", "content": '{"a": 1}'},
            {"role": "user", "content": "What now?\n\nAnswer please."},
        ],
    }
    assert body_text_tokens(body, "gpt-4o") == text_token_count(split_chat(body), "gpt-4o")
    prompt = {"model": "x", "prompt": "Once upon a time.\n\nThe end?"}
    assert body_text_tokens(prompt) == text_token_count(split_completion(prompt))


def test_retrieved_marks_documents_and_tool_results_not_few_shot_turns() -> None:
    nq = (
        "Write an answer using the search results.\n\nDocument [1](Title: A) Alpha.\n\n"
        "Document [2](Title: B) Beta.\n\nQuestion: who?\nAnswer:"
    )
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4"},
            {"role": "tool", "tool_call_id": "c1", "content": "The weather is sunny."},
            {"role": "user", "content": nq},
        ]
    }
    marked = [(i.text, i.retrieved) for i in split_chat(body).items if i.kind == "demonstration"]
    assert marked == [
        ("What is 2 + 2?", False),
        ("4", False),
        ("The weather is sunny.", True),
        ("(Title: A) Alpha.", True),
        ("(Title: B) Beta.", True),
    ]
    plain = "First paragraph.\n\nSecond paragraph.\n\nWhat now?"
    items = split_chat({"messages": [{"role": "user", "content": plain}]}).items
    assert [(i.kind, i.retrieved) for i in items] == [
        ("demonstration", True),  # context pasted before the question: ranked by it under auto
        ("demonstration", True),
        ("question", False),
    ]
    one = {"messages": [{"role": "user", "content": "Only.\n\nWhat now?"}]}
    single = split_chat(one).items
    assert [i.retrieved for i in single] == [False, False]  # one paragraph: nothing to rank


def test_paragraphs_are_never_cut_inside_code_keep_regions_or_brackets() -> None:
    text = (
        "Intro.\n\n```python\nx = 1\n\ny = 2\n```\n\n"
        '{"a": 1,\n\n "b": [1,\n\n2]}\n\n<keep>one\n\ntwo</keep>\n\n'
        "See [1, in prose.\n\n{ never closed,\n\nstill inside.\n\nWhat now?"
    )
    items = split_chat({"messages": [{"role": "user", "content": text}]}).items
    assert [(i.kind, i.text) for i in items] == [
        ("demonstration", "Intro."),
        ("demonstration", "```python\nx = 1\n\ny = 2\n```"),
        ("demonstration", '{"a": 1,\n\n "b": [1,\n\n2]}'),
        ("demonstration", "<keep>one\n\ntwo</keep>"),
        ("demonstration", "See [1, in prose."),  # a stray bracket mid-line: no JSON
        ("demonstration", "{ never closed,\n\nstill inside."),
        ("question", "What now?"),
    ]
    for item in items:
        assert text[item.start : item.end] == item.text
