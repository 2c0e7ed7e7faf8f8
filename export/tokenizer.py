"""The tokenizer half of a GGUF: the ``tokenizer.*`` metadata llama.cpp tokenizes with.

Three sources, in order of preference:

(a) a teacher GGUF, copied verbatim, when the student shares the teacher's tokenizer (the
    SmolLM2 case). Byte-identical metadata is the only way to be sure llama.cpp tokenizes
    exactly as the teacher did; ``--tokenizer-from`` or a ``tokenizer_from.json`` in the
    model directory names it.
(b) a Hugging Face byte-level BPE ``tokenizer.json`` (merges, special ids and chat template
    through gguf's SpecialVocab; llama.cpp's pre-tokenizer chosen from the JSON's structure).
(c) a SentencePiece ``tokenizer.model`` with its real scores (constant scores are refused:
    llama.cpp would mis-tokenize code).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from assistant.model_dir import TOKENIZER_RECORD, write_tokenizer_record
from export import sentencepiece_model as spm
from export.errors import ExportError

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_MODEL = "tokenizer.model"

#: GGUF token types (gguf.TokenType), kept here so tables need no gguf import.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

#: tokenizer.json pre-tokenizer structure -> llama.cpp's ``tokenizer.ggml.pre`` name. Only
#: structures whose llama.cpp tokenization we have checked against the HF tokenizer are here;
#: anything else needs ``--pre NAME`` and `assistant export verify` to prove it.
PRE_TOKENIZERS: dict[tuple, str] = {
    (("ByteLevel", False, True),): "gpt-2",
    (("Digits", True), ("ByteLevel", False, True)): "smollm",
    (
        (
            "Split",
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            "Isolated",
            False,
        ),
        ("ByteLevel", False, False),
    ): "qwen2",
}


@dataclass(frozen=True)
class TokenizerMeta:
    """Typed ``tokenizer.*`` key/values ready for a GGUFWriter, and where they came from."""

    kind: str  # "gguf", "hf-bpe" or "sentencepiece"
    source: str  # what was read, for humans and provenance
    n_tokens: int
    fields: tuple[tuple[str, Any], ...]  # (key, gguf GGUFValue)
    source_sha256: str | None = None
    teacher: Any = None  # the models.lock entry the tokenizer was copied from, if any

    def add_to(self, writer) -> None:
        for key, v in self.fields:
            writer.add_key_value(key, v.value, v.type, v.sub_type)


def _harvest(fill: Callable) -> tuple[tuple[str, Any], ...]:
    """Run writer calls on a file-less GGUFWriter and keep the tokenizer keys they produced.

    This reuses gguf's own key names and value types (and SpecialVocab.add_to_gguf) exactly.
    """
    import gguf

    w = gguf.GGUFWriter(None, "llama")
    fill(w)
    return tuple((k, v) for k, v in w.kv_data[0].items() if k.startswith("tokenizer."))


# -- (a) copied from a GGUF ----------------------------------------------------------------------


def from_gguf(path: Path, *, teacher=None, source: str | None = None, sha256: str | None = None) -> TokenizerMeta:
    """Every ``tokenizer.*`` key of ``path``, values byte for byte (strings kept as raw bytes)."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, OSError) as e:
        raise ExportError(f"cannot read the tokenizer of {path}: {e}") from None
    copied: list[tuple[str, Any, Any, Any]] = []
    for key, f in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        main = f.types[0]
        if main == gguf.GGUFValueType.ARRAY:
            sub = f.types[-1]
            if len(f.types) != 2:
                raise ExportError(f"{path}: nested array in {key} is not supported")
            if sub == gguf.GGUFValueType.STRING:
                value = [bytes(f.parts[i]) for i in f.data]
            else:
                value = [f.parts[i].tolist()[0] for i in f.data]
            copied.append((key, value, main, sub))
        elif main == gguf.GGUFValueType.STRING:
            copied.append((key, bytes(f.parts[-1]), main, None))
        else:
            copied.append((key, f.parts[-1].tolist()[0], main, None))
    if not any(k == "tokenizer.ggml.tokens" for k, *_ in copied):
        raise ExportError(f"{path} has no tokenizer.ggml.tokens to copy", hint="pass a GGUF that embeds its tokenizer")

    def fill(w):
        for key, value, main, sub in copied:
            w.add_key_value(key, value, main, sub)

    fields = _harvest(fill)
    n = len(next(v.value for k, v in fields if k == "tokenizer.ggml.tokens"))
    return TokenizerMeta("gguf", source or f"gguf:{path}", n, fields, sha256, teacher)


def read_record(model_dir: Path) -> dict | None:
    """The model directory's own note of which GGUF's tokenizer it shares, if any."""
    path = model_dir / TOKENIZER_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(record, dict) or not isinstance(record.get("gguf"), str):
        raise ExportError(f'{path} must be {{"gguf": "LOCKNAME_OR_PATH"}}, got {record!r}')
    return record


write_record = write_tokenizer_record  # the contract lives in assistant.model_dir (both stages use it)


# -- (b) Hugging Face byte-level BPE --------------------------------------------------------------


def pre_tokenizer_fingerprint(pre: dict | None) -> tuple:
    """A hashable summary of the parts of a tokenizer.json pre-tokenizer that change splits."""
    if not pre:
        return ()
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    out = []
    for s in steps:
        kind = s.get("type")
        if kind == "ByteLevel":
            out.append((kind, bool(s.get("add_prefix_space", False)), bool(s.get("use_regex", True))))
        elif kind == "Digits":
            out.append((kind, bool(s.get("individual_digits", False))))
        elif kind == "Split":
            pattern = s.get("pattern", {})
            out.append((kind, pattern.get("Regex") or pattern.get("String"), s.get("behavior"), bool(s.get("invert"))))
        else:
            out.append((kind, json.dumps(s, sort_keys=True)))
    return tuple(out)


def detect_pre(pre: dict | None, where: Path) -> str:
    fp = pre_tokenizer_fingerprint(pre)
    name = PRE_TOKENIZERS.get(fp)
    if name is None:
        raise ExportError(
            f"{where}: llama.cpp pre-tokenizer for {json.dumps(pre)[:120]} is not known to the exporter",
            hint="pass --pre NAME (llama.cpp's tokenizer.ggml.pre, e.g. gpt-2, smollm, llama-bpe) and check it with "
            "`assistant export verify`",
        )
    return name


def _added_special_tokens(tokenizer_json: Path) -> tuple[bool, bool]:
    """Whether the tokenizer puts a token before/after the text by itself (its post-processor)."""
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(str(tokenizer_json))
    plain = t.encode("a", add_special_tokens=False).ids
    full = t.encode("a", add_special_tokens=True).ids
    if len(full) == len(plain) or not plain:
        return False, False
    return full[0] != plain[0], full[-1] != plain[-1]


def from_hf_bpe(model_dir: Path, n_vocab: int, pre: str | None = None) -> TokenizerMeta:
    import gguf

    path = model_dir / TOKENIZER_JSON
    try:
        tj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ExportError(f"{path} is not valid JSON: {e}") from None
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(
            f"{path} is a {model.get('type')!r} tokenizer; only byte-level BPE is read from tokenizer.json",
            hint=f"add the model's original {TOKENIZER_MODEL} for SentencePiece vocabularies",
        )
    if model.get("byte_fallback"):
        raise ExportError(
            f"{path} is a SentencePiece-style BPE (byte_fallback)",
            hint=f"copy the base model's original {TOKENIZER_MODEL} into {model_dir}",
        )
    vocab: dict[str, int] = model.get("vocab") or {}
    added = tj.get("added_tokens") or []
    top = max([*vocab.values(), *(a["id"] for a in added)], default=-1) + 1
    if top > n_vocab:
        raise ExportError(f"{path} has token ids up to {top - 1} but the model's vocab_size is {n_vocab}")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]  # llama.cpp needs every id; padding rows are unused
    types = [UNUSED] * n_vocab
    for text, i in vocab.items():
        tokens[i], types[i] = text, NORMAL
    for a in added:
        tokens[a["id"]], types[a["id"]] = a["content"], CONTROL if a.get("special") else USER_DEFINED
    pre_name = pre or detect_pre(tj.get("pre_tokenizer"), path)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
    if not special.merges:
        raise ExportError(f"{path} has no BPE merges", hint="save the tokenizer with tokenizer.save_pretrained(dir)")
    add_bos, add_eos = _added_special_tokens(path)

    def fill(w):
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre_name)
        w.add_token_list(tokens)
        w.add_token_types(types)
        special.add_to_gguf(w, quiet=True)
        if "bos" not in special.add_special_token:
            w.add_add_bos_token(add_bos)
        if "eos" not in special.add_special_token:
            w.add_add_eos_token(add_eos)

    return TokenizerMeta("hf-bpe", f"hf-bpe:{TOKENIZER_JSON} (pre {pre_name})", n_vocab, _harvest(fill))


# -- (c) SentencePiece ---------------------------------------------------------------------------


def from_sentencepiece(model_dir: Path, n_vocab: int) -> TokenizerMeta:
    import gguf

    path = model_dir / TOKENIZER_MODEL
    model = spm.read(path)
    normal_scores = {p.score for p in model.pieces if p.type == spm.NORMAL}
    if len(normal_scores) <= 1:
        raise ExportError(
            f"{path}: every piece has the score {next(iter(normal_scores), 0.0)}; llama.cpp would mis-tokenize "
            "(this is what a vocab rebuilt from tokenizer.json looks like)",
            hint="copy the base model's original tokenizer.model into the directory",
        )
    tokens = [p.text for p in model.pieces]
    scores = [p.score for p in model.pieces]
    types = [p.type for p in model.pieces]
    extra = _added_beyond(model_dir, len(tokens))
    for text, special in extra:
        tokens.append(text)
        scores.append(-1000.0)
        types.append(CONTROL if special else USER_DEFINED)
    if len(tokens) > n_vocab:
        raise ExportError(f"{path} has {len(tokens)} tokens but the model's vocab_size is {n_vocab}")
    for i in range(len(tokens), n_vocab):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(UNUSED)
    special = gguf.SpecialVocab(model_dir, load_merges=False, n_vocab=n_vocab)

    def fill(w):
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_add_space_prefix(model.add_dummy_prefix)
        for typ, tid in (("bos", model.bos_id), ("eos", model.eos_id), ("unk", model.unk_id), ("pad", model.pad_id)):
            if typ not in special.special_token_ids and 0 <= tid < n_vocab:
                special.special_token_ids[typ] = tid
        special.add_to_gguf(w, quiet=True)

    return TokenizerMeta(
        "sentencepiece", f"sentencepiece:{TOKENIZER_MODEL} ({model.model_type})", n_vocab, _harvest(fill)
    )


def _added_beyond(model_dir: Path, n_pieces: int) -> list[tuple[str, bool]]:
    """Tokens a HF tokenizer added after the SentencePiece vocab (ids >= n_pieces), in id order."""
    path = model_dir / TOKENIZER_JSON
    if not path.is_file():
        return []
    added = json.loads(path.read_text(encoding="utf-8")).get("added_tokens") or []
    extra = sorted((a["id"], a["content"], bool(a.get("special"))) for a in added if a["id"] >= n_pieces)
    for want, (got, *_rest) in enumerate(extra, start=n_pieces):
        if got != want:
            raise ExportError(f"{path}: added token ids are not contiguous after the SentencePiece vocab (id {got})")
    return [(text, special) for _, text, special in extra]


# -- choosing ------------------------------------------------------------------------------------


def _check_gguf_vocab(path: Path, n_vocab: int, model_dir: Path) -> None:
    from assistant.store.gguf_file import read_gguf

    tokens = read_gguf(path).metadata.get("tokenizer.ggml.tokens")
    n = getattr(tokens, "length", None) if tokens is not None else None
    n = len(tokens) if n is None and tokens is not None else n
    if n is None:
        raise ExportError(f"{path} has no tokenizer.ggml.tokens to copy", hint="pass a GGUF that embeds its tokenizer")
    if n != n_vocab:
        raise ExportError(
            f"the tokenizer of {path.name} has {n} tokens but {model_dir} has vocab_size {n_vocab}",
            hint="the student does not share that tokenizer: drop --tokenizer-from / tokenizer_from.json",
        )


def tokenizer_for(
    model_dir: Path,
    n_vocab: int,
    *,
    tokenizer_from: str | None = None,
    pre: str | None = None,
    locate_gguf: Callable[[str], tuple[Path, Any, str]] | None = None,
) -> TokenizerMeta:
    """Pick and read the tokenizer for ``model_dir`` (see the module docstring for the order).

    ``locate_gguf(ref)`` turns a lock name or path into (verified path, lock entry or None, sha256).
    """
    record = read_record(model_dir)
    ref = tokenizer_from or (record or {}).get("gguf")
    if ref:
        if locate_gguf is None:
            raise ExportError("a tokenizer GGUF was named but no way to locate it was given")
        ref_path = Path(ref).expanduser()
        if not tokenizer_from and not ref_path.is_absolute() and (model_dir / ref_path).is_file():
            ref = str(model_dir / ref_path)  # a path recorded relative to the model directory
        path, entry, sha = locate_gguf(ref)
        if record and not tokenizer_from and record.get("sha256") and record["sha256"] != sha:
            raise ExportError(
                f"{model_dir / TOKENIZER_RECORD} names {ref} with sha256 {record['sha256']}, but that file is {sha}",
                hint="the teacher changed since the student was trained: pass --tokenizer-from explicitly if it is right",
            )
        _check_gguf_vocab(path, n_vocab, model_dir)  # in milliseconds, before GGUFReader's seconds
        label = f"gguf:{entry.name}" if entry is not None else f"gguf:{path.name}"
        return from_gguf(path, teacher=entry, source=label, sha256=sha)
    if (model_dir / TOKENIZER_MODEL).is_file():
        return from_sentencepiece(model_dir, n_vocab)
    if (model_dir / TOKENIZER_JSON).is_file():
        return from_hf_bpe(model_dir, n_vocab, pre)
    raise ExportError(
        f"{model_dir} has no tokenizer ({TOKENIZER_JSON}, {TOKENIZER_MODEL} or {TOKENIZER_RECORD})",
        hint="save it with tokenizer.save_pretrained(dir), or pass --tokenizer-from GGUF_OR_LOCKNAME",
    )
