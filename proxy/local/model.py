"""A small local chat model that generates text token by token.

This is the engine behind the offline embedded upstream (``--upstream local``):
it applies the tokenizer's chat template, then runs a plain decoding loop with a
KV cache so the caller receives text as soon as each token is decoded.

A generation is a pull-based iterator: nothing is computed until the caller
asks for the next piece, and closing it (or dropping it) stops the work. That is
what lets the HTTP layer stop generating the moment a client disconnects.

``LocalChatModel`` holds no per-call state, so one instance may serve several
threads; each ``Generation`` belongs to one caller and must not be advanced
from two threads at once.
"""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

if TYPE_CHECKING:
    from proxy.compress.lm import LoadedLM

__all__ = [
    "ChatMessage",
    "Generation",
    "GenerationParams",
    "LocalChatModel",
    "PromptTooLongError",
]

FinishReason = Literal["stop", "length"]

# ChatML, the format SmolLM2 was tuned on; used by the tiny test model.
_CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class PromptTooLongError(ValueError):
    """The prompt leaves no room in the model's context window."""

    def __init__(self, prompt_tokens: int, context_length: int) -> None:
        super().__init__(
            f"This model's maximum context length is {context_length} tokens; "
            f"the messages resulted in {prompt_tokens} tokens."
        )
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class GenerationParams:
    """Decoding knobs. ``temperature`` 0 means greedy; ``seed`` makes sampling repeatable."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


class Generation:
    """One generation: iterate for text deltas, then read the counters.

    ``finish_reason`` and ``completion_tokens`` are final once iteration ends.
    """

    def __init__(
        self, owner: LocalChatModel, prompt_ids: list[int], params: GenerationParams
    ) -> None:
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None
        self._iterator = owner._decode(prompt_ids, params, self)

    def __iter__(self) -> Iterator[str]:
        return self._iterator

    def __next__(self) -> str:
        return next(self._iterator)

    def close(self) -> None:
        """Stop generating (frees the KV cache); safe to call more than once."""
        self._iterator.close()

    @property
    def closed(self) -> bool:
        """True once the generation has finished or been closed: no more model work."""
        return inspect.getgeneratorstate(self._iterator) == inspect.GEN_CLOSED


class LocalChatModel:
    """A causal LM plus tokenizer with a chat template, ready to answer chat messages."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        name: str,
        context_length: int | None = None,
    ) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"the tokenizer of {name} has no chat template")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.context_length = context_length or int(
            getattr(model.config, "max_position_embeddings", 2048)
        )
        self._device = next(model.parameters()).device
        self._eos_ids = _eos_ids(model, tokenizer)
        # transformers 5 renamed the forward's cache argument; older releases use the old name.
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def load(cls, model: str | None = None, device: str | None = None) -> LocalChatModel:
        """Load ``model`` (HF id or folder; None = the packaged SmolLM2-135M-Instruct)."""
        from proxy.compress.lm import load_causal_lm

        return cls.from_loaded(load_causal_lm(model, device))

    @classmethod
    def from_loaded(cls, loaded: LoadedLM) -> LocalChatModel:
        """Wrap an LM the compressor already loaded: one copy of the weights serves both."""
        return cls(loaded.model, loaded.tokenizer, name=_display_name(loaded.model_id))

    @classmethod
    def tiny(cls, seed: int = 0) -> LocalChatModel:
        """A random 2-layer Llama with a character-level ChatML tokenizer: for tests.

        Builds in well under a second, needs no files and no network; its output is
        deterministic printable ASCII noise.
        """
        from tokenizers import Tokenizer, decoders, models
        from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        chars = [chr(c) for c in range(32, 127)] + ["\n"]
        vocab = {token: i for i, token in enumerate(specials + chars)}
        backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        backend.decoder = decoders.Fuse()
        tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
            tokenizer_object=backend,
            bos_token="<|im_start|>",
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            chat_template=_CHATML_TEMPLATE,
        )
        config = LlamaConfig(
            vocab_size=len(vocab),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            bos_token_id=vocab["<|im_start|>"],
            eos_token_id=vocab["<|im_end|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        model.train(False)
        model.requires_grad_(False)
        return cls(model, tokenizer, name="tiny-random-llama")

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self._prompt_ids(messages))

    def generate(self, messages: Sequence[ChatMessage], params: GenerationParams) -> Generation:
        """Tokenize the prompt now (raising ``PromptTooLongError``); decode lazily on iteration."""
        prompt_ids = self._prompt_ids(messages)
        if len(prompt_ids) >= self.context_length:
            raise PromptTooLongError(len(prompt_ids), self.context_length)
        return Generation(self, prompt_ids, params)

    def _prompt_ids(self, messages: Sequence[ChatMessage]) -> list[int]:
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        encoded: Any = self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        if isinstance(encoded, Mapping):  # some tokenizer versions return a BatchEncoding
            encoded = encoded["input_ids"]
        return [int(i) for i in encoded]

    def _decode(
        self, prompt_ids: list[int], params: GenerationParams, record: Generation
    ) -> Generator[str, None, None]:
        budget = min(params.max_tokens, self.context_length - len(prompt_ids))
        sampler = _Sampler(params, self._device)
        text = _IncrementalText(self.tokenizer)
        stops = _StopScanner(params.stop)
        step_input = torch.tensor([prompt_ids], device=self._device)
        cache: Any = None
        finish: FinishReason = "length"
        while record.completion_tokens < budget:
            with torch.inference_mode():
                out = self.model(input_ids=step_input, use_cache=True, **{self._cache_kw: cache})
                token = sampler.pick(out.logits[0, -1])
            cache = out[self._cache_kw]
            record.completion_tokens += 1
            if token in self._eos_ids:
                finish = "stop"
                break
            visible, stopped = stops.feed(text.push(token))
            if visible:
                yield visible
            if stopped:
                finish = "stop"
                break
            step_input = torch.tensor([[token]], device=self._device)
        if not stops.stopped:
            # Text held back for an incomplete character or a possible stop prefix.
            tail, stopped = stops.feed(text.flush())
            if stopped:
                finish = "stop"
            else:
                tail += stops.release()
            if tail:
                yield tail
        record.finish_reason = finish


class _Sampler:
    """Greedy at temperature 0; otherwise temperature + nucleus sampling on a private RNG."""

    def __init__(self, params: GenerationParams, device: torch.device) -> None:
        self._temperature = params.temperature
        self._top_p = params.top_p
        # A per-generation generator: the global torch RNG is shared between threads.
        self._rng = torch.Generator(device=device)
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        self._rng.manual_seed(seed)

    def pick(self, logits: torch.Tensor) -> int:
        if self._temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.float() / self._temperature, dim=-1)
        if self._top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= self._top_p
            outside[0] = False  # the most likely token always stays (top_p=0 means greedy)
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return int(torch.multinomial(probs, 1, generator=self._rng))


class _IncrementalText:
    """Turns token ids into text deltas without re-decoding the whole output each step.

    Decodes a short window of recent tokens and holds back output while it ends in
    an incomplete UTF-8 sequence (rendered as U+FFFD), so multi-byte characters are
    never split across deltas.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token: int) -> str:
        self._ids.append(token)
        return self._delta(final=False)

    def flush(self) -> str:
        return self._delta(final=True)

    def _delta(self, *, final: bool) -> str:
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]

    def _decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))


class _StopScanner:
    """Cuts the output at the first stop string, holding back text that may start one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, delta: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was found)."""
        if not self._stops:
            return delta, False
        self._pending += delta
        hits = [i for i in (self._pending.find(s) for s in self._stops) if i >= 0]
        if hits:
            self.stopped = True
            visible, self._pending = self._pending[: min(hits)], ""
            return visible, True
        keep = max((_overlap(self._pending, s) for s in self._stops), default=0)
        cut = len(self._pending) - keep
        visible, self._pending = self._pending[:cut], self._pending[cut:]
        return visible, False

    def release(self) -> str:
        pending, self._pending = self._pending, ""
        return pending


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:size]):
            return size
    return 0


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    ids: set[int] = set()
    candidates: list[Any] = [tokenizer.eos_token_id]
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        candidates.append(generation_config.eos_token_id)
    for candidate in candidates:
        if isinstance(candidate, int):
            ids.add(candidate)
        elif isinstance(candidate, list | tuple):
            ids.update(int(i) for i in candidate)
    return frozenset(ids)


def _display_name(model_id: str) -> str:
    """``SmolLM2-135M-Instruct@1a2b…`` or ``/path/to/folder@…`` -> a short model name."""
    name = model_id.split("@", 1)[0].rstrip("/")
    if name.startswith(("/", ".", "~")):
        return name.rsplit("/", 1)[-1]
    return name
