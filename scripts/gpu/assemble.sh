#!/usr/bin/env bash
# Run HERE after the two `fetch` calls: rebuild runs/student/train/student from the returned
# files (give each call's files_at folder), check the weights' sha256, then export and pin:
#   scripts/gpu/assemble.sh /work/.device/<call-1> /work/.device/<call-2>
set -euo pipefail
cd "$(dirname "$0")/../.."
dst=runs/student/train/student
rm -rf "$dst.part" && mkdir -p "$dst.part"
tar -C "$dst.part" -xzf "$1/student-meta.tgz"
cat $(ls "$@"/weights-* 2>/dev/null | awk -F/ '{print $NF" "$0}' | sort | cut -d' ' -f2) > "$dst.part/model.safetensors"
(cd "$dst.part" && sha256sum -c <(sed "s#  .*#  model.safetensors#" "$1/weights.sha256"))
rm -rf "$dst" && mv "$dst.part" "$dst"
cp "$1"/train.log "$1"/metrics.jsonl runs/student/train/ 2>/dev/null || true
echo "student ready: assistant distill pipeline recipes/smollm2-student.toml --stages export"
