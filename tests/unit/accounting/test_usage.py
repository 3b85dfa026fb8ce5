"""Reading the upstream's usage off relayed bytes."""

from __future__ import annotations

from proxy.accounting.usage import UsageObserver


def test_usage_chunk_in_stream() -> None:
    observer = UsageObserver()
    observer.on_events(b'data: {"choices": [{"delta": {}}], "usage": null}\n\n')
    assert (observer.prompt_tokens, observer.completion_tokens) == (None, None)
    observer.on_events(
        b'data: {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 4}}\n\n'
        b"data: [DONE]\n\n"
    )
    observer.finish()
    assert (observer.prompt_tokens, observer.completion_tokens) == (11, 4)


def test_json_body_in_pieces() -> None:
    observer = UsageObserver()
    for piece in (b'{"id": "x", "usage": {"prompt', b'_tokens": 7, "completion_tokens": 2}}'):
        observer.on_body(piece)
    observer.finish()
    assert (observer.prompt_tokens, observer.completion_tokens) == (7, 2)


def test_garbage_is_ignored() -> None:
    observer = UsageObserver()
    observer.on_body(b"not json")
    observer.on_events(b'data: {"usage": oops}\n\n')
    observer.finish()
    assert observer.prompt_tokens is None and observer.completion_tokens is None


def test_only_the_usage_object_is_read() -> None:
    observer = UsageObserver()
    observer.on_body(
        b'{"choices": [{"message": {"content": "say \\"usage\\": {\\"prompt_tokens\\": 99}"}}],'
    )
    observer.on_body(
        b' "usage" :  {"prompt_tokens": 5, "completion_tokens": 6}, "system_fingerprint": "fp"}'
    )
    observer.finish()
    assert (observer.prompt_tokens, observer.completion_tokens) == (5, 6)
