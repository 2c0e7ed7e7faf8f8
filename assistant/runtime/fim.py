"""Fill-in-the-middle prompts built from the model's own FIM tokens.

llama-cpp-python 0.3.36 hard-codes the FIM token ids to 0 (``suffix=`` yields garbage), so we
look the tokens up by their text in the model's vocabulary and build the prompt token by
token: user text is tokenized with special-token parsing off, so code that happens to
contain ``<|fim_prefix|>`` cannot inject control tokens. Prefix and suffix are trimmed to
the context the way editors expect: the prefix loses lines at the top, the suffix at the
bottom, the prefix keeps about three quarters of the room; other files (the repository
form) only fill what is left.

The cursor's own line, up to the cursor, goes after the middle token as the start of the
middle (llama.cpp's ``/infill`` does the same with its ``prompt`` field): a keystroke then
changes only the last few tokens, so the KV cache keeps the whole prefix and suffix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from assistant.errors import AssistantError, UsageError

if TYPE_CHECKING:
    from assistant.runtime.engine import Engine, Generation, Sampling, TextCallback

Tokenize = Callable[[str], list[int]]
Detokenize = Callable[[list[int]], str]


class FimUnsupported(AssistantError):
    """The model has no fill-in-the-middle tokens."""


@dataclass(frozen=True)
class FimFamily:
    """The token texts one model family was trained with (prefix-suffix-middle order)."""

    name: str
    prefix: str
    suffix: str
    middle: str
    pad: str | None = None
    repo: str | None = None
    file_sep: str | None = None
    ends: tuple[str, ...] = ()  # tokens that end an infill besides the model's end-of-generation ones


FAMILIES: tuple[FimFamily, ...] = (
    FimFamily(
        "qwen",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        "<|fim_pad|>",
        "<|repo_name|>",
        "<|file_sep|>",
        (
            "<|endoftext|>",
            "<|fim_pad|>",
            "<|file_sep|>",
            "<|repo_name|>",
            "<|im_end|>",
            "<|fim_prefix|>",
            "<|fim_suffix|>",
            "<|fim_middle|>",
        ),
    ),
    FimFamily(
        "codegemma",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        None,
        None,
        "<|file_separator|>",
        ("<|file_separator|>", "<eos>", "<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
    ),
    FimFamily(
        "starcoder",
        "<fim_prefix>",
        "<fim_suffix>",
        "<fim_middle>",
        "<fim_pad>",
        "<reponame>",
        "<file_sep>",
        ("<|endoftext|>", "<fim_pad>", "<file_sep>", "<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ),
    FimFamily(
        "deepseek",
        "<｜fim▁begin｜>",
        "<｜fim▁hole｜>",
        "<｜fim▁end｜>",
        None,
        None,
        None,
        ("<｜end▁of▁sentence｜>", "<|EOT|>"),
    ),
)


@dataclass(frozen=True)
class FimTokens:
    """Token ids of one model's FIM vocabulary."""

    family: str
    prefix: int
    suffix: int
    middle: int
    repo: int | None = None
    file_sep: int | None = None
    ends: frozenset[int] = frozenset()
    bos: int | None = None  # prepended when the model's tokenizer adds BOS
    texts: dict[int, str] = field(default_factory=dict, compare=False)

    def text_of(self, token: int) -> str:
        return self.texts.get(token, f"<{token}>")


def find_fim_tokens(lookup: Callable[[str], int | None], bos: int | None = None) -> FimTokens | None:
    """The first family whose prefix, suffix and middle tokens all exist; ``lookup`` maps text to an id."""
    for fam in FAMILIES:
        ids = [lookup(t) for t in (fam.prefix, fam.suffix, fam.middle)]
        if any(i is None for i in ids):
            continue
        if fam.name == "codegemma" and lookup("<|file_separator|>") is None:
            continue
        pre, suf, mid = (int(i) for i in ids if i is not None)
        repo = lookup(fam.repo) if fam.repo else None
        sep = lookup(fam.file_sep) if fam.file_sep else None
        ends = {i for i in (lookup(t) for t in fam.ends) if i is not None}
        texts = {pre: fam.prefix, suf: fam.suffix, mid: fam.middle}
        if repo is not None and fam.repo:
            texts[repo] = fam.repo
        if sep is not None and fam.file_sep:
            texts[sep] = fam.file_sep
        return FimTokens(fam.name, pre, suf, mid, repo, sep, frozenset(ends), bos, texts)
    return None


def engine_lookup(engine: Engine) -> Callable[[str], int | None]:
    """Text → id for control/user-defined tokens of a loaded model (one token, same text back)."""
    llm = engine.llm

    def lookup(text: str) -> int | None:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if len(ids) != 1:
            return None
        return ids[0] if llm._model.token_get_text(ids[0]) == text else None

    return lookup


def fim_tokens(engine: Engine) -> FimTokens | None:
    import llama_cpp

    vocab = engine.llm._model.vocab
    bos = engine.llm.token_bos() if llama_cpp.llama_vocab_get_add_bos(vocab) else None
    return find_fim_tokens(engine_lookup(engine), bos if bos is not None and bos >= 0 else None)


def require_fim(engine: Engine) -> FimTokens:
    """The model's FIM tokens, or a one-line refusal that names a model that has them."""
    fim = fim_tokens(engine)
    if fim is None:
        looked = ", ".join(f"{f.prefix}/{f.suffix}/{f.middle}" for f in FAMILIES[::2])
        raise FimUnsupported(
            f"{engine.model.name} has no fill-in-the-middle tokens (looked for {looked} in its vocabulary)",
            hint="use a code model trained for infilling, e.g. --model qwen2.5-coder-0.5b-instruct",
        )
    return fim


# -- the prompt ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtraFile:
    """Another file of the project, given to the model as context (llama.cpp's ``input_extra``)."""

    name: str
    text: str


@dataclass(frozen=True)
class InfillRequest:
    prefix: str
    suffix: str = ""
    extra: tuple[ExtraFile, ...] = ()
    filename: str = ""  # the current file's path, shown after the other files
    repo: str = "project"


@dataclass(frozen=True)
class FimPrompt:
    tokens: list[int]
    prefix_tokens: int
    suffix_tokens: int
    line_tokens: int  # the cursor line's text before the cursor, placed after the middle token
    extra_files: tuple[str, ...]  # names of the files that made it in
    dropped_files: tuple[str, ...]
    prefix_trimmed: bool
    suffix_trimmed: bool

    def text(self, fim: FimTokens, detokenize: Detokenize) -> str:
        """A readable rendering (control tokens by name) for --verbose and tests."""
        out: list[str] = []
        run: list[int] = []
        for t in self.tokens:
            if t in fim.texts or t == fim.bos:
                if run:
                    out.append(detokenize(run))
                    run = []
                out.append(fim.text_of(t) if t in fim.texts else "<bos>")
            else:
                run.append(t)
        if run:
            out.append(detokenize(run))
        return "".join(out)


MIN_ROOM = 16
LINE_SHARE = 4  # a cursor line longer than 1/LINE_SHARE of the room stays in the prefix


def _trim_prefix(tokens: list[int], keep: int, tokenize: Tokenize, detokenize: Detokenize) -> list[int]:
    """The last ``keep`` tokens, starting at a line boundary where there is one."""
    if len(tokens) <= keep:
        return tokens
    if keep <= 0:
        return []
    text = detokenize(tokens[-keep:])
    nl = text.find("\n")
    if 0 <= nl < len(text) - 1:
        text = text[nl + 1 :]
    out = tokenize(text)
    return out[-keep:] if len(out) > keep else out


def _trim_suffix(tokens: list[int], keep: int, tokenize: Tokenize, detokenize: Detokenize) -> list[int]:
    """The first ``keep`` tokens, ending at a line boundary where there is one."""
    if len(tokens) <= keep:
        return tokens
    if keep <= 0:
        return []
    text = detokenize(tokens[:keep])
    nl = text.rfind("\n")
    if nl > 0:
        text = text[: nl + 1]
    out = tokenize(text)
    return out[:keep]


def build_prompt(
    fim: FimTokens, request: InfillRequest, room: int, tokenize: Tokenize, detokenize: Detokenize
) -> FimPrompt:
    """Token ids of the FIM prompt in at most ``room`` tokens (prefix-suffix-middle order)."""
    bos = [fim.bos] if fim.bos is not None else []
    use_repo = bool(request.extra) and fim.file_sep is not None
    current: list[int] = []
    if use_repo:
        assert fim.file_sep is not None
        current = [fim.file_sep, *tokenize((request.filename or "filename") + "\n")]
    fixed = len(bos) + 3 + len(current)
    avail = room - fixed
    if avail < MIN_ROOM:
        raise AssistantError(
            f"the context leaves {room} tokens for the infill prompt, too few for any code",
            hint="lower max_tokens or raise the context (--ctx)",
        )
    above, nl, head = request.prefix.rpartition("\n")
    line = tokenize(head) if head else []
    if len(line) > avail // LINE_SHARE:
        line, above, nl = [], request.prefix, ""
    avail -= len(line)
    pre = tokenize(above + nl) if above or nl else []
    suf = tokenize(request.suffix) if request.suffix else []
    if len(pre) + len(suf) > avail:
        suf_keep = min(len(suf), max(avail // 4, avail - len(pre)))
        new_suf = _trim_suffix(suf, suf_keep, tokenize, detokenize)
        new_pre = _trim_prefix(pre, avail - len(new_suf), tokenize, detokenize)
        pre_trimmed, suf_trimmed = len(new_pre) < len(pre), len(new_suf) < len(suf)
        pre, suf = new_pre, new_suf
    else:
        pre_trimmed = suf_trimmed = False
    left = avail - len(pre) - len(suf)
    kept: list[tuple[str, list[int]]] = []
    dropped: list[str] = []
    if use_repo:
        assert fim.file_sep is not None
        header = [fim.repo, *tokenize(request.repo + "\n")] if fim.repo is not None else []
        left -= len(header)
        for f in reversed(request.extra):  # the last files given are the closest to the cursor
            body = [fim.file_sep, *tokenize(f.name + "\n"), *tokenize(f.text.rstrip("\n") + "\n")]
            if len(body) <= left:
                kept.append((f.name, body))
                left -= len(body)
            else:
                dropped.append(f.name)
        kept.reverse()
        extra_tokens = (header if kept else []) + [t for _, body in kept for t in body]
        if not kept:
            current = []
    else:
        extra_tokens = []
        dropped = [f.name for f in request.extra]
    tokens = [*bos, *extra_tokens, *current, fim.prefix, *pre, fim.suffix, *suf, fim.middle, *line]
    return FimPrompt(
        tokens,
        len(pre),
        len(suf),
        len(line),
        tuple(n for n, _ in kept),
        tuple(reversed(dropped)),
        pre_trimmed,
        suf_trimmed,
    )


def engine_codec(engine: Engine) -> tuple[Tokenize, Detokenize]:
    """Tokenize user text with special-token parsing off; detokenize without control tokens."""
    llm = engine.llm

    def tokenize(text: str) -> list[int]:
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False) if text else []

    def detokenize(tokens: list[int]) -> str:
        return llm.detokenize(tokens).decode("utf-8", errors="replace")

    return tokenize, detokenize


@dataclass
class InfillResult:
    text: str
    generation: Generation
    prompt: FimPrompt
    family: str


def block_indent(request: InfillRequest) -> int:
    """Indentation of the code around the cursor: the next non-blank suffix line's, else the last prefix line's."""
    after = request.suffix.split("\n")
    if request.prefix and not request.prefix.endswith("\n"):
        after = after[1:]  # the rest of the cursor's line starts mid-line: its indentation says nothing
    for line in [*after, *request.prefix.split("\n")[::-1]]:
        if line.strip():
            return len(line) - len(line.lstrip())
    return 0


class TopLevelStop:
    """Ends an infill made inside an indented block at the first line that starts at column 0.

    Such a line cannot belong to the gap (instruct models go on with a new ``def`` or a test
    call after the body). Text is passed on as it comes, except trailing newlines, which are
    held until the next character shows whether a top-level line follows.
    """

    def __init__(self) -> None:
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buf = self.pending + text
        for i, ch in enumerate(buf):
            if ch == "\n" and i + 1 < len(buf) and not buf[i + 1].isspace():
                self.stopped, self.pending = True, ""
                return buf[: i + 1]
        kept = buf.rstrip("\n")
        self.pending = buf[len(kept) :]
        return kept

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def infill(
    engine: Engine,
    request: InfillRequest,
    sampling: Sampling,
    *,
    fim: FimTokens | None = None,
    on_text: TextCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> InfillResult:
    """Fill the gap between ``request.prefix`` and ``request.suffix`` on a FIM-capable model."""
    fim = fim or require_fim(engine)
    tokenize, detokenize = engine_codec(engine)
    max_tokens = max(1, min(sampling.max_tokens, engine.n_ctx // 2))
    prompt = build_prompt(fim, request, engine.n_ctx - max_tokens, tokenize, detokenize)
    echo = suffix_echo_stop(request.suffix)
    stops = tuple(sampling.stop) + ((echo,) if echo else ())
    if "```" not in request.prefix and "```" not in request.suffix:
        stops += ("\n```",)  # an instruct model closing a chat code block: not part of a source file
    top = TopLevelStop() if block_indent(request) > 0 else None
    pieces: list[str] = []

    def emit(text: str) -> None:
        if text:
            pieces.append(text)
            if on_text:
                on_text(text)

    gen = engine.generate(
        prompt.text(fim, detokenize),
        replace(sampling, max_tokens=max_tokens, stop=stops),
        (lambda text: emit(top.feed(text))) if top else on_text,
        tokens=prompt.tokens,
        cancel=(lambda: top.stopped or bool(cancel and cancel())) if top else cancel,
        stop_tokens=fim.ends,
    )
    if top:
        emit(top.flush())
        if top.stopped and gen.finish_reason == "cancelled":
            gen = replace(gen, finish_reason="stop")
        gen = replace(gen, text="".join(pieces))
    return InfillResult(gen.text, gen, prompt, fim.family)


def suffix_echo_stop(suffix: str) -> str | None:
    """A stop sequence for the model writing the suffix again (instruct models do): the next full line.

    The rest of the cursor's own line is skipped (often just ``)`` or ``:``); the first later
    line with at least three visible characters is the stop, newline included, so only a
    line-start copy of it matches.
    """
    for line in suffix.split("\n")[1:]:
        if len(line.strip()) >= 3:
            return "\n" + line
    return None


def split_at(text: str, line: int, col: int) -> tuple[str, str]:
    """Split ``text`` at a 1-based LINE:COL cursor (COL may be one past the line's end)."""
    lines = text.split("\n")
    if line < 1 or line > len(lines):
        raise UsageError(
            f"line {line} is outside the file, which has {len(lines)} lines",
            hint="pass --at LINE:COL with 1-based numbers",
        )
    width = len(lines[line - 1])
    if col < 1 or col > width + 1:
        raise UsageError(
            f"column {col} is outside line {line}, which has {width} characters",
            hint=f"pass a column from 1 to {width + 1} (1-based; {width + 1} is the end of the line)",
        )
    offset = sum(len(x) + 1 for x in lines[: line - 1]) + col - 1
    return text[:offset], text[offset:]
