"""Offline teacher targets: top-k log-probabilities per token, `assistant distill cache-logits`.

The teacher runs once over a corpus split's blocks (block i = tokens [i*B, i*B + B + 1) of the
split's stream; the teacher reads block[:-1]). For each of the B positions the cache keeps the
k largest log-probabilities (log_softmax in float32, stored float16), their token ids (uint16
when the vocabulary fits, else int32) and the probability mass outside them,

    rest = 1 - sum(exp(stored top-k log-probs))   (float32, clamped at 0),

computed from the stored float16 values so the k + 1 buckets sum to 1 as the loss sees them.
At k = 64 and a 49,152-token vocabulary that is 260 bytes per token against 98,304 for full
fp16 logits (0.26%). DistillKit stores about 300 bytes/token the same way.

Shards hold ``blocks_per_shard`` blocks each as three C-order arrays back to back
(logprobs[n,B,k] | ids[n,B,k] | rest[n,B], little-endian). Each shard is written to a temp file
and renamed, and the manifest is rewritten after every shard, so an interrupted run resumes:
shards already recorded (and still matching their sha256) are kept; different settings are
refused rather than mixed.

On an example corpus (distill/example_corpus.py: one prompt → answer example per block, a loss
mask on the answer) only the masked positions are kept (``positions = "targets"``): per shard
logprobs[m,k] | ids[m,k] | rest[m] | position[m] (int32, within its block) | row_start[n+1]
(int64), m the shard's target positions. The teacher's head runs only there, the teacher never
reads past a block's last target, and ``block(i)`` expands a block back to B positions (the
others hold an empty distribution: -inf log-probs, all mass in ``rest``; the loss never reads them).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from assistant.atomic import atomic_open, atomic_write_text
from assistant.errors import AssistantError, UsageError
from distill.corpus import (
    MANIFEST,
    VERSION,
    CorpusError,
    TokenCorpus,
    TokenSplit,
    canonical_sha256,
    check_file,
    read_manifest,
)

FORMAT = "assistant-logit-cache"
RERUN = "rerun assistant distill cache-logits (it resumes)"
SHARD_BYTES = 16 << 20  # default shard size; small enough to carry back from the GPU machine
#: fields that must match for a rerun to reuse completed shards (n_blocks may grow or shrink)
IDENTITY = (
    "format",
    "version",
    "split",
    "block_size",
    "k",
    "blocks_per_shard",
    "dtypes",
    "corpus_sha256",
    "teacher_sha256",
    "teacher_vocab_size",
    "teacher_backend",
    "positions",
)

#: progress(blocks_done, blocks_total)
Progress = Callable[[int, int], None]
#: teacher_forward(input_ids LongTensor[batch, B]) -> logits FloatTensor[batch, B, V]
TeacherForward = Callable[[Any], Any]
#: teacher_forward_at(input_ids LongTensor[batch, L], mask BoolTensor[batch, L]) -> logits FloatTensor[mask.sum(), V]
TeacherForwardAt = Callable[[Any, Any], Any]


class CacheError(AssistantError):
    """The logit cache cannot be built, resumed or read as asked."""


@dataclass(frozen=True)
class CacheConfig:
    block_size: int
    vocab_size: int  # the teacher's output width (its logits' last dimension)
    teacher_source: str
    teacher_sha256: str
    k: int = 64
    max_blocks: int | None = None  # None: every block of the split
    batch_size: int = 4
    blocks_per_shard: int | None = None  # None: as many as fit SHARD_BYTES (at least 1)
    device: str = "cpu"  # where input ids are placed for teacher_forward
    teacher_tokenizer: str | None = None  # a load_tokenizer spec for the teacher, recorded for the student's files
    teacher_backend: str = "torch"  # "torch" (dequantized float model) or "llama.cpp" (the GGUF itself)

    def validate(self) -> None:
        if self.block_size < 1 or self.batch_size < 1:
            raise UsageError("--block-size and --batch-size must be positive")
        if not 1 <= self.k <= self.vocab_size:
            raise UsageError(f"--top-k must be between 1 and the vocabulary size {self.vocab_size}, not {self.k}")
        if self.max_blocks is not None and self.max_blocks < 1:
            raise UsageError(f"--max-blocks must be positive, not {self.max_blocks}")
        if self.blocks_per_shard is not None and self.blocks_per_shard < 1:
            raise UsageError(f"blocks per shard must be positive, not {self.blocks_per_shard}")

    def shard_blocks(self) -> int:
        if self.blocks_per_shard is not None:
            return self.blocks_per_shard
        return max(1, SHARD_BYTES // (self.block_size * bytes_per_token(self.k, self.vocab_size)))


def id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<i4")


def bytes_per_token(k: int, vocab_size: int) -> int:
    """float16 log-probs + ids + one float32 rest mass, per token."""
    return 2 * k + id_dtype(vocab_size).itemsize * k + 4


def full_logits_bytes_per_token(vocab_size: int) -> int:
    return 2 * vocab_size  # fp16


@dataclass(frozen=True)
class CacheManifest:
    """What build_logit_cache produced (the manifest itself plus this run's numbers)."""

    path: Path
    manifest: dict
    manifest_sha256: str
    shards_reused: int
    shards_written: int
    seconds: float

    @property
    def n_blocks(self) -> int:
        return self.manifest["n_blocks"]

    @property
    def bytes_per_token(self) -> int:
        return self.manifest["bytes_per_token"]

    @property
    def ratio(self) -> float:
        return self.manifest["ratio_to_fp16_logits"]

    def to_dict(self) -> dict:
        m = self.manifest
        return {
            "path": str(self.path),
            "manifest_sha256": self.manifest_sha256,
            "split": m["split"],
            "n_blocks": m["n_blocks"],
            "block_size": m["block_size"],
            "positions": m.get("positions", "all"),
            "tokens": sum(s.get("n_positions", 0) for s in m["shards"])
            if m.get("positions") == "targets"
            else m["n_blocks"] * m["block_size"],
            "k": m["k"],
            "bytes_per_token": m["bytes_per_token"],
            "full_fp16_bytes_per_token": m["full_fp16_bytes_per_token"],
            "ratio_to_fp16_logits": m["ratio_to_fp16_logits"],
            "bytes": sum(s["bytes"] for s in m["shards"]),
            "shards": len(m["shards"]),
            "shards_reused": self.shards_reused,
            "shards_written": self.shards_written,
            "seconds": round(self.seconds, 3),
            "teacher": m["teacher"],
        }


def _layout(n: int, block_size: int, k: int, ids: np.dtype) -> tuple[int, int, int]:
    """Byte offsets of the ids and rest arrays in a shard of ``n`` blocks, and its total size."""
    ids_at = n * block_size * k * 2
    rest_at = ids_at + n * block_size * k * ids.itemsize
    return ids_at, rest_at, rest_at + n * block_size * 4


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.bin"


def _identity(m: dict) -> dict:
    return {
        "format": m["format"],
        "version": m["version"],
        "split": m["split"],
        "block_size": m["block_size"],
        "k": m["k"],
        "blocks_per_shard": m["blocks_per_shard"],
        "dtypes": m["dtypes"],
        "corpus_sha256": m["corpus"]["manifest_sha256"],
        "teacher_sha256": m["teacher"]["sha256"],
        "teacher_vocab_size": m["teacher"]["vocab_size"],
        "teacher_backend": m["teacher"].get("backend", "torch"),
        "positions": m.get("positions", "all"),
    }


def targets_only(split) -> bool:
    """Whether the split is an example corpus's, whose blocks have targets only under their mask."""
    from distill.example_corpus import ExampleSplit

    return isinstance(split, ExampleSplit)


def new_manifest(split: TokenSplit | Any, config: CacheConfig) -> dict:
    """The manifest this run will write, with no shards yet (also what a rerun is compared to)."""
    n_blocks = split.n_blocks(config.block_size)
    sparse = targets_only(split)
    if config.max_blocks is not None:
        n_blocks = min(n_blocks, config.max_blocks)
    bpt, full = bytes_per_token(config.k, config.vocab_size), full_logits_bytes_per_token(config.vocab_size)
    return {
        "format": FORMAT,
        "version": VERSION,
        "complete": False,
        "split": split.name,
        "block_size": config.block_size,
        "k": config.k,
        "n_blocks": n_blocks,
        "blocks_per_shard": config.shard_blocks(),
        "corpus": {
            "manifest_sha256": split.corpus_sha256,
            "split_tokens": split.n_tokens,
            "vocab_size": split.vocab_size,
        },
        "teacher": {
            "source": config.teacher_source,
            "sha256": config.teacher_sha256,
            "vocab_size": config.vocab_size,
            "tokenizer_spec": config.teacher_tokenizer or config.teacher_source,
            "backend": config.teacher_backend,
        },
        "dtypes": {"logprobs": "float16", "ids": id_dtype(config.vocab_size).name, "rest": "float32"},
        "byte_order": "little",
        "positions": "targets" if sparse else "all",
        "layout": (
            "per shard: logprobs[m,k] | ids[m,k] | rest[m] | position[m] int32 | row_start[n+1] int64, C order; "
            "m = the shard's target positions, n its n_blocks"
            if sparse
            else "per shard: logprobs[n,B,k] | ids[n,B,k] | rest[n,B], C order; n = the shard's n_blocks"
        ),
        "rest": "1 - sum(exp(stored float16 top-k log-probs)), float32, clamped at 0",
        "bytes_per_token": bpt,
        "full_fp16_bytes_per_token": full,
        "ratio_to_fp16_logits": round(bpt / full, 6),
        "shards": [],
    }


def check_resume(out: Path, planned: dict) -> dict | None:
    """The existing manifest in ``out`` if its settings match ``planned``; None for a fresh directory."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory")
    if not (out / MANIFEST).is_file():
        if any(out.iterdir()):
            raise UsageError(f"{out} is not empty and holds no logit cache", hint="choose another --out")
        return None
    try:
        old = read_manifest(out, FORMAT, "logit cache", "delete it or choose another --out")
    except CorpusError as e:
        raise CacheError(str(e)) from None
    a, b = _identity(old), _identity(planned)
    diff = [f"{key} {a[key]!r} != {b[key]!r}" for key in IDENTITY if a[key] != b[key]]
    if diff:
        raise CacheError(
            f"{out} holds a logit cache made with other settings ({'; '.join(diff)})",
            hint="delete it or choose another --out",
        )
    return old


def precheck_out(out: Path, split: TokenSplit | Any, block_size: int, k: int) -> None:
    """The checks of check_resume that need no teacher, so a wrong --out fails before the teacher loads."""
    if not (out / MANIFEST).is_file():
        check_resume(out, {})  # only the "not empty / not a directory" checks apply
        return
    try:
        old = read_manifest(out, FORMAT, "logit cache", "delete it or choose another --out")
    except CorpusError as e:
        raise CacheError(str(e)) from None
    want = {"split": split.name, "block_size": block_size, "k": k, "corpus_sha256": split.corpus_sha256}
    have = _identity(old)
    diff = [f"{key} {have[key]!r} != {v!r}" for key, v in want.items() if have[key] != v]
    if diff:
        raise CacheError(
            f"{out} holds a logit cache made with other settings ({'; '.join(diff)})",
            hint="delete it or choose another --out",
        )


def build_logit_cache(
    teacher_forward: TeacherForward,
    corpus_split: TokenSplit | Any,
    config: CacheConfig,
    out_dir: str | os.PathLike,
    progress: Progress | None = None,
    teacher_forward_at: TeacherForwardAt | None = None,
) -> CacheManifest:
    """Run the teacher over the split's blocks and store its top-k targets in ``out_dir`` (resumable).

    On an example corpus only the target positions are stored; ``teacher_forward_at``, when given,
    computes the teacher's logits at those positions alone (else they are picked from the full logits).
    """
    import torch

    started = time.perf_counter()
    config.validate()
    if corpus_split.vocab_size > config.vocab_size:
        raise CacheError(
            f"the corpus tokenizer has {corpus_split.vocab_size} tokens but the teacher only {config.vocab_size} outputs",
            hint="build the corpus with the teacher's tokenizer",
        )
    out = Path(out_dir).expanduser().resolve()
    manifest = new_manifest(corpus_split, config)
    old = check_resume(out, manifest)
    n_blocks, per_shard, B, k = manifest["n_blocks"], manifest["blocks_per_shard"], config.block_size, config.k
    if n_blocks == 0:
        raise CacheError(
            f"the {corpus_split.name} split has {corpus_split.n_tokens} tokens: not one block of {B} + 1",
            hint="use a smaller --block-size or a bigger corpus",
        )
    ids_dtype = id_dtype(config.vocab_size)
    out.mkdir(parents=True, exist_ok=True)

    plan = [(i, start, min(per_shard, n_blocks - start)) for i, start in enumerate(range(0, n_blocks, per_shard))]
    done = {s["file"]: s for s in (old or {}).get("shards", [])}
    keep = {_shard_name(i) for i, _, _ in plan}
    for p in out.glob("shard-*.bin"):
        if p.name not in keep:
            p.unlink()  # from an earlier run with more blocks
    reused = written = 0
    blocks_done = 0
    for i, start, n in plan:
        name = _shard_name(i)
        prev = done.get(name)
        if prev is not None and prev["start"] == start and prev["n_blocks"] == n:
            try:
                check_file(out / name, prev["bytes"], prev["sha256"], "cache shard", RERUN)
                manifest["shards"].append(prev)
                reused += 1
                blocks_done += n
                if progress is not None:
                    progress(blocks_done, n_blocks)
                continue
            except CorpusError:
                pass  # damaged or partial: compute it again
        if manifest["positions"] == "targets":
            arrays = _targets_shard(
                teacher_forward,
                teacher_forward_at,
                corpus_split,
                config,
                start,
                n,
                ids_dtype,
                blocks_done,
                n_blocks,
                progress,
            )
            blocks_done += n
            manifest["shards"].append(_write_shard(out / name, start, n, arrays, n_positions=len(arrays[0])))
            written += 1
            _save(out, manifest)
            continue
        logprobs = np.empty((n, B, k), np.float16)
        ids = np.empty((n, B, k), ids_dtype)
        rest = np.empty((n, B), np.float32)
        for lo in range(0, n, config.batch_size):
            hi = min(n, lo + config.batch_size)
            inputs = corpus_split.batch(range(start + lo, start + hi), B)[:, :-1]
            lp, top, mass = teacher_topk(
                teacher_forward, torch.from_numpy(inputs).to(config.device), k, config.vocab_size
            )
            logprobs[lo:hi], ids[lo:hi], rest[lo:hi] = lp, top, mass
            blocks_done += hi - lo
            if progress is not None:
                progress(blocks_done, n_blocks)
        manifest["shards"].append(_write_shard(out / name, start, n, (logprobs, ids, rest)))
        written += 1
        _save(out, manifest)
    manifest["complete"] = True
    final = _save(out, manifest)
    return CacheManifest(out, final, final["manifest_sha256"], reused, written, time.perf_counter() - started)


def _targets_shard(
    forward, forward_at, split, config: CacheConfig, start: int, n: int, ids_dtype, done, total, progress
):
    """(logprobs [m,k], ids [m,k], rest [m], position [m], row_start [n+1]) for blocks [start, start+n)."""
    import torch

    B, k = config.block_size, config.k
    lps, tops, rests, positions, starts = [], [], [], [], [0]
    for lo in range(0, n, config.batch_size):
        idx = range(start + lo, start + min(n, lo + config.batch_size))
        mask = split.label_mask(idx, B)
        used = mask.any(0).nonzero()[0]
        length = int(used[-1]) + 1 if len(used) else 1  # nothing after the last target matters to a causal teacher
        inputs = torch.from_numpy(split.batch(idx, B)[:, :length]).to(config.device)
        keep = torch.from_numpy(np.ascontiguousarray(mask[:, :length])).to(config.device)
        lp, top, mass = teacher_topk_at(forward, forward_at, inputs, keep, k, config.vocab_size)
        lps.append(lp)
        tops.append(top)
        rests.append(mass)
        for row in mask:
            where = row.nonzero()[0]
            positions.append(where.astype(np.int32))
            starts.append(starts[-1] + len(where))
        if progress is not None:
            progress(done + min(n, lo + config.batch_size), total)
    return (
        np.concatenate(lps).astype(np.float16),
        np.concatenate(tops).astype(ids_dtype),
        np.concatenate(rests).astype(np.float32),
        np.concatenate(positions).astype(np.int32),
        np.asarray(starts, dtype=np.int64),
    )


def teacher_topk_at(
    forward: TeacherForward, forward_at: TeacherForwardAt | None, input_ids, mask, k: int, vocab_size: int
):
    """Top-k (float16 log-probs, ids, rest) at the masked positions only, in row-major order."""
    import torch

    with torch.inference_mode():
        want = int(mask.sum())
        if forward_at is not None:
            logits = forward_at(input_ids, mask)
        else:
            full = forward(input_ids)
            if tuple(full.shape) != (*input_ids.shape, vocab_size):
                raise CacheError(
                    f"the teacher returned logits of shape {tuple(full.shape)}, expected {(*input_ids.shape, vocab_size)}"
                )
            logits = full[mask]
        if tuple(logits.shape) != (want, vocab_size):
            raise CacheError(
                f"the teacher returned logits of shape {tuple(logits.shape)}, expected {(want, vocab_size)}"
            )
        lps, ids, rests = [], [], []
        for lo in range(0, want, 256):  # one float32 [256, V] log-softmax at a time
            values, top = logits[lo : lo + 256].float().log_softmax(-1).topk(k, dim=-1)
            values = values.to(torch.float16)
            rests.append((1.0 - values.float().exp().sum(-1)).clamp_min(0.0).cpu().numpy())
            lps.append(values.cpu().numpy())
            ids.append(top.cpu().numpy())
    if not want:
        return np.empty((0, k), np.float16), np.empty((0, k), np.int64), np.empty((0,), np.float32)
    return np.concatenate(lps), np.concatenate(ids), np.concatenate(rests)


def teacher_topk(teacher_forward: TeacherForward, input_ids, k: int, vocab_size: int):
    """(logprobs float16 [b,B,k], ids [b,B,k], rest float32 [b,B]) as numpy, one sequence at a time
    so the float32 log-softmax never holds more than one [B, V] slab."""
    import torch

    with torch.inference_mode():
        logits = teacher_forward(input_ids)
        b, B = input_ids.shape
        if tuple(logits.shape) != (b, B, vocab_size):
            raise CacheError(
                f"the teacher returned logits of shape {tuple(logits.shape)}, expected {(b, B, vocab_size)}"
            )
        lps, ids, rests = [], [], []
        for row in logits:
            values, top = row.float().log_softmax(-1).topk(k, dim=-1)
            values = values.to(torch.float16)
            rests.append((1.0 - values.float().exp().sum(-1)).clamp_min(0.0).cpu().numpy())
            lps.append(values.cpu().numpy())
            ids.append(top.cpu().numpy())
    return np.stack(lps), np.stack(ids), np.stack(rests)


def _write_shard(path: Path, start: int, n: int, arrays, n_positions: int | None = None) -> dict:
    h, size = hashlib.sha256(), 0
    with atomic_open(path, "wb") as f:
        for a in arrays:
            data = np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
            f.write(data)
            h.update(data)
            size += len(data)
    record = {"file": path.name, "start": start, "n_blocks": n, "bytes": size, "sha256": h.hexdigest()}
    if n_positions is not None:
        record["n_positions"] = n_positions
    return record


def _save(out: Path, manifest: dict) -> dict:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    full = {**body, "manifest_sha256": canonical_sha256(body)}
    atomic_write_text(out / MANIFEST, json.dumps(full, indent=2, sort_keys=True) + "\n")
    return full


# -- reading --------------------------------------------------------------------------------------


class LogitCache:
    """A finished cache, memory-mapped: ``block(i)`` gives the teacher's targets for corpus block i."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.manifest_sha256: str = manifest["manifest_sha256"]
        self.block_size: int = manifest["block_size"]
        self.k: int = manifest["k"]
        self.n_blocks: int = manifest["n_blocks"]
        self.vocab_size: int = manifest["teacher"]["vocab_size"]
        self.corpus_sha256: str = manifest["corpus"]["manifest_sha256"]
        self.split: str = manifest["split"]
        self.blocks_per_shard: int = manifest["blocks_per_shard"]
        self.ids_dtype = np.dtype(manifest["dtypes"]["ids"]).newbyteorder("<")
        self.targets_only: bool = manifest.get("positions", "all") == "targets"
        self._maps: dict[int, tuple] = {}

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = True) -> LogitCache:
        path = Path(path).expanduser().resolve()
        try:
            manifest = read_manifest(path, FORMAT, "logit cache", "build it with assistant distill cache-logits")
        except CorpusError as e:
            raise CacheError(str(e)) from None
        cache = cls(path, manifest)
        recorded = sum(s["n_blocks"] for s in manifest["shards"])
        if not manifest.get("complete") or recorded != cache.n_blocks:
            raise CacheError(
                f"the logit cache at {path} is incomplete ({recorded} of {cache.n_blocks} blocks)", hint=RERUN
            )
        for s in manifest["shards"]:
            try:
                check_file(path / s["file"], s["bytes"], s["sha256"] if verify else None, "cache shard", RERUN)
            except CorpusError as e:
                raise CacheError(str(e)) from None
        return cache

    def __getstate__(self):  # DataLoader workers: reopen the maps in each process
        return {**self.__dict__, "_maps": {}}

    def _shard(self, i: int) -> tuple:
        if i not in self._maps and self.targets_only:
            s = self.manifest["shards"][i]
            m, n, k, file = s["n_positions"], s["n_blocks"], self.k, self.path / s["file"]
            ids_at = m * k * 2
            rest_at = ids_at + m * k * self.ids_dtype.itemsize
            pos_at = rest_at + m * 4
            starts_at = pos_at + m * 4
            self._maps[i] = (
                np.memmap(file, np.dtype("<f2"), "r", 0, (m, k)) if m else np.empty((0, k), np.float16),
                np.memmap(file, self.ids_dtype, "r", ids_at, (m, k)) if m else np.empty((0, k), self.ids_dtype),
                np.memmap(file, np.dtype("<f4"), "r", rest_at, (m,)) if m else np.empty((0,), np.float32),
                np.memmap(file, np.dtype("<i4"), "r", pos_at, (m,)) if m else np.empty((0,), np.int32),
                np.memmap(file, np.dtype("<i8"), "r", starts_at, (n + 1,)),
            )
        if i not in self._maps:
            s = self.manifest["shards"][i]
            n, B, k = s["n_blocks"], self.block_size, self.k
            ids_at, rest_at, _ = _layout(n, B, k, self.ids_dtype)
            file = self.path / s["file"]
            self._maps[i] = (
                np.memmap(file, np.dtype("<f2"), "r", 0, (n, B, k)),
                np.memmap(file, self.ids_dtype, "r", ids_at, (n, B, k)),
                np.memmap(file, np.dtype("<f4"), "r", rest_at, (n, B)),
            )
        return self._maps[i]

    def block(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logprobs float16 [B,k], ids int64 [B,k], rest float32 [B]) for corpus block ``index``."""
        if not 0 <= index < self.n_blocks:
            raise IndexError(f"block {index} outside the cache's {self.n_blocks} blocks")
        shard, local = divmod(index, self.blocks_per_shard)
        if self.targets_only:
            lp_t, ids_t, rest_t, pos_t, starts = self._shard(shard)
            a, b = int(starts[local]), int(starts[local + 1])
            where = np.asarray(pos_t[a:b], dtype=np.int64)
            lp = np.full((self.block_size, self.k), -np.inf, np.float16)
            ids = np.zeros((self.block_size, self.k), np.int64)
            rest = np.ones(self.block_size, np.float32)
            lp[where], ids[where], rest[where] = lp_t[a:b], ids_t[a:b], rest_t[a:b]
            return lp, ids, rest
        lp, ids, rest = self._shard(shard)
        return np.asarray(lp[local]), ids[local].astype(np.int64), np.asarray(rest[local])

    def batch(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """block() for several indices, stacked: [n,B,k], [n,B,k], [n,B]."""
        parts = [self.block(int(i)) for i in indices]
        return tuple(np.stack(p) for p in zip(*parts))  # type: ignore[return-value]

    def check_matches(self, corpus: TokenCorpus | Any, split: str, block_size: int) -> None:
        """One-line error unless this cache was made from ``corpus``'s ``split`` with ``block_size``."""
        fix = f"rebuild it: assistant distill cache-logits --corpus {corpus.path} --split {split} --block-size {block_size}"
        if self.corpus_sha256 != corpus.manifest_sha256:
            raise CacheError(
                f"the logit cache at {self.path} was made from corpus {self.corpus_sha256[:12]}, "
                f"not from {corpus.path} ({corpus.manifest_sha256[:12]})",
                hint=fix,
            )
        if self.split != split:
            raise CacheError(f"the logit cache at {self.path} holds the {self.split} split, not {split}", hint=fix)
        if self.block_size != block_size:
            raise CacheError(
                f"the logit cache at {self.path} has block size {self.block_size}, not {block_size}", hint=fix
            )


def cache_teacher_logits(
    corpus_dir: str | os.PathLike,
    teacher: str,
    out: str | os.PathLike,
    *,
    block_size: int,
    k: int = 64,
    split: str = "train",
    max_blocks: int | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    dtype: str | None = None,
    backend: str = "torch",
    threads: int = 1,
    progress: Progress | None = None,
    note: Callable[[str], None] | None = None,
) -> CacheManifest:
    """The `cache-logits` command as a function: check the vocabularies, load the teacher, cache.

    ``backend`` "llama.cpp" runs a GGUF teacher (lock name or path) through llama-cpp-python with
    ``threads`` threads instead of its dequantized PyTorch copy.
    """
    from distill.llama_teacher import BACKENDS

    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r} is not one of {', '.join(BACKENDS)}")
    from distill.example_corpus import open_corpus
    from distill.models import load_teacher
    from distill.tokenizer import TokenizerError, load_tokenizer, same_tokenizer

    corp = open_corpus(corpus_dir)
    tokens = corp.split(split)
    tokens.n_blocks(block_size)  # an example corpus refuses another block size before the teacher loads
    precheck_out(Path(out).expanduser().resolve(), tokens, block_size, k)
    try:
        teacher_tok = load_tokenizer(teacher)
    except TokenizerError as e:
        teacher_tok = None
        if note:
            note(f"cannot compare the corpus tokenizer with the teacher's ({e})")
    if teacher_tok is not None and teacher_tok.sha256 != corp.manifest["tokenizer"]["sha256"]:
        ok, why = same_tokenizer(load_tokenizer(str(corp.tokenizer_json())), teacher_tok)
        if not ok:
            raise CacheError(
                f"the corpus at {corp.path} was tokenized with another vocabulary than teacher {teacher}: {why}",
                hint=f"rebuild it with assistant distill corpus --tokenizer {teacher}",
            )
    if backend == "llama.cpp":
        from distill.llama_teacher import load_llama_teacher

        if Path(teacher).expanduser().is_dir():
            raise UsageError(
                f"--backend llama.cpp needs a GGUF teacher (a lock name or .gguf path), not the directory {teacher}"
            )
        lt = load_llama_teacher(teacher, n_ctx=block_size, threads=threads)
        config = CacheConfig(
            block_size=block_size,
            vocab_size=lt.vocab_size,
            teacher_source=lt.source,
            teacher_sha256=lt.sha256,
            k=k,
            max_blocks=max_blocks,
            batch_size=batch_size,
            device="cpu",
            teacher_tokenizer=teacher,
            teacher_backend=backend,
        )
        try:
            return build_logit_cache(
                lt.forward, tokens, config, out, progress=progress, teacher_forward_at=lt.forward_at
            )
        finally:
            lt.close()
    t = load_teacher(teacher, device=device, dtype=dtype)
    config = CacheConfig(
        block_size=block_size,
        vocab_size=t.vocab_size,
        teacher_source=t.source,
        teacher_sha256=t.sha256,
        k=k,
        max_blocks=max_blocks,
        batch_size=batch_size,
        device=device,
        teacher_tokenizer=t.tokenizer_spec,
    )

    def forward(input_ids):
        return t.model(input_ids=input_ids, use_cache=False).logits

    def forward_at(input_ids, mask):  # the 151,936-row head only where a target is
        hidden = t.model.model(input_ids=input_ids, use_cache=False).last_hidden_state
        return hidden[mask] @ t.model.lm_head.weight.t()

    return build_logit_cache(forward, tokens, config, out, progress=progress, teacher_forward_at=forward_at)
