"""Model forwards as batchable jobs, each run in a shape fixed by its own lengths.

Every forward the compressor makes is one of three jobs: a ``ScoreJob`` (one sequence of
the coarse pass), a ``StepJob`` (one ITPC segment on top of the request's own KV cache)
or a ``WindowJob`` (a sequence longer than the context; never batched). Jobs with the
same ``key`` may run together in one padded forward, whoever submitted them.

Batch invariance by construction: a job's padded shape (its *shape class*) depends only
on its own lengths, and jobs share a forward only with jobs of the same class. On CPU
(fp32, measured on the tiny test model and on SmolLM2-135M) a row's hidden states are
then bit-identical whatever the number of rows, their order and the other rows' content;
only the padded width changes results, in the last bits. The output head runs per job,
on exactly the rows that job needs, so its matmul shape never depends on a neighbour.
Running alone (no batcher) uses the very same classes, so batching on or off gives the
same bytes.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch
from transformers import DynamicCache

from proxy.compress.batching import Job, chunk_by_cost


class Scorer(Protocol):
    """What the forward passes need of `proxy.compress.scoring.Scorer` (defined there, above
    this module: the scorer builds jobs, this module runs them)."""

    @property
    def model(self) -> Any: ...
    @property
    def device(self) -> torch.device: ...
    @property
    def context(self) -> int: ...
    @property
    def start_id(self) -> int: ...
    @property
    def pad_id(self) -> int: ...
    def hidden(self, ids: torch.Tensor, mask: torch.Tensor | None = None,
               cache: DynamicCache | None = None,
               positions: torch.Tensor | None = None) -> torch.Tensor: ...
    def head_nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor: ...
    def score_windowed(self, seq: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]: ...

__all__ = [
    "ScoreJob",
    "StepJob",
    "StepResult",
    "WindowJob",
    "as_cache",
    "run_local",
    "shape_class",
]

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]

# Classes per octave of length: (new tokens / sequence width, cached past). Padding costs
# compute on a CPU, so classes are fine there; on a GPU padding is nearly free and coarse
# classes let more requests share a forward.
_CLASSES = {"cpu": (16, 8)}
_GPU_CLASSES = (4, 4)


def shape_class(n: int, per_octave: int) -> int:
    """Smallest length >= ``n`` of the form ``m * 2**k`` with ``per_octave`` values of ``m``
    per octave (0 stays 0, anything up to 16 becomes 16): padding waste < 1/per_octave."""
    if n <= 0:
        return 0
    if n <= 16:
        return 16
    shift = max(0, (n - 1).bit_length() - per_octave.bit_length())
    step = 1 << shift
    return -(-n // step) * step


def as_cache(scorer: Scorer, past: torch.Tensor | None) -> DynamicCache:
    """A ``DynamicCache`` holding a packed past (see ``StepResult.past``)."""
    layers = (
        [(past[i, 0, None], past[i, 1, None]) for i in range(past.shape[0])]
        if past is not None
        else None
    )
    return DynamicCache(ddp_cache_data=layers, config=scorer.model.config)


def _classes(scorer: Scorer) -> tuple[int, int]:
    return _CLASSES.get(scorer.device.type, _GPU_CLASSES)


@dataclass(frozen=True, eq=False)
class ScoreJob:
    """NLL of ``ids[skip:]``, each token given a start token and the tokens before it."""

    scorer: Scorer
    ids: IntArray
    skip: int = 0

    @property
    def width(self) -> int:
        return shape_class(len(self.ids) + 1, _classes(self.scorer)[0])

    @property
    def key(self) -> Hashable:
        return (id(self.scorer.model), "score", self.width)

    @property
    def cost(self) -> int:
        return self.width

    @property
    def tokens(self) -> int:
        return len(self.ids) + 1

    def run_batch(self, group: Sequence[Any]) -> list[FloatArray]:
        return _run_scores(self.scorer, group)


@dataclass(frozen=True)
class StepResult:
    nll: FloatArray  # per segment token; NaN where not needed
    # The request's KV cache extended by its prefix tokens only, packed in one tensor
    # [layers, 2 (keys, values), kv heads, tokens, head dim]: one copy per request to batch.
    past: torch.Tensor
    last_hidden: torch.Tensor | None


@dataclass(frozen=True, eq=False)
class StepJob:
    """Feed ``inputs`` (``n_prefix`` kept tokens, then the segment) after ``past``.

    The prefix tokens join the request's cache; the segment's tokens are only scored.
    ``last_hidden`` predicts the first segment token when there is no prefix.
    """

    scorer: Scorer
    past: torch.Tensor | None  # packed as in ``StepResult.past``; None when empty
    past_len: int
    inputs: IntArray
    n_prefix: int
    need: IntArray  # segment positions to score
    last_hidden: torch.Tensor | None

    @property
    def past_class(self) -> int:
        return shape_class(self.past_len, _classes(self.scorer)[1])

    @property
    def new_class(self) -> int:
        return shape_class(len(self.inputs), _classes(self.scorer)[0])

    @property
    def key(self) -> Hashable:
        return (id(self.scorer.model), "step", self.past_class, self.new_class)

    @property
    def cost(self) -> int:
        return self.past_class + self.new_class

    @property
    def tokens(self) -> int:
        return len(self.inputs)

    def run_batch(self, group: Sequence[Any]) -> list[StepResult]:
        return _run_steps(self.scorer, group)


@dataclass(frozen=True, eq=False)
class WindowJob:
    """A sequence longer than the model context, scored in sliding windows on its own."""

    scorer: Scorer
    ids: IntArray

    @property
    def key(self) -> Hashable:
        return (id(self), "window")

    @property
    def cost(self) -> int:
        return self.scorer.context

    @property
    def tokens(self) -> int:
        return len(self.ids)  # re-read overlaps not counted

    def run_batch(self, group: Sequence[Any]) -> list[FloatArray]:
        with torch.inference_mode():
            return [self.scorer.score_windowed(job.ids) for job in group]


def run_local(jobs: Sequence[Job[Any]], budget: int) -> list[Any]:
    """Run jobs in the calling thread: same-key jobs together, up to ``budget`` tokens each."""
    groups: dict[Hashable, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.key, []).append(i)
    results: list[Any] = [None] * len(jobs)
    for members in groups.values():
        for chunk in chunk_by_cost([jobs[i] for i in members], budget, members):
            outs = jobs[chunk[0]].run_batch([jobs[i] for i in chunk])
            for i, out in zip(chunk, outs, strict=True):
                results[i] = out
    return results


def _run_scores(sc: Scorer, group: Sequence[ScoreJob]) -> list[FloatArray]:
    width = group[0].width
    ids = torch.full((len(group), width), sc.pad_id, dtype=torch.long)
    mask = torch.zeros((len(group), width), dtype=torch.long)
    for row, job in enumerate(group):
        n = len(job.ids)
        ids[row, 0] = sc.start_id
        ids[row, 1 : n + 1] = torch.from_numpy(job.ids)
        mask[row, : n + 1] = 1
    dev = sc.device
    with torch.inference_mode():
        ids, mask = ids.to(dev), mask.to(dev)
        hidden = sc.hidden(ids, mask)
        parts = []
        for row, job in enumerate(group):  # the head per row: its shape is the row's own
            n, k = len(job.ids), min(job.skip, len(job.ids))
            parts.append(sc.head_nll(hidden[row, k:n], ids[row, k + 1 : n + 1]))
        flat = torch.cat(parts).cpu().numpy().astype(np.float32)  # one device->host transfer
    ends = np.cumsum([len(p) for p in parts])
    return list(np.split(flat, ends[:-1]))


def _batch_cache(sc: Scorer, group: Sequence[StepJob], width: int) -> DynamicCache:
    """The group's caches right-padded to ``width`` positions (pads are masked out)."""
    first = group[0].past
    if width == 0 or first is None:
        return DynamicCache(config=sc.model.config)
    if len(group) == 1 and group[0].past_len == width:
        batch = first[:, :, None]
    else:
        shape = (first.shape[0], 2, len(group), first.shape[2], width, first.shape[4])
        batch = first.new_zeros(shape)
        for row, job in enumerate(group):
            assert job.past is not None  # same class, width > 0: every row has a past
            batch[:, :, row, :, : job.past_len] = job.past
    layers = [(batch[i, 0], batch[i, 1]) for i in range(batch.shape[0])]
    return DynamicCache(ddp_cache_data=layers, config=sc.model.config)


def _run_steps(sc: Scorer, group: Sequence[StepJob]) -> list[StepResult]:
    past_w, new_w = group[0].past_class, group[0].new_class
    rows = len(group)
    ids = torch.full((rows, new_w), sc.pad_id, dtype=torch.long)
    mask = torch.zeros((rows, past_w + new_w), dtype=torch.long)
    positions = torch.arange(new_w, dtype=torch.long).repeat(rows, 1)
    for row, job in enumerate(group):
        n = len(job.inputs)
        ids[row, :n] = torch.from_numpy(job.inputs)
        mask[row, : job.past_len] = 1
        mask[row, past_w : past_w + n] = 1
        positions[row] += job.past_len  # true positions: RoPE must not see the padding
    dev = sc.device
    with torch.inference_mode():
        cache = _batch_cache(sc, group, past_w)
        hidden = sc.hidden(ids.to(dev), mask.to(dev), cache=cache, positions=positions.to(dev))
        most = max(job.n_prefix for job in group)
        layers: list[Any] = list(cache.layers)
        # [layers, 2, rows, heads, most, dim]: every row's new prefix entries, in one tensor.
        fresh = torch.stack(
            [
                torch.stack(
                    (x.keys[:, :, past_w : past_w + most], x.values[:, :, past_w : past_w + most])
                )
                for x in layers
            ]
        )
        del cache, layers
        nlls = [_segment_nll(sc, job, hidden[row]) for row, job in enumerate(group)]
        flat = torch.cat([n for n, _ in nlls]).cpu().numpy() if nlls else None  # one transfer
        out: list[StepResult] = []
        at = 0
        for row, (job, (part, last)) in enumerate(zip(group, nlls, strict=True)):
            seg = len(job.inputs) - job.n_prefix
            nll = np.full(seg, np.nan, dtype=np.float32)
            assert flat is not None
            nll[job.need] = flat[at : at + len(part)]
            at += len(part)
            mine = fresh[:, :, row, :, : job.n_prefix]
            past = torch.cat([job.past, mine], 3) if job.past is not None else mine.clone()
            out.append(StepResult(nll, past, last))
        return out


def _segment_nll(
    sc: Scorer, job: StepJob, hidden: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """NLL of the needed segment tokens (on the device) and the new last hidden state."""
    n, p = len(job.inputs), job.n_prefix
    seg = job.inputs[p:]
    mine = hidden[:n]
    if p:
        pred = mine[p - 1 : p - 1 + len(seg)]
    else:
        assert job.last_hidden is not None
        pred = torch.cat([job.last_hidden[None], mine], 0)[: len(seg)]
    last = mine[p - 1].clone() if p else job.last_hidden
    if not job.need.size:
        return torch.zeros(0, dtype=torch.float32, device=hidden.device), last
    sel = torch.from_numpy(job.need).to(pred.device)
    targets = torch.from_numpy(seg[job.need]).to(pred.device)
    return sc.head_nll(pred[sel], targets), last
