"""Scoring: chunked NLL, batching, the KV-cached stream and sliding windows agree with a
plain full forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import DynamicCache, PreTrainedTokenizerFast

from proxy.compress.scoring import Scorer, Stream
from tests.support.tiny_lm import build_tiny_model, sample_text

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def scorer(tiny_tokenizer: PreTrainedTokenizerFast) -> Scorer:
    return Scorer(build_tiny_model(tiny_tokenizer), tiny_tokenizer)


def _reference_nll(sc: Scorer, ids: list[int]) -> np.ndarray:
    """Full logits + log_softmax: what the chunked path must reproduce."""
    x = torch.tensor([[sc.start_id, *ids]])
    with torch.inference_mode():
        logp = torch.log_softmax(sc.model(x).logits[0, :-1].float(), -1)
    return (-logp.gather(1, x[0, 1:, None])[:, 0]).numpy()


def test_chunked_head_matches_full_log_softmax(scorer: Scorer) -> None:
    ids = scorer.encode(sample_text(120)).ids
    with torch.inference_mode():
        got = scorer.score([ids])[0]
    np.testing.assert_allclose(got, _reference_nll(scorer, ids.tolist()), rtol=1e-4, atol=1e-4)


def test_batched_scoring_matches_one_by_one(scorer: Scorer) -> None:
    seqs = [scorer.encode(sample_text(n, n)).ids for n in (10, 80, 35)]
    with torch.inference_mode():
        together = scorer._score_batch(seqs)  # padded batch, the GPU path
        alone = [scorer.score([s])[0] for s in seqs]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_stream_scores_segments_given_the_kept_prefix(scorer: Scorer) -> None:
    ids = scorer.encode(sample_text(90)).ids
    first, second = ids[:40], ids[40:80]
    kept = first[::2]  # what survived the first segment
    need = np.ones(len(second), bool)
    with torch.inference_mode():
        stream = Stream(scorer)
        stream.step(np.zeros(0, np.int64), first, np.ones(len(first), bool))
        got = stream.step(kept, second, need)
    assert isinstance(stream.cache, DynamicCache)
    assert stream.cache.get_seq_length() == 1 + len(kept)  # the segment never stays cached
    want = _reference_nll(scorer, [*kept.tolist(), *second.tolist()])[len(kept) :]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_stream_scores_only_needed_positions(scorer: Scorer) -> None:
    seg = scorer.encode(sample_text(30)).ids
    need = np.zeros(len(seg), bool)
    need[[0, 5]] = True
    with torch.inference_mode():
        got = Stream(scorer).step(np.zeros(0, np.int64), seg, need)
    assert np.isfinite(got[[0, 5]]).all() and np.isnan(got[1:5]).all()


def test_sliding_windows_beyond_the_context(tiny_tokenizer: PreTrainedTokenizerFast) -> None:
    short = Scorer(build_tiny_model(tiny_tokenizer, max_positions=64), tiny_tokenizer)
    long = Scorer(build_tiny_model(tiny_tokenizer, max_positions=1024), tiny_tokenizer)
    ids = short.encode(sample_text(200)).ids
    assert len(ids) > 3 * short.context
    with torch.inference_mode():
        windowed = short.score([ids])[0]
        full = long.score([ids])[0]
    assert windowed.shape == ids.shape and np.isfinite(windowed).all()
    # Same weights: the first window sees the same context as the full pass.
    np.testing.assert_allclose(windowed[:62], full[:62], rtol=1e-4, atol=1e-4)


def test_stream_restarts_on_a_window_when_the_prefix_outgrows_the_context(
    tiny_tokenizer: PreTrainedTokenizerFast,
) -> None:
    sc = Scorer(build_tiny_model(tiny_tokenizer, max_positions=64), tiny_tokenizer)
    ids = sc.encode(sample_text(200)).ids
    stream = Stream(sc)
    with torch.inference_mode():
        for i in range(0, 160, 16):
            seg = ids[i : i + 16]
            out = stream.step(ids[max(0, i - 16) : i], seg, np.ones(len(seg), bool))
            assert np.isfinite(out).all()
            assert stream.cache is not None and stream.cache.get_seq_length() < sc.context


def test_skipped_context_tokens_are_not_scored(scorer: Scorer) -> None:
    ids = scorer.encode(sample_text(60)).ids
    with torch.inference_mode():
        full = scorer.score([ids])[0]
        tail = scorer.score([ids], skip=[20])[0]
    np.testing.assert_allclose(tail, full[20:], rtol=1e-4, atol=1e-4)
