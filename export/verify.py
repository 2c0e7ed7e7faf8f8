"""Prove an export did not change the model: PyTorch vs llama.cpp on held-out code prompts.

For each GGUF: the tokenizer must split code (indentation, tabs, digits) exactly as the
HF tokenizer does; F32/F16 files must reproduce PyTorch's greedy continuation token for
token; and every file gets the mean KL(reference || file) of its next-token distributions,
top-1 agreement, its size and its decode speed, so quantization cost is a number, not a guess.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from assistant.store.gguf_file import read_gguf
from export.errors import ExportError

#: Real Python with the shapes that break tokenizers: nested indentation, blank lines,
#: a docstring, a tab-indented block, digits. Written for this check: in no training set.
HELD_OUT_PROMPTS: tuple[str, ...] = (
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n    if n < 2:\n        return n\n',
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n",
    "import os\n\n\ndef list_python_files(root):\n    found = []\n    for dirpath, _, names in os.walk(root):\n"
    "        for name in names:\n",
    "def parse_pairs(line):\n\t# 'a=1; b=22' -> {'a': 1, 'b': 22}\n\tout = {}\n\tfor part in line.split(';'):\n",
)
#: Extra text for the tokenization check only (cheap: no model run).
TOKENIZATION_TEXTS: tuple[str, ...] = HELD_OUT_PROMPTS + (
    "    x = 1\n        y = 22\n\t\tz = 333\n",
    "if __name__ == '__main__':\n    main()  # trailing spaces   \n\n\n",
    "s = 'naïve café ✓'\nprint(f\"{s!r:>20}\")\n",
    "    \n  \t \n",
)
#: Quantizations that must reproduce the reference's greedy continuation exactly.
STRICT_TYPES = ("F32", "F16")


@dataclass(frozen=True)
class VerifyConfig:
    n_new: int = 64  # greedy tokens compared per prompt
    #: Threads for the comparison runs. One: results do not depend on it, and on a shared
    #: 2-core machine two spin-waiting llama.cpp threads were measured 40-100x slower than one.
    threads: int = 1
    speed_threads: int = 2  # threads for the decode-speed run
    speed_runs: int = 1  # best of this many decode-speed runs (other load only ever slows a run down)
    prompts: tuple[str, ...] = HELD_OUT_PROMPTS
    texts: tuple[str, ...] = TOKENIZATION_TEXTS
    speed_tokens: int = 64  # 0: skip the decode-speed run


@dataclass
class Reference:
    """PyTorch's side: the prompts' ids, greedy continuations and logits at every position."""

    prompt_ids: list[list[int]]
    sequences: list[list[int]]  # prompt + greedy continuation
    logits: list  # float32 arrays (len(sequence), vocab)
    text_ids: list[tuple[list[int], list[int]]]  # per text: ids with and without special tokens


@dataclass
class FileReport:
    path: str
    quantization: str
    size: int
    tokenization_identical: bool
    tokenization_mismatches: list[int]
    greedy_identical: bool
    greedy_matched: list[int]  # per prompt: leading continuation tokens equal to PyTorch's
    kl_mean: float  # mean over positions of KL(PyTorch || file), nats
    top1: float  # fraction of positions whose argmax equals PyTorch's
    kl_f16: float | None = None  # the same against the F16 file among those verified
    top1_f16: float | None = None
    decode_tps: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    model_dir: str
    n_prompts: int
    n_new: int
    positions: int
    speed_threads: int
    files: list[FileReport]

    @property
    def passed(self) -> bool:
        return all(f.passed for f in self.files)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        for f, fd in zip(self.files, d["files"]):
            fd["passed"] = f.passed
        return d


# -- pure math -----------------------------------------------------------------------------------


def log_softmax(x):
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def kl_per_position(ref_logits, logits):
    """KL(softmax(ref) || softmax(logits)) for each row, in nats (float64 throughout)."""
    import numpy as np

    p, q = log_softmax(ref_logits), log_softmax(logits)
    return (np.exp(p) * (p - q)).sum(axis=-1)


def top1_agreement(ref_logits, logits) -> float:
    import numpy as np

    return float((np.argmax(ref_logits, axis=-1) == np.argmax(logits, axis=-1)).mean())


def matched_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# -- PyTorch reference ---------------------------------------------------------------------------


def load_hf_tokenizer(model_dir: Path, tokenizer_gguf: Path | None = None):
    from transformers import AutoTokenizer

    if any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        return AutoTokenizer.from_pretrained(model_dir)
    if tokenizer_gguf is not None:
        return AutoTokenizer.from_pretrained(tokenizer_gguf.parent, gguf_file=tokenizer_gguf.name)
    raise ExportError(
        f"{model_dir} has no HF tokenizer to verify against",
        hint="save it with tokenizer.save_pretrained(dir) or record tokenizer_from.json",
    )


def torch_greedy(model, ids: list[int], n_new: int) -> list[int]:
    """Greedy continuation with the KV cache; never stops early (EOS is just another token here)."""
    import inspect

    import torch
    from transformers import DynamicCache

    # transformers 5.2x renamed `past_key_values` to `cache` and drops the old name in 5.40.
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    kv = {name: DynamicCache(config=model.config), "use_cache": True}
    out: list[int] = []
    with torch.no_grad():
        logits = model(torch.tensor([ids]), **kv).logits
        for _ in range(n_new):
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            logits = model(torch.tensor([[nxt]]), **kv).logits
    return out


def torch_reference(model_dir: Path, cfg: VerifyConfig, tokenizer_gguf: Path | None = None) -> Reference:
    import torch
    import transformers.utils.logging as hf_logging
    from transformers import AutoModelForCausalLM

    tok = load_hf_tokenizer(model_dir, tokenizer_gguf)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one table on stdout, no "Loading weights" bar on stderr
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    prompt_ids, sequences, logits = [], [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cfg.threads))  # restored below: the caller's process keeps its setting
    try:
        for prompt in cfg.prompts:
            ids = list(tok(prompt)["input_ids"])
            seq = ids + torch_greedy(model, ids, cfg.n_new)
            with torch.no_grad():
                logits.append(model(torch.tensor([seq])).logits[0].float().numpy())
            prompt_ids.append(ids)
            sequences.append(seq)
    finally:
        torch.set_num_threads(threads)
    text_ids = [(list(tok(t)["input_ids"]), list(tok(t, add_special_tokens=False)["input_ids"])) for t in cfg.texts]
    return Reference(prompt_ids, sequences, logits, text_ids)


# -- llama.cpp side ------------------------------------------------------------------------------


def _load(path: Path, n_ctx: int, threads: int, logits_all: bool):
    from assistant.runtime.llama_lib import llama_cpp as load_llama_cpp

    llama_cpp = load_llama_cpp()
    try:
        return llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=logits_all,
            verbose=False,
        )
    except (ValueError, RuntimeError) as e:
        raise ExportError(f"llama.cpp could not load {path}: {e}") from None


def llama_greedy(llm, ids: list[int], n_new: int) -> list[int]:
    import numpy as np

    llm.reset()
    llm.eval(ids)
    out: list[int] = []
    for i in range(n_new):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        if i + 1 < n_new:
            llm.eval([nxt])
    return out


def llama_logits(llm, seq: list[int]):
    import numpy as np

    llm.reset()
    llm.eval(seq)
    return np.array(llm.scores[: len(seq)], dtype=np.float32)


def decode_tokens_per_s(path: Path, ids: list[int], n: int, threads: int) -> float:
    """Greedy decode speed after the prompt: 1 / median time between tokens.

    The median, not the mean, so one stall on a busy machine does not decide the figure.
    """
    import statistics

    llm = _load(path, len(ids) + n + 8, threads, logits_all=False)
    try:
        stamps: list[float] = []
        for _ in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            stamps.append(time.perf_counter())
            if len(stamps) > n:
                break
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        return 1.0 / statistics.median(gaps) if gaps and statistics.median(gaps) > 0 else 0.0
    finally:
        llm.close()


def check_file(path: Path, ref: Reference, cfg: VerifyConfig) -> tuple[FileReport, list]:
    """Run one GGUF against the reference; also return its logits (for the F16 comparison)."""
    import numpy as np

    info = read_gguf(path)
    n_ctx = max(len(s) for s in ref.sequences) + 16
    llm = _load(path, n_ctx, cfg.threads, logits_all=True)
    try:
        mismatches = []
        for i, (text, (with_special, plain)) in enumerate(zip(cfg.texts, ref.text_ids)):
            got_special = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
            got_plain = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
            if got_special != with_special or got_plain != plain:
                mismatches.append(i)
        matched, file_logits = [], []
        for ids, seq in zip(ref.prompt_ids, ref.sequences):
            cont = llama_greedy(llm, ids, cfg.n_new)
            matched.append(matched_prefix(cont, seq[len(ids) :]))
            file_logits.append(llama_logits(llm, seq))
    finally:
        llm.close()
    kl = np.concatenate([kl_per_position(r, f) for r, f in zip(ref.logits, file_logits)])
    top1 = np.concatenate([np.argmax(r, -1) == np.argmax(f, -1) for r, f in zip(ref.logits, file_logits)])
    report = FileReport(
        path=str(path),
        quantization=info.quantization,
        size=path.stat().st_size,
        tokenization_identical=not mismatches,
        tokenization_mismatches=mismatches,
        greedy_identical=all(m == cfg.n_new for m in matched),
        greedy_matched=matched,
        kl_mean=float(kl.mean()),
        top1=float(top1.mean()),
    )
    if mismatches:
        report.problems.append(f"tokenization differs from the HF tokenizer on {len(mismatches)} text(s)")
    if report.quantization in STRICT_TYPES and not report.greedy_identical:
        report.problems.append(
            f"{report.quantization} greedy continuation diverges from PyTorch after {min(matched)} tokens"
        )
    return report, file_logits


def verify(
    model_dir: Path,
    files: list[Path],
    cfg: VerifyConfig = VerifyConfig(),
    *,
    tokenizer_gguf: Path | None = None,
    on_file=None,
) -> VerifyReport:
    """Compare every GGUF in ``files`` with the PyTorch model in ``model_dir``."""
    import numpy as np

    model_dir = Path(model_dir)
    files = [Path(f) for f in files]
    infos = [read_gguf(f) for f in files]  # fail before the slow part on a missing or broken file
    ref = torch_reference(model_dir, cfg, tokenizer_gguf)
    # The first F16 file runs first so the others can be compared with it without keeping all logits.
    order = sorted(range(len(files)), key=lambda i: infos[i].quantization != "F16")
    reports: list[FileReport | None] = [None] * len(files)
    f16_logits = None
    for i in order:
        if on_file:
            on_file(files[i])
        report, logits = check_file(files[i], ref, cfg)
        if f16_logits is None and report.quantization == "F16":
            f16_logits = logits
        if f16_logits is not None:
            report.kl_f16 = float(np.concatenate([kl_per_position(a, b) for a, b in zip(f16_logits, logits)]).mean())
            report.top1_f16 = float(
                np.mean(np.concatenate([np.argmax(a, -1) == np.argmax(b, -1) for a, b in zip(f16_logits, logits)]))
            )
        if cfg.speed_tokens:
            report.decode_tps = max(
                decode_tokens_per_s(files[i], ref.prompt_ids[0], cfg.speed_tokens, cfg.speed_threads)
                for _ in range(max(1, cfg.speed_runs))
            )
        reports[i] = report
    return VerifyReport(
        model_dir=str(model_dir),
        n_prompts=len(cfg.prompts),
        n_new=cfg.n_new,
        positions=sum(len(s) for s in ref.sequences),
        speed_threads=cfg.speed_threads,
        files=[r for r in reports if r is not None],
    )
