"""Prompt → answer examples as fixed-size rows with a loss mask: `assistant distill corpus --task asserts`.

The token corpus (distill/corpus.py) is one stream in which every position is a target. A task
such as assertion generation needs the opposite: the student reads a long prompt and is scored
only on a short answer. Each example of the assertion dataset (assistant/asserts/dataset.py)
becomes one row of ``block_size + 1`` tokens:

    [prompt, exactly as `assistant eval asserts` renders it for a chat model] [target] [padding]

where the prompt is the tokenizer's chat template applied to ``scoring.user_message(example)``
(no system message, generation prompt on) followed by ``scoring.REPLY_START``, and the target is
the ground-truth assertion in the shape ``extract_assertion`` reads back from a reply (the line,
then the closing fence at which the eval stops) and the template's end-of-turn token. A parallel
uint8 mask is 1 exactly on the target tokens, so training puts its loss there and nowhere else.
A prompt too long for the row loses its start (its end, next to the answer, is kept); an example
whose target alone does not fit is dropped and counted.

The directory mirrors the token corpus: ``manifest.json`` (format, tokenizer and dataset
identities, counts, drops, sha256 of every shard, its own sha256), ``{split}-NNNNN.bin`` token
rows, ``{split}-NNNNN.mask`` masks, ``examples.jsonl`` (one line per example: row, cut, drop),
``tokenizer.json`` and ``chat_template.jinja``. Built in a temporary directory and renamed;
nothing depends on time, so the same inputs give the same bytes.

``open_corpus(path)`` opens either kind of corpus by its manifest's format; training, the logit
cache and the hidden-state cache read both through the same split interface
(``n_blocks``/``block``/``batch``, plus ``label_mask``, which is None for a token corpus).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from assistant.errors import UsageError
from distill.corpus import (
    FORMAT as TOKEN_FORMAT,
)
from distill.corpus import (
    MANIFEST,
    SPLITS,
    VERSION,
    CorpusError,
    TokenCorpus,
    _sha256_file,
    _umask,
    check_file,
    check_out_dir,
    publish,
    read_manifest,
    token_dtype,
    write_manifest,
)

FORMAT = "assistant-example-corpus"
TASKS = ("asserts",)
INDEX = "examples.jsonl"
TEMPLATE_FILE = "chat_template.jinja"
REBUILD = "rebuild with assistant distill corpus --task asserts"
SENTINEL = "\u2063ASSISTANT-REPLY\u2063"  # stands for a reply when locating the end-of-turn token
#: dataset splits an example corpus is built from (the test split is the eval's and never read)
DATASET_SPLITS = {"train": "train", "validation": "validation"}

#: progress(examples_done, examples_total)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ExampleCorpusConfig:
    """What to build: which examples, how long a row is, how rows are sharded."""

    block_size: int  # a row is block_size + 1 tokens: inputs row[:-1], labels row[1:]
    dataset_dir: Path | None = None  # None: assistant.asserts.dataset.default_dataset_dir()
    max_examples: int | None = None  # only the first N train examples (the CPU budget is small)
    max_val_examples: int | None = None  # only the first N validation examples
    shard_tokens: int = 1 << 24
    task: str = "asserts"

    def validate(self) -> None:
        if self.task not in TASKS:
            raise UsageError(f"--task {self.task!r} is not one of {', '.join(('code', *TASKS))}")
        if self.block_size < 2:
            raise UsageError(
                f"--block-size must be at least 2 (a prompt token and a target token), not {self.block_size}"
            )
        for name in ("max_examples", "max_val_examples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be positive, not {value}")
        if self.shard_tokens < 1:
            raise UsageError(f"--shard-tokens must be positive, not {self.shard_tokens}")

    def dataset(self) -> Path:
        from assistant.asserts.dataset import default_dataset_dir

        return Path(self.dataset_dir if self.dataset_dir is not None else default_dataset_dir()).expanduser()


@dataclass(frozen=True)
class ExampleCorpusResult:
    path: Path
    manifest: dict
    manifest_sha256: str
    seconds: float

    def to_dict(self) -> dict:
        m = self.manifest
        return {
            "path": str(self.path),
            "manifest_sha256": self.manifest_sha256,
            "seconds": round(self.seconds, 3),
            "task": m["task"],
            "block_size": m["block_size"],
            "splits": {s: {k: v for k, v in m["splits"][s].items() if k != "shards"} for s in SPLITS},
            "tokenizer": m["tokenizer"],
        }


# -- the prompt, as `assistant eval asserts` writes it ----------------------------------------------


@dataclass(frozen=True)
class ChatPrompt:
    """One tokenizer's chat template, used the way `assistant eval asserts` uses a GGUF's."""

    template: str
    source: str  # where the template came from
    eos_text: str
    bos_text: str
    end_of_turn_id: int
    end_of_turn: str

    def prompt_text(self, example: Any) -> str:
        """The text the eval feeds the model: template(user message) + the opened python fence."""
        from assistant.asserts.scoring import REPLY_START, user_message

        return render_chat(self.template, [{"role": "user", "content": user_message(example)}], self) + REPLY_START

    @staticmethod
    def target_text(example: Any) -> str:
        """The reply the eval scores as exact: the assertion line, then the fence at which it stops."""
        return example.assertion.strip() + "\n```"


def render_chat(template: str, messages: list[Any], names: Any, *, generation_prompt: bool = True) -> str:
    """The template applied by llama-cpp-python's Jinja2ChatFormatter, the formatter the eval's engine uses."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    try:
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=names.eos_text,
            bos_token=names.bos_text,
            add_generation_prompt=generation_prompt,
        )
        return formatter(messages=messages).prompt
    except Exception as e:  # the template is data: any jinja2 error, or raise_exception() inside it
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CorpusError(
            f"the chat template failed: {first}", hint="use a tokenizer with a working chat template"
        ) from None


def find_chat_template(tok: Any) -> tuple[str, str] | None:
    """(template, source) for a TeacherTokenizer: the GGUF's own metadata first (the file the eval
    runs), else chat_template.jinja or tokenizer_config.json beside tokenizer.json; None if none."""
    if tok.gguf_ref:
        from assistant.store.gguf_file import read_gguf
        from assistant.store.lockfile import load_lock
        from assistant.store.resolve import HashCache, offline_mode, resolve

        path = resolve(tok.gguf_ref, load_lock(), HashCache(), offline=offline_mode()).path
        template = read_gguf(path).chat_template
        if template:
            return str(template), f"gguf:{tok.gguf_sha256}"
    where = tok.files_dir or (tok.json_path.parent if tok.json_path else None)
    if where is None:
        return None
    if (where / TEMPLATE_FILE).is_file():
        return (where / TEMPLATE_FILE).read_text(encoding="utf-8"), TEMPLATE_FILE
    try:
        config = json.loads((where / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    template = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(template, list):  # named templates: the default one is the chat template
        template = next(
            (t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None
        )
    return (template, "tokenizer_config.json") if isinstance(template, str) and template else None


def chat_prompt(tok: Any) -> ChatPrompt:
    """The template and its end-of-turn token (the special token that follows an assistant reply)."""
    found = find_chat_template(tok)
    if found is None:
        raise CorpusError(
            f"tokenizer {tok.source} has no chat template, and the asserts task prompts through it as `assistant eval asserts` does",
            hint="use a chat model's tokenizer (a GGUF, or a directory with chat_template.jinja or tokenizer_config.json)",
        )
    template, source = found
    t = tok.tokenizer
    names = ChatPrompt(template, source, _text(t, tok.eos_id), _text(t, tok.bos_id), -1, "")
    rendered = render_chat(
        template,
        [{"role": "user", "content": "x"}, {"role": "assistant", "content": SENTINEL}],
        names,
        generation_prompt=False,
    )
    after = rendered.split(SENTINEL, 1)[1] if SENTINEL in rendered else ""
    special = {i for i, a in t.get_added_tokens_decoder().items() if a.special}
    ids = t.encode(after, add_special_tokens=False).ids if after else []
    if not ids or ids[0] not in special:
        raise CorpusError(
            f"cannot tell the end-of-turn token of {tok.source}'s chat template (an assistant reply is followed by {after[:20]!r})",
            hint="use a chat template that closes each turn with a special token (ChatML's <|im_end|>)",
        )
    return ChatPrompt(template, source, names.eos_text, names.bos_text, ids[0], t.id_to_token(ids[0]))


def _text(tokenizer: Any, token_id: int | None) -> str:
    return (tokenizer.id_to_token(token_id) or "") if token_id is not None else ""


def encode_prompt(tok: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt as the eval's engine reads it: special-token text is parsed
    (the template writes <|im_start|> as text), and a BOS is added only where the tokenizer adds one
    and the template has not written it already."""
    ids = list(tok.tokenizer.encode(text, add_special_tokens=True).ids)
    if tok.bos_id is not None and len(ids) >= 2 and ids[0] == ids[1] == tok.bos_id:
        ids = ids[1:]
    return ids


def encode_target(encoder: Any, text: str, end_of_turn_id: int) -> list[int]:
    """The answer's ids (special-token text inside an assertion stays plain text) and the end of turn."""
    return [*encoder.encode(text, add_special_tokens=False).ids, end_of_turn_id]


def pack_row(prompt: Sequence[int], target: Sequence[int], block_size: int, pad_id: int):
    """(tokens[B+1], mask[B+1], prompt tokens cut) for one example, or None when the target does not fit.

    The mask is 1 on the target tokens only. A prompt too long loses its first tokens; at least one
    prompt token stays, since the first target token is predicted from the one before it.
    """
    room = block_size + 1 - len(target)
    if room < 1 or not prompt or not target:
        return None
    cut = max(0, len(prompt) - room)
    seq = [*prompt[cut:], *target]
    tokens = np.full(block_size + 1, pad_id, dtype=np.int64)
    tokens[: len(seq)] = seq
    mask = np.zeros(block_size + 1, dtype=np.uint8)
    mask[len(prompt) - cut : len(seq)] = 1
    return tokens, mask, cut


# -- building -----------------------------------------------------------------------------------------


def dataset_identity(directory: Path) -> dict:
    """The assertion dataset's manifest sha256 and per-split hashes; a one-line error if it is not one."""
    manifest_path = directory / "manifest.json"
    missing = [s for s in DATASET_SPLITS.values() if not (directory / f"{s}.jsonl").is_file()]
    if not manifest_path.is_file() or missing:
        raise UsageError(
            f"{directory} holds no assertion dataset (manifest.json, train.jsonl and validation.jsonl)",
            hint="build one with `python -m assistant.asserts.dataset DIR` (or run `assistant eval asserts` once), then pass --dataset DIR",
        )
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
        splits = {s: manifest["splits"][s]["sha256"] for s in DATASET_SPLITS.values()}
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(
            f"{manifest_path} is not an assertion dataset manifest ({e})", hint="rebuild the dataset"
        ) from None
    return {
        "dir": str(directory.resolve()),
        "version": manifest.get("version"),
        "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        "split_sha256": splits,
    }


class RowWriter:
    """Appends rows to ``{split}-NNNNN.bin`` (tokens) and ``.mask`` files of ``rows_per_shard`` rows."""

    def __init__(self, out_dir: Path, split: str, rows_per_shard: int, dtype: np.dtype):
        self.out_dir, self.split, self.rows_per_shard, self.dtype = out_dir, split, rows_per_shard, dtype
        self.shards: list[dict] = []
        self._rows: list[tuple[np.ndarray, np.ndarray]] = []

    def add(self, tokens: np.ndarray, mask: np.ndarray) -> None:
        self._rows.append((tokens, mask))
        if len(self._rows) == self.rows_per_shard:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        name = f"{self.split}-{len(self.shards):05d}"
        tokens = np.stack([t for t, _ in self._rows]).astype(self.dtype).tobytes()
        masks = np.stack([m for _, m in self._rows]).astype(np.uint8).tobytes()
        (self.out_dir / f"{name}.bin").write_bytes(tokens)
        (self.out_dir / f"{name}.mask").write_bytes(masks)
        self.shards.append(
            {
                "file": f"{name}.bin",
                "mask": f"{name}.mask",
                "n_rows": len(self._rows),
                "sha256": hashlib.sha256(tokens).hexdigest(),
                "mask_sha256": hashlib.sha256(masks).hexdigest(),
            }
        )
        self._rows = []

    def finish(self) -> list[dict]:
        self._flush()
        return self.shards


def build_example_corpus(
    tokenizer: Any,
    config: ExampleCorpusConfig,
    out_dir: str | os.PathLike,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> ExampleCorpusResult:
    """Render, tokenize, cut and mask the dataset's train and validation examples into ``out_dir``."""
    from assistant.asserts.dataset import load_split
    from assistant.asserts.scoring import PROMPT_VERSION, REPLY_START

    started = time.perf_counter()
    config.validate()
    out = Path(out_dir).expanduser().resolve()
    check_out_dir(out, force)
    directory = config.dataset()
    dataset = dataset_identity(directory)
    chat = chat_prompt(tokenizer)
    limits = {"train": config.max_examples, "validation": config.max_val_examples}
    examples = {s: load_split(directory, DATASET_SPLITS[s], limits[s]) for s in SPLITS}
    B = config.block_size
    dtype = token_dtype(tokenizer.vocab_size)
    rows_per_shard = max(1, config.shard_tokens // (B + 1))
    pad_id = int(tokenizer.eos_id)
    encoder = tokenizer.encoder()
    total = sum(len(v) for v in examples.values())

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        index: list[str] = []
        splits: dict[str, dict] = {}
        done = 0
        for split in SPLITS:
            writer = RowWriter(tmp, split, rows_per_shard, dtype)
            counts = {"examples": len(examples[split]), "n_rows": 0, "dropped": 0, "truncated": 0}
            sums = {"n_target_tokens": 0, "n_prompt_tokens": 0, "prompt_tokens_cut": 0}
            shortest_dropped: int | None = None
            for ex in examples[split]:
                prompt = encode_prompt(tokenizer, chat.prompt_text(ex))
                target = encode_target(encoder, chat.target_text(ex), chat.end_of_turn_id)
                packed = pack_row(prompt, target, B, pad_id)
                line: dict[str, Any] = {
                    "id": ex.id,
                    "split": split,
                    "prompt_tokens": len(prompt),
                    "target_tokens": len(target),
                }
                if packed is None:
                    counts["dropped"] += 1
                    shortest_dropped = min(shortest_dropped or len(target), len(target))
                    line["dropped"] = "target does not fit the row"
                else:
                    tokens, mask, cut = packed
                    writer.add(tokens, mask)
                    line |= {"row": counts["n_rows"], "prompt_cut": cut}
                    counts["n_rows"] += 1
                    counts["truncated"] += cut > 0
                    sums["n_target_tokens"] += len(target)
                    sums["n_prompt_tokens"] += len(prompt) - cut
                    sums["prompt_tokens_cut"] += cut
                index.append(json.dumps(line, sort_keys=True) + "\n")
                done += 1
                if progress is not None:
                    progress(done, total)
            if split == "train" and counts["n_rows"] == 0:
                raise CorpusError(
                    f"no train example fits block size {B}: all {counts['examples']} were dropped "
                    f"(the shortest target is {shortest_dropped} tokens with the end of turn)"
                    if counts["examples"]
                    else f"the train split of {directory} is empty",
                    hint="raise --block-size" if counts["examples"] else "rebuild the dataset",
                )
            shards = writer.finish()
            splits[split] = {**counts, **sums, "n_tokens": counts["n_rows"] * (B + 1), "shards": shards}
        (tmp / INDEX).write_text("".join(index), encoding="utf-8")
        (tmp / TEMPLATE_FILE).write_text(chat.template, encoding="utf-8")
        shutil.copyfile(tokenizer.json_path, tmp / "tokenizer.json")
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "task": config.task,
            "dtype": dtype.name,
            "byte_order": "little",
            "block_size": B,
            "row_tokens": B + 1,
            "pad_id": pad_id,
            "tokenizer": {**tokenizer.describe(), "file": "tokenizer.json"},
            "prompt": {
                "recipe": "assistant eval asserts: chat template(user_message(example)), no system message, "
                "generation prompt, then REPLY_START (assistant/asserts/scoring.py)",
                "prompt_version": PROMPT_VERSION,
                "system": None,
                "reply_start": REPLY_START,
                "target": "assertion + '\\n```' + end of turn",
                "chat_template": {
                    "file": TEMPLATE_FILE,
                    "source": chat.source,
                    "sha256": hashlib.sha256(chat.template.encode("utf-8")).hexdigest(),
                },
                "end_of_turn": {"id": chat.end_of_turn_id, "token": chat.end_of_turn},
                "truncation": "prompt cut from the left (its end is kept); examples whose target does not fit are dropped",
            },
            "dataset": dataset,
            "splits": splits,
            "index": {"file": INDEX, "sha256": _sha256_file(tmp / INDEX)},
            "settings": {
                "max_examples": config.max_examples,
                "max_val_examples": config.max_val_examples,
                "rows_per_shard": rows_per_shard,
            },
        }
        manifest = write_manifest(tmp, manifest)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExampleCorpusResult(out, manifest, manifest["manifest_sha256"], time.perf_counter() - started)


# -- reading ------------------------------------------------------------------------------------------


class ExampleSplit:
    """One split's rows: ``block(i)`` is example i's ``block_size + 1`` tokens, ``label_mask`` its targets."""

    def __init__(
        self,
        name: str,
        path: Path,
        shards: list[dict],
        dtype: np.dtype,
        block_size: int,
        corpus_sha256: str,
        vocab_size: int,
        eos_id: int,
    ):
        self.name, self.path, self.dtype, self.block_size = name, path, dtype, block_size
        self.corpus_sha256, self.vocab_size, self.eos_id = corpus_sha256, vocab_size, eos_id
        self.shards = shards
        self.starts = np.cumsum([0, *(int(s["n_rows"]) for s in shards)])
        self.n_rows = int(self.starts[-1])
        self.n_tokens = self.n_rows * (block_size + 1)
        self._maps: dict[int, tuple[np.memmap, np.memmap]] = {}

    def __getstate__(self):  # DataLoader workers: reopen the maps in each process
        return {**self.__dict__, "_maps": {}}

    def _check(self, block_size: int) -> None:
        if block_size != self.block_size:
            raise CorpusError(
                f"the example corpus at {self.path} has rows of block size {self.block_size}, not {block_size}",
                hint=f"set block_size = {self.block_size}, or rebuild it with --block-size {block_size}",
            )

    def n_blocks(self, block_size: int) -> int:
        self._check(block_size)
        return self.n_rows

    def _row(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.n_rows:
            raise IndexError(f"row {index} outside the {self.name} split's {self.n_rows} examples")
        shard = int(np.searchsorted(self.starts, index, side="right")) - 1
        if shard not in self._maps:
            s, shape = self.shards[shard], (int(self.shards[shard]["n_rows"]), self.block_size + 1)
            self._maps[shard] = (
                np.memmap(self.path / s["file"], dtype=self.dtype, mode="r", shape=shape),
                np.memmap(self.path / s["mask"], dtype=np.uint8, mode="r", shape=shape),
            )
        tokens, masks = self._maps[shard]
        local = index - int(self.starts[shard])
        return tokens[local], masks[local]

    def block(self, index: int, block_size: int) -> np.ndarray:
        """Example ``index``'s row as int64: inputs = row[:-1], targets = row[1:]."""
        self._check(block_size)
        return self._row(index)[0].astype(np.int64)

    def mask(self, index: int) -> np.ndarray:
        """1 on the row's target tokens (the answer and the end of turn), 0 elsewhere."""
        return np.asarray(self._row(index)[1])

    def batch(self, indices: Sequence[int], block_size: int) -> np.ndarray:
        self._check(block_size)
        if not len(indices):
            return np.empty((0, block_size + 1), np.int64)
        return np.stack([self.block(int(i), block_size) for i in indices])

    def label_mask(self, indices: Sequence[int], block_size: int) -> np.ndarray:
        """bool [n, B]: which labels (row[1:]) are targets; the rest become IGNORE_INDEX."""
        self._check(block_size)
        if not len(indices):
            return np.zeros((0, block_size), bool)
        return np.stack([self.mask(int(i))[1:] != 0 for i in indices])


class ExampleCorpus:
    """A directory written by build_example_corpus, opened for training (memory-mapped)."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self.manifest_sha256: str = manifest["manifest_sha256"]
        self.vocab_size: int = int(manifest["tokenizer"]["vocab_size"])
        self.eos_id: int = int(manifest["tokenizer"]["eos_id"])
        self.block_size: int = int(manifest["block_size"])
        self.dtype = np.dtype(manifest["dtype"]).newbyteorder("<")

    @classmethod
    def open(cls, path: str | os.PathLike, verify: bool = True) -> ExampleCorpus:
        """Check the manifest's own hash and each shard's size and (with ``verify``) sha256."""
        path = Path(path).expanduser().resolve()
        manifest = read_manifest(path, FORMAT, "example corpus", REBUILD)
        corpus = cls(path, manifest)
        row = corpus.block_size + 1
        for split in SPLITS:
            for s in manifest["splits"][split]["shards"]:
                n = int(s["n_rows"]) * row
                check_file(
                    path / s["file"],
                    n * corpus.dtype.itemsize,
                    s["sha256"] if verify else None,
                    "corpus shard",
                    REBUILD,
                )
                check_file(path / s["mask"], n, s["mask_sha256"] if verify else None, "corpus mask", REBUILD)
        return corpus

    def split(self, name: str) -> ExampleSplit:
        if name not in SPLITS:
            raise UsageError(f"unknown split {name!r}: use train or validation")
        return ExampleSplit(
            name,
            self.path,
            self.manifest["splits"][name]["shards"],
            self.dtype,
            self.block_size,
            self.manifest_sha256,
            self.vocab_size,
            self.eos_id,
        )

    def tokenizer_json(self) -> Path:
        return self.path / self.manifest["tokenizer"]["file"]


def open_corpus(path: str | os.PathLike, verify: bool = True) -> TokenCorpus | ExampleCorpus:
    """A token corpus or an example corpus, by the format its manifest names."""
    where = Path(path).expanduser().resolve()
    try:
        fmt = json.loads((where / MANIFEST).read_text(encoding="utf-8")).get("format")
    except (OSError, ValueError, AttributeError):
        fmt = None
    if fmt == FORMAT:
        return ExampleCorpus.open(where, verify)
    if fmt not in (TOKEN_FORMAT, None) and (where / MANIFEST).is_file():
        raise CorpusError(
            f"{where} is neither a token corpus nor an example corpus ({MANIFEST} has format {fmt!r})",
            hint="build one with assistant distill corpus",
        )
    return TokenCorpus.open(where, verify)
