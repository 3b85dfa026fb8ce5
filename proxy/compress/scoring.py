"""Per-token negative log-likelihood under the small LM.

The base model runs to hidden states; the output head, log-sum-exp and gather
run over chunks of rows, so no float [tokens x vocab] tensor ever exists (the
reference package's GPU memory blow-up). Only positions whose loss is needed go
through the head at all. Sequences longer than the model context are scored in
overlapping sliding windows. ``Stream`` carries a ``DynamicCache`` of the
already-compressed prefix for the iterative (ITPC) stage.

Every forward is a job (``proxy.compress.forward``) run in a padded shape fixed by its
own lengths. With a ``batcher`` (``proxy.compress.batching.BatchEngine``) the jobs of
concurrent requests share forwards in the batcher's thread; without one they run in
the calling thread. The results are the same bytes either way.

Everything here is per call: a ``Scorer`` holds only the model, the tokenizer and the
(thread-safe) batcher, so one instance serves many threads.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from proxy.compress.batching import Job
from proxy.compress.forward import (
    ScoreJob,
    StepJob,
    StepResult,
    WindowJob,
    as_cache,
    run_local,
)

__all__ = ["Batcher", "Encoded", "Scorer", "Stream"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]

# Rows of logits materialised at once: ~64 MB of float32 whatever the vocabulary.
_HEAD_ELEMENTS = 1 << 24


def _cache_kwarg(model_type: Any) -> str:
    # transformers 5 renamed `past_key_values` to `cache`; older models keep the old name.
    params = inspect.signature(model_type.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class Batcher(Protocol):
    """Runs jobs, batched with other callers' jobs; see ``proxy.compress.batching``."""

    def submit_many(self, jobs: Sequence[Job[Any]]) -> list[Future[Any]]: ...


@dataclass(frozen=True)
class Encoded:
    ids: IntArray  # scoring-token ids, no special tokens
    starts: IntArray  # char offset where each token starts


@dataclass(frozen=True)
class Scorer:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    batcher: Batcher | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context(self) -> int:
        n = getattr(self.model.config, "max_position_embeddings", None) or 2048
        return max(16, int(n))

    @property
    def start_id(self) -> int:
        tok = self.tokenizer
        for candidate in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id):
            if candidate is not None:
                return int(candidate)
        return 0

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        return int(pad) if pad is not None else 0

    def encode(self, text: str) -> Encoded:
        if not text:
            return Encoded(np.zeros(0, np.int64), np.zeros(0, np.int64))
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:  # the Rust tokenizer: no shared padding state, thread-safe
            enc = backend.encode(text, add_special_tokens=False)
            ids, offsets = enc.ids, enc.offsets
        else:
            out = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
            ids, offsets = out["input_ids"], out["offset_mapping"]
        starts = np.asarray([o[0] for o in offsets], dtype=np.int64)
        if starts.size:  # special/empty-span tokens: attach to what precedes them
            starts = np.maximum.accumulate(starts)
        return Encoded(np.asarray(ids, dtype=np.int64), starts)

    # --- low level -------------------------------------------------------------

    def hidden(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        base: Any = self.model.base_model
        kwargs: dict[str, Any] = {_cache_kwarg(type(base)): cache}
        if positions is not None:
            kwargs["position_ids"] = positions
        out = base(input_ids=ids, attention_mask=mask, use_cache=cache is not None, **kwargs)
        hidden: torch.Tensor = out.last_hidden_state
        return hidden

    def head_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """NLL of ``targets`` [N] given the hidden states [N, d] that predict them (float32)."""
        head: Any = self.model.get_output_embeddings()  # type: ignore[no-untyped-call]
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        vocab = int(head.weight.shape[0])
        rows = max(1, _HEAD_ELEMENTS // vocab)
        out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
        for i in range(0, targets.shape[0], rows):
            logits = head(hidden[i : i + rows]).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            picked = logits.gather(1, targets[i : i + rows, None]).squeeze(1)
            out[i : i + rows] = torch.logsumexp(logits, dim=-1) - picked
        return out

    # --- whole sequences ---------------------------------------------------------

    def score(
        self, seqs: Sequence[IntArray], skip: Sequence[int] | None = None
    ) -> list[FloatArray]:
        """NLL of the tokens of each sequence, each conditioned on a start token + its prefix.

        With ``skip``, the first ``skip[i]`` tokens of sequence ``i`` are context only:
        they are not put through the output head and not returned.
        """
        skips = list(skip) if skip is not None else [0] * len(seqs)
        jobs: list[Job[FloatArray]] = []
        where: list[int] = []
        results = [np.zeros(0, np.float32) for _ in seqs]
        for i, s in enumerate(seqs):
            if len(s) >= self.context:
                jobs.append(WindowJob(self, s))
            elif len(s):
                jobs.append(ScoreJob(self, s, skips[i]))
            else:
                continue
            where.append(i)
        for i, job, nll in zip(where, jobs, self.run(jobs), strict=True):
            results[i] = nll[skips[i] :] if isinstance(job, WindowJob) else nll
        return results

    def run(self, jobs: Sequence[Job[Any]]) -> list[Any]:
        """Results of ``jobs``, through the batcher when there is one."""
        if not jobs:
            return []
        if self.batcher is None:
            return run_local(jobs, self._local_budget)
        return [f.result() for f in self.batcher.submit_many(jobs)]

    @property
    def _local_budget(self) -> int:
        # Padded tokens per forward without a batcher: one big batch on a GPU; on a CPU
        # a few thousand keep activations in cache.
        return 4096 if self.device.type == "cpu" else 32768

    def _score_batch(
        self, seqs: Sequence[IntArray], skips: Sequence[int] | None = None
    ) -> list[FloatArray]:
        """Score short sequences (each below the context) in the calling thread."""
        ks = list(skips) if skips is not None else [0] * len(seqs)
        out: list[FloatArray] = run_local(
            [ScoreJob(self, s, k) for s, k in zip(seqs, ks, strict=True)], self._local_budget
        )
        return out

    def score_windowed(self, seq: IntArray) -> FloatArray:
        """Sliding windows: each window re-reads the previous half context, scores the next half."""
        ctx = self.context - 1
        half = ctx // 2
        out = np.zeros(len(seq), np.float32)
        done = 0
        while done < len(seq):
            left = max(0, done - half)
            right = min(len(seq), left + ctx)
            window = torch.tensor([self.start_id, *seq[left:right].tolist()], device=self.device)
            hidden = self.hidden(window[None])[0]
            lo = done - left  # first position of this window to score
            nll = self.head_nll(hidden[lo : right - left], window[lo + 1 : right - left + 1])
            out[done:right] = nll.cpu().numpy()
            done = right
        return out

    def mean_nll(self, ids: IntArray) -> float:
        if len(ids) == 0:
            return 0.0
        return float(np.mean(self.score([ids])[0]))


@dataclass
class Stream:
    """The compressed prefix of one ITPC run (its KV cache), scored segment by segment.

    Mutable, but private to one ``compress`` call.
    """

    scorer: Scorer
    past: torch.Tensor | None = None  # packed KV cache (see forward.StepResult.past)
    in_cache: list[int] = field(default_factory=list)  # ids the cache holds (after the start token)
    last_hidden: torch.Tensor | None = None  # hidden state of the last cached token

    @property
    def cache(self) -> DynamicCache | None:
        """The compressed prefix's KV cache as transformers sees it (a copy; for inspection)."""
        return as_cache(self.scorer, self.past) if self.past is not None else None

    def step(self, append: IntArray, segment: IntArray, need: npt.NDArray[np.bool_]) -> FloatArray:
        """Add ``append`` (kept tokens) to the prefix and return NLLs of ``segment`` given it.

        Only positions where ``need`` is true are scored (others are NaN). The
        segment itself is not kept in the cache.
        """
        sc = self.scorer
        prefix_ids = append.tolist()
        past = self.past
        if past is None or len(self.in_cache) + len(prefix_ids) + len(segment) + 1 > sc.context:
            # Start over on the tail of the compressed text (a sliding window over the prefix).
            keep = max(0, sc.context // 2 - len(segment))
            tail = (self.in_cache + prefix_ids)[-keep:] if keep else []
            self.in_cache = []
            prefix_ids = [sc.start_id, *tail]
            extended = tail
            past = None
        else:
            extended = prefix_ids
        inputs = np.asarray([*prefix_ids, *segment.tolist()], dtype=np.int64)
        if not len(inputs):
            return np.zeros(0, np.float32)
        job = StepJob(
            sc,
            past,
            int(past.shape[3]) if past is not None else 0,
            inputs,
            len(prefix_ids),
            np.flatnonzero(need).astype(np.int64),
            self.last_hidden,
        )
        done: StepResult = sc.run([job])[0]
        self.past = done.past
        self.last_hidden = done.last_hidden
        self.in_cache.extend(extended)
        return done.nll
