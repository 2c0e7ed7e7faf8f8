"""The inference engine: one loaded GGUF model over llama-cpp-python.

We drive llama.cpp token by token (``Llama.generate``) rather than through
``create_completion`` so that stop sequences, end-of-generation tokens, UTF-8 pieces
and timings are all ours: streamed and non-streamed text are the same code path.
"""

from __future__ import annotations

import codecs
import ctypes
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from assistant.errors import AssistantError, UsageError
from assistant.runtime.hardware import physical_cores
from assistant.runtime.prompts import DEFAULT_SYSTEM, Request, completion_text
from assistant.runtime.stops import StopFilter
from assistant.store.resolve import ResolvedModel

DEFAULT_CTX = 4096
# llama.cpp takes the seed as a uint32 and reads 0xFFFFFFFF (LLAMA_DEFAULT_SEED) as "pick one at
# random": larger seeds would wrap onto small ones, that one would not reproduce.
MAX_SEED = 0xFFFFFFFE


class ContextError(AssistantError):
    """The prompt does not fit the context window."""


@dataclass(frozen=True)
class EngineConfig:
    n_ctx: int | None = None  # default: the model's context, capped at DEFAULT_CTX
    n_threads: int | None = None  # default: physical cores
    n_batch: int = 512


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 512
    temperature: float = 0.0  # 0 is greedy
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    seed: int | None = None  # None: a fresh random seed, reported in the result
    stop: tuple[str, ...] = ()


@dataclass
class Timings:
    load_s: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    ttft_s: float = 0.0  # from the call to the first sampled token (includes prompt processing)
    prompt_tps: float = 0.0
    decode_s: float = 0.0
    decode_tps: float = 0.0
    total_s: float = 0.0


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" (stop sequence or end-of-generation token), "length" or "cancelled"
    seed: int
    prompt: str
    timings: Timings = field(default_factory=Timings)

    def to_dict(self) -> dict:
        return asdict(self)


TextCallback = Callable[[str], None]


class Engine:
    """A loaded model. Create once, call ``generate`` many times (the KV prefix is reused)."""

    def __init__(self, model: ResolvedModel, config: EngineConfig = EngineConfig()):
        from assistant.runtime.llama_lib import llama_cpp as load_llama_cpp

        llama_cpp = load_llama_cpp()  # deferred: loading the shared library is the slow part of start-up

        self._llama_cpp = llama_cpp
        self.model = model
        train_ctx = model.context_length
        self.n_ctx = config.n_ctx or min(train_ctx, DEFAULT_CTX)
        if self.n_ctx > train_ctx:
            raise ContextError(
                f"context {self.n_ctx} is larger than the {train_ctx} tokens {model.name} was trained for",
                hint=f"pass --ctx {train_ctx} or less",
            )
        self.n_threads = config.n_threads or physical_cores()
        t0 = time.perf_counter()
        try:
            self.llm = _tolerant_llama(llama_cpp)(
                model_path=str(model.path),
                n_ctx=self.n_ctx,
                n_batch=min(config.n_batch, self.n_ctx),
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise AssistantError(f"llama.cpp could not load {model.path}: {e}") from None
        self.load_s = time.perf_counter() - t0
        self._vocab = self.llm._model.vocab
        self._piece_buf = ctypes.create_string_buffer(256)
        self._chat = self._chat_formatter()

    # -- prompts ---------------------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        return self.llm._model.token_get_text(token) if token >= 0 else ""

    def _chat_formatter(self):
        """The GGUF's own chat template, or None; one that does not parse is kept as its error."""
        self._chat_error: str | None = getattr(self.llm, "template_errors", {}).get("tokenizer.chat_template")
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        try:
            return Jinja2ChatFormatter(
                template=template,
                eos_token=self._token_text(self.llm.token_eos()),
                bos_token=self._token_text(self.llm.token_bos()),
            )
        except Exception as e:  # the template is data from the file: any jinja2 error, not only syntax
            self._chat_error = _template_error(e)
            return None

    def render(self, request: Request, *, style: str | None = None, system: str | None = DEFAULT_SYSTEM) -> str:
        """The exact text fed to the model: the chat template for chat models, raw otherwise."""
        style = style or self.model.prompt_style
        if style == "completion":
            return completion_text(request)
        if self._chat is None:
            if self._chat_error:
                raise AssistantError(
                    f"the chat template of {self.model.name} does not parse: {self._chat_error}",
                    hint="use --prompt-style completion",
                )
            raise AssistantError(f"{self.model.name} has no chat template", hint="use --prompt-style completion")
        user = request.user_message()
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        try:
            return self._chat(messages=messages).prompt
        except Exception as e:  # raise_exception() in the template, or a template bug
            failure = _template_error(e)
        if system:
            # Gemma-style templates refuse a system role; they fold it into the user turn
            # themselves when they support one at all, so do the same and keep the instructions.
            try:
                return self._chat(messages=[{"role": "user", "content": f"{system}\n\n{user}"}]).prompt
            except Exception:
                pass
        raise AssistantError(
            f"the chat template of {self.model.name} failed: {failure}", hint="use --prompt-style completion"
        )

    def tokenize(self, text: str) -> list[int]:
        bos = self._token_text(self.llm.token_bos())
        add_bos = not (bos and text.startswith(bos))  # templates that write BOS themselves
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def _piece(self, token: int) -> bytes:
        n = self._llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), 0, False)
        if n < 0:  # piece longer than the buffer: grow and retry
            self._piece_buf = ctypes.create_string_buffer(-n)
            n = self._llama_cpp.llama_token_to_piece(self._vocab, token, self._piece_buf, -n, 0, False)
        return self._piece_buf.raw[:n]

    # -- generation ------------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        sampling: Sampling = Sampling(),
        on_text: TextCallback | None = None,
        *,
        tokens: list[int] | None = None,
        cancel: Callable[[], bool] | None = None,
        stop_tokens: frozenset[int] = frozenset(),
    ) -> Generation:
        """Generate from the rendered ``prompt``; ``on_text`` receives the text as it is produced.

        ``tokens`` replaces tokenizing ``prompt`` (FIM prompts are built token by token);
        ``cancel`` is polled once per token (finish "cancelled"); ``stop_tokens`` end the text
        like end-of-generation tokens. The KV cache keeps the longest shared prefix of the
        previous call (llama-cpp-python's prefix match), so near-identical prompts are cheap.
        """
        if tokens is None and not prompt.strip():
            raise AssistantError("the prompt is empty", hint="pass a prompt argument or pipe text on stdin")
        tokens = list(tokens) if tokens is not None else self.tokenize(prompt)
        if len(tokens) >= self.n_ctx:
            raise ContextError(
                f"the prompt is {len(tokens)} tokens but the context window is {self.n_ctx}",
                hint=f"shorten it, or raise --ctx (up to {self.model.context_length} for {self.model.name})",
            )
        budget = min(sampling.max_tokens, self.n_ctx - len(tokens))
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(31)
        if not 0 <= seed <= MAX_SEED:
            raise UsageError(
                f"seed {seed} is out of range: llama.cpp reproduces seeds 0 to {MAX_SEED}",
                hint="pass a smaller --seed (samples and retries use seed+1, seed+2, ...)",
            )
        self.llm.set_seed(seed)
        stopper = StopFilter(sampling.stop)
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        chunks: list[str] = []

        def emit(text: str) -> None:
            if text:
                chunks.append(text)
                if on_text:
                    on_text(text)

        finish, n_sampled, n_text = "length", 0, 0
        t_start = time.perf_counter()
        t_first = t_last = t_start
        for token in self.llm.generate(
            tokens,
            top_k=sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            temp=sampling.temperature,
            repeat_penalty=sampling.repeat_penalty,
        ):
            t_last = time.perf_counter()
            n_sampled += 1
            if n_sampled == 1:
                t_first = t_last
            if cancel is not None and cancel():
                finish = "cancelled"
                break
            if token in stop_tokens or self._llama_cpp.llama_vocab_is_eog(self._vocab, token):
                finish = "stop"
                break
            n_text += 1
            emit(stopper.feed(utf8.decode(self._piece(token))))
            if stopper.stopped:
                finish = "stop"
                break
            if n_text >= budget:
                break
        emit(stopper.feed(utf8.decode(b"", final=True)))
        emit(stopper.flush())
        t_end = time.perf_counter()
        ttft = t_first - t_start
        decode_s = t_last - t_first
        timings = Timings(
            load_s=self.load_s,
            prompt_tokens=len(tokens),
            generated_tokens=n_text,
            ttft_s=ttft,
            prompt_tps=len(tokens) / ttft if ttft > 0 else 0.0,
            decode_s=decode_s,
            decode_tps=(n_sampled - 1) / decode_s if n_sampled > 1 and decode_s > 0 else 0.0,
            total_s=t_end - t_start,
        )
        return Generation("".join(chunks), finish, seed, prompt, timings)

    def close(self) -> None:
        self.llm.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _tolerant_llama(llama_cpp: Any) -> Any:
    """``Llama`` that loads a model whose chat template does not compile.

    llama-cpp-python 0.3.36 compiles every ``tokenizer.chat_template*`` in the file while it loads
    and fails the whole load on a broken one, so even ``--prompt-style completion`` could not run.
    This subclass hides such templates from that step and keeps their errors in ``template_errors``.
    """
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    class TolerantLlama(llama_cpp.Llama):
        template_errors: dict[str, str]

        @property
        def metadata(self) -> dict[str, str]:
            return self._usable_metadata

        @metadata.setter
        def metadata(self, value: dict[str, str]) -> None:
            self.template_errors = {}
            usable = dict(value)
            for key in [k for k in value if k.startswith("tokenizer.chat_template")]:
                try:
                    Jinja2ChatFormatter(template=value[key], eos_token="", bos_token="")
                except Exception as e:  # whatever jinja2 raises on this file's text
                    self.template_errors[key] = _template_error(e)
                    del usable[key]
            self._usable_metadata = usable

    return TolerantLlama


def _template_error(e: Exception) -> str:
    """A jinja2 error as one phrase, with the template line where jinja2 knows it."""
    line = getattr(e, "lineno", None)
    text = getattr(e, "message", None) or str(e) or type(e).__name__
    return f"{text} (template line {line})" if line else text
