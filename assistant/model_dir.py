"""What the distill and export stages agree on about a Hugging Face model directory.

Both stages need the directory's content hash (the provenance key a student's lock entry and a
teacher's cache carry) and the note that a directory shares the tokenizer of a GGUF
(``tokenizer_from.json``: distill writes it, export reads it). Keeping the contract here lets
neither stage import the other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

#: Files that describe the model; a directory's content hash covers exactly these.
HASHED_SUFFIXES = (".json", ".safetensors", ".model", ".jinja", ".txt")
#: A model directory may name the GGUF whose tokenizer it shares: {"gguf": LOCKNAME_OR_PATH}.
TOKENIZER_RECORD = "tokenizer_from.json"


def model_files(model_dir: Path) -> Iterator[Path]:
    """The files that define the model, in a stable order (hidden files and GGUFs excluded)."""
    for p in sorted(Path(model_dir).rglob("*")):
        rel = p.relative_to(model_dir)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) and p.suffix in HASHED_SUFFIXES:
            yield p


def content_sha256(model_dir: Path, file_sha256: Callable[[Path], str]) -> str:
    """One sha256 over (relative path, file sha256) of every model file: the provenance key.

    ``file_sha256`` is injected (the tool's stat-keyed hash cache) so re-exports do not re-read GBs.
    """
    h = hashlib.sha256()
    for p in model_files(model_dir):
        h.update(f"{file_sha256(p)}  {p.relative_to(model_dir).as_posix()}\n".encode())
    return h.hexdigest()


def write_tokenizer_record(model_dir: Path, gguf_ref: str, sha256: str | None = None) -> Path:
    """Record that ``model_dir`` shares the tokenizer of ``gguf_ref`` (a lock name or a path)."""
    from assistant.atomic import atomic_write_text

    record = {"gguf": gguf_ref, **({"sha256": sha256} if sha256 else {})}
    path = Path(model_dir) / TOKENIZER_RECORD
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path
