"""``linguagate align``'s training loop: plain torch, answer tokens only, resumable.

The run is a pure function of (base model, data bytes, settings, seed): batches are drawn
in an order fixed by the seed and the epoch, and a checkpoint (model, optimizer, schedule,
position) is written inside the output folder, so ``--resume`` continues exactly where an
interrupted run stopped. The finished folder is an ordinary transformers folder (model and
tokenizer) plus ``alignment.json``; it is written last, so its presence marks a complete run.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.alignment.evaluate import _pad_id, answer_nll, token_loss
from proxy.alignment.examples import Example, collate, encode_pairs
from proxy.alignment.pairs import PairsError, data_sha256, read_pairs, split_holdout

if TYPE_CHECKING:
    from proxy.compress.lm import LoadedLM

__all__ = ["ALIGNMENT_FILE", "AlignConfig", "AlignError", "load_model", "train"]

ALIGNMENT_FILE = "alignment.json"
_CHECKPOINT_DIR = ".align-checkpoint"
_LORA_HINT = "pip install 'linguagate[align-lora]' (or: pip install peft)"


class AlignError(Exception):
    """A problem the user must fix (bad base, data, folder): a message, exit status 2."""


@dataclass(frozen=True)
class AlignConfig:
    data: tuple[Path, ...]
    out: Path
    base: str | None = None  # None: the packaged SmolLM2-135M-Instruct
    epochs: int = 2
    lr: float = 5e-5
    lora: bool = False
    lora_rank: int = 16
    seed: int = 0
    holdout: float = 0.1
    max_tokens: int = 512
    batch_size: int = 4
    device: str | None = None
    resume: bool = False
    checkpoint_every: int = 50  # optimizer steps

    def fingerprint(self, data_digest: str) -> dict[str, Any]:
        """What must match for ``--resume`` to continue a run."""
        keep = ("base", "epochs", "lr", "lora", "lora_rank", "seed", "holdout", "max_tokens",
                "batch_size")
        return {**{k: getattr(self, k) for k in keep}, "data_sha256": data_digest}


@dataclass
class _State:
    """The mutable position of one run (saved in the checkpoint)."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    before: float | None = None
    losses: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0


def load_model(base: str | None, device: str | None, *, train: bool = False) -> LoadedLM:
    """Load ``base`` in fp32 (training keeps fp32 master weights; bf16 is autocast on GPU)."""
    import torch

    from proxy.compress.lm import ModelNotInstalledError, load_causal_lm

    try:
        loaded = load_causal_lm(base, device, dtype=torch.float32)
    except ModelNotInstalledError as exc:
        raise AlignError(str(exc)) from None
    except Exception as exc:  # OSError, ValueError, hub errors: never a silent fallback
        name = base or "the packaged SmolLM2-135M-Instruct"
        raise AlignError(f"cannot load base model {name!r}: {type(exc).__name__}: {exc}") from None
    if train:
        loaded.model.requires_grad_(True)
    return loaded


def _batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _progress(out: Any) -> Callable[[str, bool], None]:
    tty = hasattr(out, "isatty") and out.isatty()

    def show(line: str, final: bool) -> None:
        if tty:
            out.write("\r" + line.ljust(100) + ("\n" if final else ""))
        else:
            out.write(line + "\n")
        out.flush()

    return show


def _lora(model: Any, rank: int) -> Any:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise AlignError(f"--lora needs the peft package: {_LORA_HINT}") from None
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                        target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def _check_out(config: AlignConfig) -> Path | None:
    """The checkpoint to resume from, if any; refuse to overwrite a finished or foreign run."""
    out = config.out
    checkpoint = out / _CHECKPOINT_DIR / "state.pt"
    if (out / ALIGNMENT_FILE).exists():
        raise AlignError(f"{out} already holds an aligned model ({ALIGNMENT_FILE}): "
                         "choose another --out")
    if checkpoint.exists():
        if not config.resume:
            raise AlignError(f"{out} holds an unfinished run: pass --resume to continue it, "
                             "or choose another --out")
        return checkpoint
    if out.exists() and any(out.iterdir()) and not config.resume:
        raise AlignError(f"{out} exists and is not empty: choose another --out")
    return None


def train(config: AlignConfig, *, log: Any = None) -> dict[str, Any]:
    """Run (or resume) one alignment; returns what ``alignment.json`` records."""
    import torch

    log = log if log is not None else sys.stderr
    started_at = datetime.now(UTC)
    resume_from = _check_out(config)
    try:
        pairs = read_pairs(config.data)
    except PairsError as exc:
        raise AlignError(str(exc)) from None
    digest = data_sha256(config.data)
    train_pairs, held_pairs = split_holdout(pairs, config.holdout, config.seed)
    if not train_pairs:
        raise AlignError("no training pairs left after the held-out split (lower --holdout)")
    torch.manual_seed(config.seed)
    loaded = load_model(config.base, config.device, train=not config.lora)
    tokenizer, device = loaded.tokenizer, loaded.model.device
    pad = _pad_id(tokenizer)
    train_ex = encode_pairs(tokenizer, train_pairs, config.max_tokens)
    held_ex = encode_pairs(tokenizer, held_pairs, config.max_tokens)
    state = _State()
    fingerprint = config.fingerprint(digest)
    if resume_from is None:
        log.write(f"align: {len(train_ex)} training pairs, {len(held_ex)} held out; "
                  f"base {loaded.model_id}; device {device}\n")
        state.before = answer_nll(loaded.model, held_ex, pad_id=pad, batch_size=config.batch_size)
    model: Any = _lora(loaded.model, config.lora_rank) if config.lora else loaded.model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(train_ex) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, total_steps // 20)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if resume_from is not None:
        state = _load_checkpoint(resume_from, fingerprint, model, optimizer, scheduler)
        log.write(f"align: resuming at epoch {state.epoch + 1}, step {state.global_step}"
                  f"/{total_steps}\n")
    _loop(config, model, optimizer, scheduler, train_ex, state, pad, device, total_steps,
          fingerprint, log)
    final = model.merge_and_unload() if config.lora else model
    after = answer_nll(final, held_ex, pad_id=pad, batch_size=config.batch_size)
    record = _record(config, loaded.model_id, digest, len(pairs), len(train_ex), len(held_ex),
                     state, after, started_at, str(device))
    _save(final, tokenizer, config.out, record)
    return record


def _loop(config: AlignConfig, model: Any, optimizer: Any, scheduler: Any,
          examples: list[Example], state: _State, pad: int, device: Any, total_steps: int,
          fingerprint: dict[str, Any], log: Any) -> None:
    import torch

    show = _progress(log)
    autocast = device.type == "cuda"
    model.train()
    clock = time.perf_counter()
    ema: float | None = state.losses[-1] if state.losses else None
    for epoch in range(state.epoch, config.epochs):
        batches = _batches(len(examples), config.batch_size, config.seed, epoch)
        for index in range(state.step_in_epoch, len(batches)):
            batch = [examples[i] for i in batches[index]]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                total, count = token_loss(model, *collate(batch, pad, device))
            loss = total / max(1, count)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                           1.0)
            optimizer.step()
            scheduler.step()
            value = float(loss.detach())
            state.losses.append(value)
            ema = value if ema is None else 0.9 * ema + 0.1 * value
            state.global_step += 1
            state.step_in_epoch = index + 1
            now = time.perf_counter()
            state.elapsed_s += now - clock
            clock = now
            per_step = state.elapsed_s / max(1, state.global_step)
            show(f"epoch {epoch + 1}/{config.epochs} step {state.global_step}/{total_steps} "
                 f"loss {value:.4f} (avg {ema:.4f}) {per_step:.2f} s/step "
                 f"eta {per_step * (total_steps - state.global_step):.0f} s",
                 state.global_step == total_steps)
            if state.global_step % config.checkpoint_every == 0:
                _save_checkpoint(config.out, fingerprint, model, optimizer, scheduler, state)
        state.epoch, state.step_in_epoch = epoch + 1, 0
        if state.epoch < config.epochs:
            _save_checkpoint(config.out, fingerprint, model, optimizer, scheduler, state)


def _trainable_state(model: Any) -> dict[str, Any]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}


def _save_checkpoint(out: Path, fingerprint: dict[str, Any], model: Any, optimizer: Any,
                     scheduler: Any, state: _State) -> None:
    import torch

    folder = out / _CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "state.pt.tmp"
    torch.save({"fingerprint": fingerprint, "model": _trainable_state(model),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "state": asdict(state), "torch_rng": torch.get_rng_state()}, tmp)
    os.replace(tmp, folder / "state.pt")  # atomic: a crash mid-save keeps the previous one


def _load_checkpoint(path: Path, fingerprint: dict[str, Any], model: Any, optimizer: Any,
                     scheduler: Any) -> _State:
    import torch

    saved = torch.load(path, map_location="cpu", weights_only=False)
    if saved["fingerprint"] != fingerprint:
        changed = sorted(k for k in fingerprint if saved["fingerprint"].get(k) != fingerprint[k])
        raise AlignError(f"cannot resume: the checkpoint in {path.parent.parent} was made with "
                         f"different settings or data ({', '.join(changed)})")
    model.load_state_dict(saved["model"], strict=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    return _State(**saved["state"])


def _record(config: AlignConfig, base_id: str, digest: str, n_pairs: int, n_train: int,
            n_held: int, state: _State, after: float | None, started: datetime,
            device: str) -> dict[str, Any]:
    from proxy import __version__

    return {
        "base_model": config.base or "SmolLM2-135M-Instruct (packaged)",
        "base_model_id": base_id,
        "data": [str(p) for p in config.data],
        "data_sha256": digest,
        "pairs": n_pairs,
        "train_pairs": n_train,
        "heldout_pairs": n_held,
        "holdout_fraction": config.holdout,
        "epochs": config.epochs,
        "lr": config.lr,
        "batch_size": config.batch_size,
        "max_tokens": config.max_tokens,
        "lora": config.lora,
        **({"lora_rank": config.lora_rank} if config.lora else {}),
        "seed": config.seed,
        "steps": state.global_step,
        "train_loss_first": state.losses[0] if state.losses else None,
        "train_loss_last": state.losses[-1] if state.losses else None,
        "heldout_loss_before": state.before,
        "heldout_loss_after": after,
        "device": device,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "train_seconds": round(state.elapsed_s, 1),
        "linguagate_version": __version__,
    }


def _save(model: Any, tokenizer: Any, out: Path, record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / _CHECKPOINT_DIR, ignore_errors=True)
    tmp = out / (ALIGNMENT_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, out / ALIGNMENT_FILE)
