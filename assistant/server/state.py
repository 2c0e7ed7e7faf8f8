"""What a running server holds: its config, the loaded models, the scheduler and the metrics."""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import Request

from assistant.errors import AssistantError
from assistant.server.config import ServeConfig
from assistant.server.errors import ApiError
from assistant.server.metrics import Metrics
from assistant.server.scheduler import ModelHandle, Scheduler, make_slots

if TYPE_CHECKING:
    from assistant.store.resolve import ResolvedModel

log = logging.getLogger("assistant.server")


@dataclass
class ServerState:
    cfg: ServeConfig
    resolved: list[ResolvedModel] = field(default_factory=list)
    models: dict[str, ModelHandle] = field(default_factory=dict)
    metrics: Metrics = field(default_factory=Metrics)
    scheduler: Scheduler | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    load_error: str | None = None
    started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.scheduler = Scheduler(self.metrics, supersede=self.cfg.supersede)
        self.metrics.gauges["assistant_queue_depth"] = lambda: {(m.name,): m.queued for m in self.models.values()}
        self.metrics.gauges["assistant_busy_contexts"] = lambda: {(m.name,): m.busy for m in self.models.values()}
        self.metrics.gauges["assistant_contexts"] = lambda: {(m.name,): len(m.slots) for m in self.models.values()}
        self.metrics.gauges["assistant_loading"] = lambda: {(): 0.0 if self.ready.is_set() else 1.0}

    # -- loading -------------------------------------------------------------------------------

    def load(self) -> None:
        """Load every model's contexts (the slow part); /health answers 503 until this is done."""
        from assistant.runtime.engine import Engine, EngineConfig
        from assistant.runtime.fim import fim_tokens

        try:
            for r in self.resolved:
                engines = [
                    Engine(r, EngineConfig(n_ctx=self.cfg.ctx, n_threads=self.cfg.threads))
                    for _ in range(self.cfg.parallel)
                ]
                handle = ModelHandle(r.name, r, fim_tokens(engines[0]), make_slots(engines), self.cfg.queue)
                self.models[r.name] = handle
                log.info(
                    "loaded %s (%s, %d context(s) of %d tokens, FIM: %s)",
                    r.name,
                    r.gguf.quantization,
                    len(engines),
                    engines[0].n_ctx,
                    handle.fim.family if handle.fim else "no",
                )
        except AssistantError as e:
            self.load_error = str(e)
            log.error("error: %s", e)
            return
        self.ready.set()

    def close(self) -> None:
        for m in self.models.values():
            m.close()
        self.models.clear()

    # -- per-request helpers -------------------------------------------------------------------

    def model(self, name: str | None, param: str = "model") -> ModelHandle:
        if self.load_error:
            raise ApiError(503, f"the model failed to load: {self.load_error}")
        if not self.ready.is_set():
            raise ApiError(503, "the model is still loading; retry in a moment", headers={"Retry-After": "1"})
        if not name:
            return next(iter(self.models.values()))
        for cand in (name, name.removesuffix(":latest"), name + ".gguf", name.removesuffix(":latest") + ".gguf"):
            if cand in self.models:
                return self.models[cand]
        for m in self.models.values():
            if m.resolved.path.stem == name.removesuffix(":latest"):
                return m
        raise ApiError(
            404,
            f"model {name!r} is not served here; served: {', '.join(self.models)}",
            param=param,
            code="model_not_found",
        )

    def client_key(self, request: Request) -> str:
        explicit = request.headers.get("x-client-id")
        if explicit:
            return "id:" + explicit
        host = request.client.host if request.client else "?"
        return f"{host}|{request.headers.get('user-agent', '')}"

    def cap(self, model: ModelHandle) -> int:
        return min(self.cfg.max_tokens_cap, model.engine.n_ctx)

    def log_prompt(self, route: str, text: str) -> None:
        if self.cfg.log_prompts:
            log.info("%s prompt: %s", route, json.dumps(text))

    @property
    def sched(self) -> Scheduler:
        assert self.scheduler is not None
        return self.scheduler
