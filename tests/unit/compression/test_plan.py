from proxy.compression.messages import split_chat, text_token_count
from proxy.compression.plan import plan_units, ranks_by_question
from proxy.policy.model import CompressionPolicy

FEWSHOT = [
    {"role": "system", "content": "You are a careful math tutor. Answer with a number."},
    {"role": "user", "content": "Tom has 3 apples and buys 5 more. How many apples?"},
    {"role": "assistant", "content": "Tom has 3 + 5 = 8 apples. The answer is 8."},
    {"role": "user", "content": "A box holds 12 eggs. How many eggs are in 4 boxes?"},
    {"role": "assistant", "content": "4 boxes hold 4 * 12 = 48 eggs. The answer is 48."},
]


def _plan(question: str, policy: CompressionPolicy, rate: float = 0.5, tenant: str = "a",
          **floor: int):
    body = {"model": "gpt-4", "messages": [*FEWSHOT, {"role": "user", "content": question}]}
    comps = split_chat(body)
    return plan_units(comps, policy, rate=rate, original_tokens=text_token_count(comps),
                      tenant=tenant, model_id="m", **floor)


def test_context_unit_independent_of_question_when_question_kept_whole() -> None:
    policy = CompressionPolicy(mode="enforce")
    a = _plan("How many legs do 3 cats have?", policy)
    b = _plan("How many legs do 4 dogs have?", policy)
    assert [u.kind for u in a.units] == ["context"]
    assert a.units[0].question is None and a.units[0].question_text == ""
    assert a.units[0].key == b.units[0].key  # shared few-shot block: one cache entry


def test_question_joins_the_unit_when_it_matters() -> None:
    policy = CompressionPolicy(mode="enforce", question_aware=True)
    a = _plan("How many legs do 3 cats have?", policy)
    b = _plan("How many legs do 4 dogs have?", policy)
    assert a.units[0].question is not None
    assert a.units[0].key != b.units[0].key


def test_instruction_units_only_below_rate_one() -> None:
    assert [u.kind for u in _plan("Q?", CompressionPolicy(mode="enforce")).units] == ["context"]
    kinds = [u.kind for u in _plan("Q?", CompressionPolicy(mode="enforce",
                                                          instruction_rate=0.5)).units]
    assert kinds == ["instruction", "context"]


def test_keys_are_per_tenant_and_per_knob() -> None:
    policy = CompressionPolicy(mode="enforce")
    a = _plan("Q?", policy, tenant="a").units[0].key
    b = _plan("Q?", policy, tenant="b").units[0].key
    c = _plan("Q?", CompressionPolicy(mode="enforce", segment_tokens=64), tenant="a").units[0].key
    assert len({a, b, c}) == 3
    assert "Tom" not in a  # digests only


def test_the_rate_applies_to_the_demonstrations_not_to_parts_kept_whole() -> None:
    # Instruction and question are kept whole; they are not paid for out of the
    # demonstrations' budget (issue 18: a long system prompt must not erase a conversation).
    unit = _plan("How many legs do 3 cats have?", CompressionPolicy(mode="enforce")).units[0]
    assert unit.rate == 0.5
    long_question = "How many legs do 3 cats have? " * 40
    assert _plan(long_question, CompressionPolicy(mode="enforce")).units[0].rate == 0.5


def test_a_forward_floor_raises_the_context_rate_or_drops_the_unit() -> None:
    policy = CompressionPolicy(mode="enforce")
    base = _plan("Q?", policy).units[0]
    raised = _plan("Q?", policy, min_forward_tokens=1024, other_forward_tokens=960).units
    assert raised and raised[0].rate > base.rate
    assert round(raised[0].rate / 0.02) * 0.02 == round(raised[0].rate, 4)
    assert _plan("Q?", policy, min_forward_tokens=5000, other_forward_tokens=0).units == ()


def _docs_plan(question: str, policy: CompressionPolicy):
    docs = "\n---\n".join(
        f"Record {n}: the {name} depot opened in {1900 + n} and has {n * 7} staff."
        for n, name in enumerate(["Kestrel", "Marlow", "Oakhurst", "Pinewood"], 1)
    )
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": f"{docs}\n\n{question}"}]}
    comps = split_chat(body)
    return plan_units(comps, policy, rate=0.5, original_tokens=text_token_count(comps),
                      tenant="a", model_id="m")


def test_auto_ranks_retrieved_documents_by_the_question() -> None:
    policy = CompressionPolicy(mode="enforce")
    assert policy.question_aware == "auto"
    a = _docs_plan("When did the Marlow depot open?", policy).units[0]
    b = _docs_plan("How many staff has Pinewood?", policy).units[0]
    assert a.question_aware and a.question_text == "When did the Marlow depot open?"
    assert a.key != b.key


def test_auto_keeps_few_shot_turns_question_independent() -> None:
    unit = _plan("How many legs do 3 cats have?", CompressionPolicy(mode="enforce")).units[0]
    assert not unit.question_aware and unit.question_text == ""


def test_explicit_settings_override_auto() -> None:
    off = _docs_plan("When did the Marlow depot open?",
                     CompressionPolicy(mode="enforce", question_aware=False)).units[0]
    assert not off.question_aware and off.question_text == ""
    on = _plan("How many legs do 3 cats have?",
               CompressionPolicy(mode="enforce", question_aware=True)).units[0]
    assert on.question_aware and on.question_text


def test_ranks_by_question_needs_something_to_rank() -> None:
    comps = split_chat({"messages": [
        {"role": "tool", "tool_call_id": "c", "content": "Only one result here."},
        {"role": "user", "content": "What does it say?"},
    ]})
    demos = comps.demonstrations
    assert len(demos) == 1 and demos[0].retrieved
    assert not ranks_by_question("auto", demos)
    assert ranks_by_question(True, demos)
