#!/usr/bin/env bash
# KD vs CE-only vs KD-from-cache on 2 CPU cores (recipes/cpu-kd-vs-ce.toml); results in docs/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
A="${ASSISTANT:-assistant}"
R=recipes/cpu-kd-vs-ce.toml
mkdir -p runs/cpu
[ -f runs/cpu/corpus/manifest.json ] || $A distill corpus --tokenizer smollm2-135m-instruct --out runs/cpu/corpus --max-tokens 150000 --val-fraction 0.1 --json > runs/cpu/corpus.json
# 50 steps x 4 blocks = 200 blocks of 128 tokens: cache exactly the blocks the runs can draw
$A distill cache-logits --corpus runs/cpu/corpus --teacher smollm2-135m-instruct --block-size 128 --top-k 64 --max-blocks 200 --out runs/cpu/cache --json > runs/cpu/cache.json
$A distill train --recipe $R --out runs/cpu/ce --alpha 0 --json > runs/cpu/ce.json
$A distill train --recipe $R --out runs/cpu/kd-cache --logit-cache runs/cpu/cache --json > runs/cpu/kd-cache.json
$A distill train --recipe $R --out runs/cpu/kd --json > runs/cpu/kd.json
