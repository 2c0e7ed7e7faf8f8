"""The teacher's tokenizer as a fast `tokenizers.Tokenizer`, from any of the places a teacher lives.

A spec is one of:

- a models.lock name (or a path to a ``.gguf``): transformers converts the GGUF's tokenizer once
  (about 10 s), and the result (tokenizer.json, tokenizer_config.json, chat template) is kept
  in the user cache under the GGUF's sha256, so later loads take milliseconds;
- a local Hugging Face model directory (its tokenizer.json, else converted from tokenizer.model);
- a ``tokenizer.json`` file;
- ``hf-id@revision`` with a full 40-hex commit (downloaded once through huggingface_hub);
  an unpinned id is refused, because a moving tokenizer silently invalidates a corpus.

Only tokenizers and the standard library are imported at module level: building a corpus needs
no torch, and transformers is imported only for the one-time GGUF/SentencePiece conversion.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from assistant.errors import AssistantError, UsageError
from assistant.store.paths import cache_dir

DEFAULT_TEACHER = "smollm2-135m-instruct"
TOKENIZER_JSON = "tokenizer.json"
#: Files that make up a Hugging Face tokenizer, copied together into a student's directory.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "tokenizer.model",
)
PINNED_HF = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)@(?P<rev>[0-9a-f]{40})$")
HF_ID = re.compile(r"^[\w.-]+/[\w.-]+(@\S*)?$")
#: End-of-text tokens tried, in order, when no config names the EOS token.
EOS_FALLBACKS = ("<|endoftext|>", "</s>", "<|im_end|>", "<eos>", "<|end_of_text|>")


class TokenizerError(AssistantError):
    """A tokenizer spec cannot be found, converted or read."""


@dataclass(frozen=True)
class TeacherTokenizer:
    """A loaded tokenizer and where it came from (its identity is the sha256 of tokenizer.json)."""

    tokenizer: object  # tokenizers.Tokenizer (typed loosely so the import stays lazy for readers)
    source: str  # "lock:NAME", "gguf:PATH", "dir:PATH", "file:PATH" or "hf:ID@REV"
    sha256: str  # of the tokenizer.json bytes
    vocab_size: int  # ids the tokenizer can produce, added tokens included
    eos_id: int
    bos_id: int | None
    files_dir: Path | None = None  # a directory holding TOKENIZER_FILES (None: only tokenizer.json)
    json_path: Path | None = None  # the tokenizer.json that was read
    gguf_ref: str | None = None  # lock name or GGUF path, when converted from a GGUF
    gguf_sha256: str | None = None

    def encoder(self):
        """A copy of the tokenizer that encodes special-token text (e.g. "<|im_end|>" in a
        source file) as plain text, so only the corpus builder ever emits control ids."""
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(self.tokenizer.to_str())
        tok.encode_special_tokens = True
        return tok

    def describe(self) -> dict:
        d = {
            "source": self.source,
            "sha256": self.sha256,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "bos_id": self.bos_id,
        }
        if self.gguf_sha256:
            d["gguf_sha256"] = self.gguf_sha256
        return d


Spec = Union[str, TeacherTokenizer]


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- special ids ---------------------------------------------------------------------------------


def _token_text(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _special_id(tok, configs: list[dict], token_key: str, id_key: str) -> int | None:
    """The id of ``eos``/``bos`` from tokenizer_config.json / special_tokens_map.json / config.json."""
    for cfg in configs:
        text = _token_text(cfg.get(token_key))
        if text is not None and tok.token_to_id(text) is not None:
            return tok.token_to_id(text)
        value = cfg.get(id_key)
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _from_json(json_path: Path, source: str, files_dir: Path | None, **extra) -> TeacherTokenizer:
    from tokenizers import Tokenizer

    try:
        data = json_path.read_bytes()
        tok = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # OSError, UnicodeDecodeError, or the bare Exception tokenizers raises on bad JSON
        raise TokenizerError(
            f"cannot read tokenizer {json_path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from None
    where = files_dir or json_path.parent
    configs = [
        _read_json(where / n)
        for n in ("tokenizer_config.json", "special_tokens_map.json", "config.json", "generation_config.json")
    ]
    eos = _special_id(tok, configs, "eos_token", "eos_token_id")
    if eos is None:
        eos = next((tok.token_to_id(t) for t in EOS_FALLBACKS if tok.token_to_id(t) is not None), None)
    if eos is None:
        raise TokenizerError(
            f"{json_path}: cannot tell the end-of-text token (no eos_token in tokenizer_config.json or config.json)",
            hint="put a tokenizer_config.json with eos_token beside it",
        )
    bos = _special_id(tok, configs, "bos_token", "bos_token_id")
    return TeacherTokenizer(
        tok,
        source,
        sha256_bytes(data),
        tok.get_vocab_size(with_added_tokens=True),
        eos,
        bos,
        files_dir,
        json_path,
        **extra,
    )


# -- conversion through transformers (GGUF, SentencePiece), cached ---------------------------------


def _converted(key: str, convert) -> Path:
    """cache_dir()/tokenizers/KEY holding tokenizer files written by ``convert(tmp_dir)`` once."""
    out = cache_dir() / "tokenizers" / key
    if (out / TOKENIZER_JSON).is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=out.parent))
    try:
        convert(tmp)
        if not (tmp / TOKENIZER_JSON).is_file():
            raise TokenizerError(
                f"converting the tokenizer for {key} wrote no {TOKENIZER_JSON} (not a fast tokenizer?)"
            )
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / TOKENIZER_JSON).is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _save_auto(tmp: Path, *args, **kwargs) -> None:
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(*args, **kwargs).save_pretrained(str(tmp))
    except Exception as e:  # transformers raises many types; the user needs one line
        raise TokenizerError(
            f"transformers could not load the tokenizer from {args[0]}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        ) from None


def _load_gguf(path: Path, sha256: str, ref: str, source: str) -> TeacherTokenizer:
    files = _converted(f"gguf-{sha256}", lambda tmp: _save_auto(tmp, str(path.parent), gguf_file=path.name))
    return _from_json(files / TOKENIZER_JSON, source, files, gguf_ref=ref, gguf_sha256=sha256)


def _load_dir(path: Path) -> TeacherTokenizer:
    source = f"dir:{path}"
    if (path / TOKENIZER_JSON).is_file():
        return _from_json(path / TOKENIZER_JSON, source, path)
    if (path / "tokenizer.model").is_file():
        key = "spm-" + sha256_bytes((path / "tokenizer.model").read_bytes())
        files = _converted(key, lambda tmp: _save_auto(tmp, str(path)))
        return _from_json(files / TOKENIZER_JSON, source, files)
    raise TokenizerError(
        f"{path} holds no {TOKENIZER_JSON} or tokenizer.model", hint="give a model directory with its tokenizer files"
    )


def _load_hf(repo: str, revision: str) -> TeacherTokenizer:
    """Download the tokenizer files of ``repo`` at ``revision`` into the user cache (once)."""
    from assistant.store.resolve import offline_mode

    out = cache_dir() / "tokenizers" / f"hf-{repo.replace('/', '--')}-{revision}"
    if not (out / TOKENIZER_JSON).is_file():
        if offline_mode():
            raise TokenizerError(
                f"the tokenizer of {repo}@{revision} is not cached and offline mode is on (HF_HUB_OFFLINE=1)",
                hint="run once while online",
            )
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import EntryNotFoundError

        out.mkdir(parents=True, exist_ok=True)
        for name in (TOKENIZER_JSON, *TOKENIZER_FILES[1:], "config.json"):
            try:
                hf_hub_download(repo, name, revision=revision, local_dir=out)
            except EntryNotFoundError:
                if name == TOKENIZER_JSON:
                    shutil.rmtree(out, ignore_errors=True)
                    raise TokenizerError(
                        f"{repo}@{revision} has no {TOKENIZER_JSON}",
                        hint="download the model directory and pass its path instead",
                    ) from None
            except Exception as e:  # network errors come in many types
                raise TokenizerError(
                    f"downloading {name} of {repo}@{revision} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                ) from None
    return _from_json(out / TOKENIZER_JSON, f"hf:{repo}@{revision}", out)


def _lock_entry(spec: str):
    from assistant.store.lockfile import load_lock

    try:
        lock = load_lock()
    except AssistantError:
        return None, None
    return lock, lock.find(spec)


def load_tokenizer(spec: str) -> TeacherTokenizer:
    """Load the tokenizer named by ``spec`` (see the module docstring for what a spec may be)."""
    if isinstance(spec, TeacherTokenizer):
        return spec
    lock, entry = _lock_entry(spec)
    path = Path(spec).expanduser()
    if entry is not None or path.suffix == ".gguf":
        from assistant.store.resolve import HashCache, offline_mode, resolve

        if lock is None:
            from assistant.store.lockfile import load_lock

            lock = load_lock()
        model = resolve(spec, lock, HashCache(), offline=offline_mode())  # verifies the GGUF's sha256
        label = f"lock:{entry.name}" if entry is not None else f"gguf:{model.path}"
        return _load_gguf(model.path, model.sha256, entry.name if entry is not None else str(model.path), label)
    if path.is_dir():
        return _load_dir(path.resolve())
    if path.is_file():
        return _from_json(path.resolve(), f"file:{path.resolve()}", None)
    pinned = PINNED_HF.match(spec)
    if pinned:
        return _load_hf(pinned["repo"], pinned["rev"])
    if HF_ID.match(spec):
        raise UsageError(
            f"tokenizer {spec!r} is not pinned: write it as {spec.split('@')[0]}@<40-hex commit>",
            hint="a moving tokenizer would silently change the corpus",
        )
    known = f"; lock names: {', '.join(lock.names())}" if lock is not None else ""
    raise UsageError(
        f"tokenizer {spec!r} is not a models.lock name, a .gguf, a model directory, a tokenizer.json or an id@revision{known}"
    )


# -- into a student's directory --------------------------------------------------------------------


def save_tokenizer_files(spec_or_handle: Spec, dst_dir: str | os.PathLike) -> list[Path]:
    """Copy the tokenizer files into a student's HF directory; return what was written.

    For a GGUF-derived tokenizer this also writes tokenizer_from.json, so `assistant export gguf`
    copies the teacher GGUF's tokenizer metadata byte for byte instead of rebuilding it.
    """
    from assistant.model_dir import write_tokenizer_record

    tt = load_tokenizer(spec_or_handle) if isinstance(spec_or_handle, str) else spec_or_handle
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    if tt.files_dir is not None:
        for name in TOKENIZER_FILES:
            if (tt.files_dir / name).is_file():
                shutil.copyfile(tt.files_dir / name, dst / name)
                written.append(dst / name)
    else:
        shutil.copyfile(tt.json_path, dst / TOKENIZER_JSON)
        written.append(dst / TOKENIZER_JSON)
    if tt.gguf_ref is not None:
        written.append(write_tokenizer_record(dst, tt.gguf_ref, tt.gguf_sha256))
    return written


# -- comparing two vocabularies ------------------------------------------------------------------


def vocab_by_id(tokenizer) -> list[str | None]:
    """Token text for every id (None for holes), added tokens included."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    out: list[str | None] = [None] * (max(vocab.values(), default=-1) + 1)
    for text, i in vocab.items():
        out[i] = text
    return out


def same_tokenizer(a: Spec, b: Spec) -> tuple[bool, str]:
    """Whether ids mean the same tokens in ``a`` and ``b``: equal, or one a strict prefix of the other.

    A prefix is fine for distillation (Code Llama's 32016 tokens extend TinyLlama's 32000: the
    loss drops the extra columns and renormalizes); any id whose token differs is not.
    """
    ta = load_tokenizer(a) if isinstance(a, str) else a
    tb = load_tokenizer(b) if isinstance(b, str) else b
    va, vb = vocab_by_id(ta.tokenizer), vocab_by_id(tb.tokenizer)
    shared = min(len(va), len(vb))
    diff = [i for i in range(shared) if va[i] != vb[i]]
    if diff:
        i = diff[0]
        return False, (
            f"{len(diff)} of {shared} shared ids map to different tokens, first id {i}: "
            f"{va[i]!r} in {ta.source} vs {vb[i]!r} in {tb.source}"
        )
    if len(va) == len(vb):
        return True, f"identical vocabularies ({len(va)} tokens)"
    bigger = ta if len(va) > len(vb) else tb
    return (
        True,
        f"shared prefix of {shared} tokens; {bigger.source} has {abs(len(va) - len(vb))} more (ids {shared}..{max(len(va), len(vb)) - 1})",
    )
