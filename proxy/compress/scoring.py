"""Per-token negative log-likelihood under the small LM.

The base model runs to hidden states; the output head, log-sum-exp and gather
run over chunks of rows, so no float [tokens x vocab] tensor ever exists (the
reference package's GPU memory blow-up). Only positions whose loss is needed go
through the head at all. Sequences longer than the model context are scored in
overlapping sliding windows. ``Stream`` carries a ``DynamicCache`` of the
already-compressed prefix for the iterative (ITPC) stage.

Everything here is per call: a ``Scorer`` holds only the model and tokenizer, so
one instance serves many threads.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["Encoded", "Scorer", "Stream"]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]

# Rows of logits materialised at once: ~64 MB of float32 whatever the vocabulary.
_HEAD_ELEMENTS = 1 << 24


def _cache_kwarg(model_type: Any) -> str:
    # transformers 5 renamed `past_key_values` to `cache`; older models keep the old name.
    params = inspect.signature(model_type.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@dataclass(frozen=True)
class Encoded:
    ids: IntArray  # scoring-token ids, no special tokens
    starts: IntArray  # char offset where each token starts


@dataclass(frozen=True)
class Scorer:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase

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

    def _hidden(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
    ) -> torch.Tensor:
        base: Any = self.model.base_model
        kwargs = {_cache_kwarg(type(base)): cache}
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
        results: list[FloatArray | None] = [None] * len(seqs)
        short = [i for i, s in enumerate(seqs) if 0 < len(s) < self.context]
        for i, s in enumerate(seqs):
            if len(s) == 0:
                results[i] = np.zeros(0, np.float32)
            elif len(s) >= self.context:
                results[i] = self._score_windowed(s)[skips[i] :]
        for batch in self._batches([len(seqs[i]) for i in short]):
            members = [short[j] for j in batch]
            scored = self._score_batch([seqs[i] for i in members], [skips[i] for i in members])
            for i, nll in zip(members, scored, strict=True):
                results[i] = nll
        return [r if r is not None else np.zeros(0, np.float32) for r in results]

    def _batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Group sequences of similar length into padded batches (sorted, stable).

        On CPU padding is wasted work, so a batch may carry at most 15% of it (prefix-
        truncated demonstrations are nearly equal in length and batch well); on GPU one
        big batch beats many small ones, so only a token budget applies.
        """
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        gpu = self.device.type != "cpu"
        budget, waste = (32768, 1.0) if gpu else (4096, 0.15)
        batches: list[list[int]] = []
        current: list[int] = []
        real = 0
        for i in order:
            width = lengths[i] + 1  # sorted: the newcomer is the longest
            padded = (len(current) + 1) * width
            if current and (padded > budget or padded - (real + width) > waste * padded):
                batches.append(current)
                current, real = [], 0
            current.append(i)
            real += width
        if current:
            batches.append(current)
        return batches

    def _score_batch(
        self, seqs: Sequence[IntArray], skips: Sequence[int] | None = None
    ) -> list[FloatArray]:
        skips = list(skips) if skips is not None else [0] * len(seqs)
        width = max(len(s) for s in seqs) + 1
        ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        wanted = torch.zeros((len(seqs), width - 1), dtype=torch.bool)
        for row, s in enumerate(seqs):
            ids[row, 0] = self.start_id
            ids[row, 1 : len(s) + 1] = torch.from_numpy(s)
            mask[row, : len(s) + 1] = 1
            wanted[row, skips[row] : len(s)] = True
        dev = self.device
        ids, mask = ids.to(dev), mask.to(dev)
        hidden = self._hidden(ids, mask if len(seqs) > 1 else None)
        valid = wanted.to(dev)
        nll = self.head_nll(hidden[:, :-1][valid], ids[:, 1:][valid]).cpu().numpy()
        out: list[FloatArray] = []
        pos = 0
        for s, k in zip(seqs, skips, strict=True):
            n = max(0, len(s) - k)
            out.append(nll[pos : pos + n].astype(np.float32))
            pos += n
        return out

    def _score_windowed(self, seq: IntArray) -> FloatArray:
        """Sliding windows: each window re-reads the previous half context, scores the next half."""
        ctx = self.context - 1
        half = ctx // 2
        out = np.zeros(len(seq), np.float32)
        done = 0
        while done < len(seq):
            left = max(0, done - half)
            right = min(len(seq), left + ctx)
            window = torch.tensor([self.start_id, *seq[left:right].tolist()], device=self.device)
            hidden = self._hidden(window[None])[0]
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
    cache: DynamicCache | None = None
    in_cache: list[int] = field(default_factory=list)  # ids the cache holds (after the start token)
    last_hidden: torch.Tensor | None = None  # hidden state of the last cached token

    def step(self, append: IntArray, segment: IntArray, need: npt.NDArray[np.bool_]) -> FloatArray:
        """Add ``append`` (kept tokens) to the prefix and return NLLs of ``segment`` given it.

        Only positions where ``need`` is true are scored (others are NaN). The
        segment itself is not kept in the cache.
        """
        sc = self.scorer
        prefix_ids = append.tolist()
        if (
            self.cache is None
            or len(self.in_cache) + len(prefix_ids) + len(segment) + 1 > sc.context
        ):
            # Start over on the tail of the compressed text (a sliding window over the prefix).
            keep = max(0, sc.context // 2 - len(segment))
            tail = (self.in_cache + prefix_ids)[-keep:] if keep else []
            self.cache = DynamicCache(config=sc.model.config)
            self.in_cache = []
            prefix_ids = [sc.start_id, *tail]
            extended = tail
        else:
            extended = prefix_ids
        inputs = torch.tensor([*prefix_ids, *segment.tolist()], dtype=torch.long, device=sc.device)
        hidden = sc._hidden(inputs[None], cache=self.cache)[0]
        n_prefix = len(prefix_ids)
        prev = (
            torch.cat([self.last_hidden[None], hidden], 0) if self.last_hidden is not None else None
        )
        # Row r of `pred` predicts segment token r.
        if n_prefix:
            pred = hidden[n_prefix - 1 : n_prefix - 1 + len(segment)]
        else:
            assert prev is not None
            pred = prev[: len(segment)]
        out = np.full(len(segment), np.nan, dtype=np.float32)
        idx = np.flatnonzero(need)
        if idx.size:
            sel = torch.from_numpy(idx).to(sc.device)
            targets = torch.from_numpy(segment[idx]).to(sc.device)
            out[idx] = sc.head_nll(pred[sel], targets).cpu().numpy()
        if n_prefix:
            self.last_hidden = hidden[n_prefix - 1].clone()
        if len(segment):
            self.cache.crop(-len(segment))  # current Cache API: negative = drop that many
        self.in_cache.extend(extended)
        return out
