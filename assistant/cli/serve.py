"""`assistant serve`: parse the options, verify the models, run the server (assistant.server)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from assistant.cli.options import LockOpt, OfflineOpt


def serve(
    model: Optional[list[str]] = typer.Option(
        None, "--model", "-m", help="Lock name or .gguf path (repeatable; default: the lock's default)."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; anything but loopback needs --api-key."),
    port: int = typer.Option(8080, "--port", "-p", min=0, max=65535, help="TCP port (0: any free port)."),
    api_key: Optional[str] = typer.Option(
        None, "--api-key", envvar="ASSISTANT_API_KEY", help="Require `Authorization: Bearer KEY`."
    ),
    parallel: int = typer.Option(
        1, "--parallel", min=1, max=16, help="Contexts per model: generations that run at once."
    ),
    queue: int = typer.Option(
        16, "--queue", min=0, help="Requests that may wait for a context; more get 503 + Retry-After."
    ),
    ctx: Optional[int] = typer.Option(
        None, "--ctx", min=256, help="Context window per context (default: model's, at most 4096)."
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", min=1, help="Threads per context (default: physical cores)."
    ),
    cors_origin: Optional[list[str]] = typer.Option(
        None, "--cors-origin", help="Allow browser requests from this origin (repeatable; none by default)."
    ),
    allow_host: Optional[list[str]] = typer.Option(
        None, "--allow-host", help="Extra accepted Host header name (repeatable)."
    ),
    max_body: int = typer.Option(2 * 1024 * 1024, "--max-body", min=1024, help="Largest request body in bytes."),
    max_tokens: int = typer.Option(
        4096, "--max-tokens-cap", min=1, help="Larger max_tokens requests are clamped to this."
    ),
    no_supersede: bool = typer.Option(
        False, "--no-supersede", help="Keep an infill running when the same client sends a newer one."
    ),
    log_prompts: bool = typer.Option(
        False, "--log-prompts", help="Write prompts to the log (off: only method, path, status, time)."
    ),
    offline: bool = OfflineOpt,
    lock: Optional[Path] = LockOpt,
) -> None:
    """Serve local models to editors: OpenAI (/v1), Ollama (/api) and llama.cpp (/infill) APIs."""
    import logging
    import sys

    from assistant.codegen.generate import load_model
    from assistant.errors import UsageError
    from assistant.server.config import ServeConfig

    cfg = ServeConfig(
        models=tuple(model or ()),
        host=host,
        port=port,
        api_key=api_key,
        parallel=parallel,
        queue=queue,
        ctx=ctx,
        threads=threads,
        cors_origins=tuple(cors_origin or ()),
        allowed_hosts=tuple(h.lower() for h in allow_host or ()),
        max_body_bytes=max_body,
        max_tokens_cap=max_tokens,
        supersede=not no_supersede,
        log_prompts=log_prompts,
        lock=lock,
        offline=offline,
    )
    cfg.validate()
    resolved = [load_model(m, lock, offline) for m in (cfg.models or (None,))]
    names = [r.name for r in resolved]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"model {dupes[0]!r} is given twice", hint="pass each --model once")

    from assistant.server.app import ServerState, bind, create_app, uvicorn_server

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("assistant.server").setLevel(logging.INFO)
    state = ServerState(cfg, resolved)
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(
        f"serving {', '.join(names)} on http://{shown}:{sock.getsockname()[1]} "
        f"(OpenAI /v1, Ollama /api, llama.cpp /infill; {parallel} context(s), queue {queue}"
        f"{', API key required' if api_key else ''}); loading...",
        err=True,
    )
    try:
        uvicorn_server(create_app(state)).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown: a normal stop
        pass
    typer.echo("stopped", err=True)
