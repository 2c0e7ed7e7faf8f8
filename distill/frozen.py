"""Frozen lower layers and their cached hidden states: train only the top of a pretrained student.

A student initialized from a pretrained model (or cut from the teacher) can keep its embeddings and
its lower ``n`` decoder layers fixed. Their output for a corpus block then never changes, so it is
computed once and stored (``HiddenCache``): every later run and every sweep point reads it and runs
only the upper layers, forward and backward. The cache records what its numbers depend on (the
frozen weights' hash, the corpus and its tokenizer, the block size and the split) and refuses to
serve a run where any of them differ, naming which.

Shards are float32 ``[n_blocks, block_size, hidden]`` arrays, little-endian, written to a temp file
and renamed; the manifest is rewritten after each shard, so an interrupted build resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from assistant.atomic import atomic_open, atomic_write_text
from assistant.errors import AssistantError, UsageError

FORMAT = "assistant-hidden-cache"
VERSION = 1
MANIFEST = "manifest.json"
SHARD_BYTES = 64 << 20
#: manifest fields that must equal the run's for the cache to be used (and the reason when not)
IDENTITY = {
    "prefix_sha256": "the frozen layers' weights (another student, or another teacher it was cut from)",
    "n_frozen": "the number of frozen layers",
    "corpus_sha256": "the corpus",
    "tokenizer_sha256": "the tokenizer",
    "split": "the split",
    "block_size": "the block size",
    "hidden_size": "the hidden size",
}


class HiddenCacheError(AssistantError):
    """A hidden-state cache cannot be built or does not belong to this run."""


# --- running part of the decoder ---------------------------------------------------------------


def freeze_lower(student: Any, n: int, *, head: bool = False) -> list[str]:
    """Stop gradients into the embeddings and the first ``n`` layers (and, with ``head``, an untied
    head); return notes for the user."""
    layers = student.model.layers
    if not 0 <= n < len(layers):
        raise UsageError(
            f"freeze_layers = {n}: the student has {len(layers)} layers; freeze 0..{len(layers) - 1} (at least one must train)"
        )
    if head and not n:
        raise UsageError("freeze_head needs freeze_layers: set freeze_layers = N as well")
    if n == 0:
        return []
    if getattr(student.config, "use_sliding_window", False):
        raise UsageError("freeze_layers with a sliding-window student is not supported: set use_sliding_window = false")
    frozen = [student.model.embed_tokens, *layers[:n]]
    tied = bool(student.config.tie_word_embeddings)
    if head and not tied:
        frozen.append(student.lm_head)
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
    trained = f"layers {n}..{len(layers) - 1} and the final norm"
    if tied:
        return [
            f"embeddings and layers 0..{n - 1} frozen; training {trained} (the head is tied to the frozen embeddings, so it stays fixed too)"
        ]
    if head:
        return [f"embeddings, the head and layers 0..{n - 1} frozen; training {trained}"]
    return [f"embeddings and layers 0..{n - 1} frozen; training {trained} and the head"]


def _layer_inputs(body: Any, hidden: Any) -> tuple[Any, Any, Any]:
    """(causal mask, rotary position embeddings, position ids) for a batch of full blocks, as the model builds them."""
    import torch
    from transformers.masking_utils import create_causal_mask

    position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    mask = create_causal_mask(
        config=body.config, inputs_embeds=hidden, attention_mask=None, cache=None, position_ids=position_ids
    )
    return mask, body.rotary_emb(hidden, position_ids), position_ids


def run_layers(body: Any, hidden: Any, start: int, stop: int | None = None, *, final_norm: bool) -> Any:
    """The decoder layers [start, stop) of ``body`` (a LlamaModel/Qwen2Model) on ``hidden``."""
    mask, position_embeddings, position_ids = _layer_inputs(body, hidden)
    for layer in body.layers[start:stop]:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=position_embeddings,
            position_ids=position_ids,
            use_cache=False,
        )
    return body.norm(hidden) if final_norm else hidden


def prefix_hidden(body: Any, input_ids: Any, n: int) -> Any:
    """Hidden states after the first ``n`` layers (no gradients)."""
    import torch

    with torch.no_grad():
        return run_layers(body, body.embed_tokens(input_ids), 0, n, final_norm=False)


def prefix_sha256(student: Any, n: int) -> str:
    """One hash over the exact bytes of the embeddings and the first ``n`` layers (their outputs' inputs)."""
    h = hashlib.sha256(f"{student.config.model_type}:{n}".encode())
    parts = [("embed_tokens", student.model.embed_tokens)] + [
        (f"layers.{i}", student.model.layers[i]) for i in range(n)
    ]
    for name, module in parts:
        for key, tensor in sorted(module.state_dict().items()):
            t = tensor.detach().float().cpu().contiguous()
            h.update(f"{name}.{key}:{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


# --- the cache ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HiddenIdentity:
    prefix_sha256: str
    n_frozen: int
    corpus_sha256: str
    tokenizer_sha256: str
    split: str
    block_size: int
    hidden_size: int

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in IDENTITY}


def _shard_name(i: int) -> str:
    return f"hidden-{i:05d}.bin"


class HiddenCache:
    """A finished cache, memory-mapped: ``batch(indices)`` gives the frozen prefix's output for those blocks."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.n_blocks: int = manifest["n_blocks"]
        self.block_size: int = manifest["block_size"]
        self.hidden_size: int = manifest["hidden_size"]
        self.per_shard: int = manifest["blocks_per_shard"]
        self._maps: dict[int, np.ndarray] = {}

    def _shard(self, i: int) -> np.ndarray:
        if i not in self._maps:
            s = self.manifest["shards"][i]
            self._maps[i] = np.memmap(
                self.path / s["file"], np.dtype("<f4"), "r", 0, (s["n_blocks"], self.block_size, self.hidden_size)
            )
        return self._maps[i]

    def batch(self, indices: list[int]) -> np.ndarray:
        out = np.empty((len(indices), self.block_size, self.hidden_size), np.float32)
        for j, index in enumerate(indices):
            if not 0 <= index < self.n_blocks:
                raise IndexError(f"block {index} outside the hidden cache's {self.n_blocks} blocks")
            shard, local = divmod(index, self.per_shard)
            out[j] = self._shard(shard)[local]
        return out


def _read_manifest(path: Path) -> dict | None:
    if not (path / MANIFEST).is_file():
        return None
    try:
        m = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except ValueError as e:
        raise HiddenCacheError(
            f"{path / MANIFEST} is not valid JSON ({e})", hint="delete the hidden cache; it is rebuilt"
        ) from None
    if m.get("format") != FORMAT or m.get("version") != VERSION:
        raise HiddenCacheError(
            f"{path} is not a hidden-state cache of version {VERSION}", hint="choose another hidden_cache directory"
        )
    return m


def check_identity(path: Path, manifest: dict, want: HiddenIdentity) -> None:
    have = manifest["identity"]
    diff = [reason for key, reason in IDENTITY.items() if have.get(key) != getattr(want, key)]
    if diff:
        raise HiddenCacheError(
            f"the hidden-state cache at {path} was computed for other inputs: {', '.join(diff)} differ",
            hint="point hidden_cache at a new directory (each student prefix needs its own), or delete this one",
        )


def open_or_build(
    path: str | os.PathLike,
    identity: HiddenIdentity,
    n_blocks: int,
    compute: Callable[[list[int]], Any],
    *,
    batch_size: int = 4,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[HiddenCache, float]:
    """The cache at ``path`` for ``identity`` covering ``n_blocks`` blocks, computing what is missing.

    ``compute(indices)`` returns the prefix output for those blocks as a float tensor [n, B, H].
    Returns the cache and the seconds spent computing (0 when everything was there).
    """
    out = Path(path).expanduser().resolve()
    old = _read_manifest(out) if out.exists() else None
    if out.exists() and not out.is_dir():
        raise UsageError(f"hidden_cache {out} is a file, not a directory")
    if old is None and out.exists() and any(out.iterdir()):
        raise UsageError(
            f"hidden_cache {out} is not empty and holds no hidden-state cache", hint="choose another directory"
        )
    if old is not None:
        check_identity(out, old, identity)
    B, H = identity.block_size, identity.hidden_size
    per_shard = (old or {}).get("blocks_per_shard") or max(1, SHARD_BYTES // (B * H * 4))
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "identity": identity.as_dict(),
        "block_size": B,
        "hidden_size": H,
        "dtype": "float32",
        "blocks_per_shard": per_shard,
        "n_blocks": n_blocks,
        "shards": [],
    }
    done = {s["file"]: s for s in (old or {}).get("shards", [])}
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    computed = False
    for i, start in enumerate(range(0, n_blocks, per_shard)):
        n = min(per_shard, n_blocks - start)
        name = _shard_name(i)
        prev = done.get(name)
        if (
            prev is not None
            and prev["start"] == start
            and prev["n_blocks"] >= n
            and (out / name).is_file()
            and (out / name).stat().st_size == prev["bytes"]
        ):
            manifest["shards"].append(prev)
            continue
        computed = True
        arr = np.empty((n, B, H), np.float32)
        for lo in range(0, n, batch_size):
            idx = list(range(start + lo, start + min(n, lo + batch_size)))
            arr[lo : lo + len(idx)] = compute(idx).float().cpu().numpy()
            if progress is not None:
                progress(start + lo + len(idx), n_blocks)
        data = np.ascontiguousarray(arr).astype("<f4", copy=False).tobytes()
        with atomic_open(out / name, "wb") as f:
            f.write(data)
        manifest["shards"].append({"file": name, "start": start, "n_blocks": n, "bytes": len(data)})
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    if old is None or computed or old.get("n_blocks") != n_blocks:
        atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    return HiddenCache(out, manifest), (time.perf_counter() - started) if computed else 0.0
