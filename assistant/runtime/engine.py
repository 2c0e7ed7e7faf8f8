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
from typing import Callable

from assistant.errors import AssistantError
from assistant.runtime.hardware import physical_cores
from assistant.store.resolve import ResolvedModel
from assistant.runtime.prompts import DEFAULT_SYSTEM, Request, completion_text
from assistant.runtime.stops import StopFilter

DEFAULT_CTX = 4096


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
    finish_reason: str  # "stop" (stop sequence or end-of-generation token) or "length"
    seed: int
    prompt: str
    timings: Timings = field(default_factory=Timings)

    def to_dict(self) -> dict:
        return asdict(self)


TextCallback = Callable[[str], None]


class Engine:
    """A loaded model. Create once, call ``generate`` many times (the KV prefix is reused)."""

    def __init__(self, model: ResolvedModel, config: EngineConfig = EngineConfig()):
        import llama_cpp  # deferred: loading the shared library is the slow part of start-up

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
            self.llm = llama_cpp.Llama(
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
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            return None
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        return Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(self.llm.token_eos()),
            bos_token=self._token_text(self.llm.token_bos()),
        )

    def render(self, request: Request, *, style: str | None = None, system: str | None = DEFAULT_SYSTEM) -> str:
        """The exact text fed to the model: the chat template for chat models, raw otherwise."""
        style = style or self.model.prompt_style
        if style == "completion":
            return completion_text(request)
        if self._chat is None:
            raise AssistantError(
                f"{self.model.name} has no chat template", hint="use --prompt-style completion"
            )
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": request.user_message()}
        ]
        return self._chat(messages=messages).prompt

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

    def generate(self, prompt: str, sampling: Sampling = Sampling(), on_text: TextCallback | None = None) -> Generation:
        """Generate from the rendered ``prompt``; ``on_text`` receives the text as it is produced."""
        if not prompt.strip():
            raise AssistantError("the prompt is empty", hint="pass a prompt argument or pipe text on stdin")
        tokens = self.tokenize(prompt)
        if len(tokens) >= self.n_ctx:
            raise ContextError(
                f"the prompt is {len(tokens)} tokens but the context window is {self.n_ctx}",
                hint=f"shorten it, or raise --ctx (up to {self.model.context_length} for {self.model.name})",
            )
        budget = min(sampling.max_tokens, self.n_ctx - len(tokens))
        seed = sampling.seed if sampling.seed is not None else secrets.randbits(31)
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
            if self._llama_cpp.llama_vocab_is_eog(self._vocab, token):
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

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
