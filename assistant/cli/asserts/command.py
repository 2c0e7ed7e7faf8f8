"""`assistant asserts FILE` and `assistant eval asserts`: argument parsing only.

Registered in assistant/cli/app.py; nothing heavy is imported at the top (llama_cpp and
coverage load inside the work, when a command runs).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer

ModelOpt = typer.Option(None, "--model", "-m", help="Lock name or path to a .gguf file (default: the lock's default).")
OfflineOpt = typer.Option(False, "--offline", help="Never touch the network (also HF_HUB_OFFLINE=1).")
LockOpt = typer.Option(None, "--lock", envvar="ASSISTANT_LOCK", help="models.lock to use.")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")
ThreadsOpt = typer.Option(None, "--threads", min=1, help="Default: physical cores.")


def asserts(
    file: Path = typer.Argument(..., help="The Python file to write tests for.", show_default=False),
    function: Optional[List[str]] = typer.Option(
        None,
        "--function",
        "-f",
        help="A function, Class.method or Class to test (repeatable; default: every public one).",
    ),
    model: Optional[str] = ModelOpt,
    per_function: int = typer.Option(
        5, "--per-function", "-k", min=1, help="Assertions to ask the model for, per function."
    ),
    tries: int = typer.Option(
        2, "--tries", min=1, help="Generations per function at most (the first greedy, then sampled)."
    ),
    out: Optional[str] = typer.Option(
        None, "--out", "-o", help="The pytest file to write (default: tests/test_<module>_generated.py); - prints it."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite --out if it exists."),
    coverage: bool = typer.Option(
        False, "--coverage", help="Measure the module's line coverage by the kept assertions (needs coverage.py)."
    ),
    timeout: float = typer.Option(2.0, "--timeout", min=0.05, help="Seconds per assertion in the sandbox."),
    import_timeout: float = typer.Option(
        10.0, "--import-timeout", min=0.1, help="Seconds the module may take to import in the sandbox."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for the sampled tries."),
    threads: Optional[int] = ThreadsOpt,
    ctx: Optional[int] = typer.Option(None, "--ctx", min=256, help="Context window (default: model's, at most 4096)."),
    json_out: bool = JsonOpt,
    offline: bool = OfflineOpt,
    lock: Optional[Path] = LockOpt,
) -> None:
    """Generate test assertions for FILE, keep those that pass against it, write a pytest file."""
    import importlib.util

    from assistant.asserts import pipeline as A
    from assistant.asserts.focal import parse_module, select
    from assistant.errors import AssistantError, UsageError

    info = parse_module(file)
    focals = select(info, function or ())
    to_stdout = out == "-"
    if to_stdout and json_out:
        raise UsageError(
            "--json and --out - would both print to stdout", hint="write the tests to a file with --out FILE"
        )
    out_path = None if to_stdout else Path(out) if out else A.default_out(file)
    if out_path is not None:
        A.check_out_path(out_path, file, force)
    if coverage and importlib.util.find_spec("coverage") is None:
        raise UsageError("--coverage needs coverage.py", hint="pip install coverage (it is in the project's dev extra)")
    cfg = A.AssertsConfig(
        per_function=per_function, tries=tries, seed=seed, case_timeout_s=timeout, import_timeout_s=import_timeout
    )
    cfg.validate()
    command = _command_line(file, function, out_path)

    from assistant.cli.asserts import views as asserts_views
    from assistant.codegen.generate import load_model
    from assistant.runtime.engine import Engine, EngineConfig

    resolved = load_model(model, lock, offline)
    with Engine(resolved, EngineConfig(n_ctx=ctx, n_threads=threads)) as engine:
        with asserts_views.progress("asserts", len(focals)) as on_function:
            report = A.run_asserts(
                engine, info, focals, cfg, out=out_path, coverage=coverage, command=command, on_function=on_function
            )
    if report.test_source is not None:
        if out_path is None:  # --out -
            sys.stdout.write(report.test_source)
            sys.stdout.flush()
            report.out = "-"
        else:
            A.write_test_file(out_path, report.test_source, file, force)
            report.out = str(out_path)
    if json_out:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        asserts_views.print_report(report, stderr=to_stdout)
    if report.import_error:
        raise AssistantError(
            f"{file} did not import in the sandbox ({report.import_error}); nothing written",
            hint="it must import without network access, writes outside its folder, or more than --import-timeout seconds",
        )
    if report.test_source is None:
        raise AssistantError(
            f"none of the {report.totals()['generated']} candidate assertions passed against {file}; nothing written",
            hint="ask for more with --per-function 10 --tries 4, or use a stronger --model",
        )


def _command_line(file: Path, functions: Optional[List[str]], out: Optional[Path]) -> str:
    parts = ["assistant", "asserts", str(file)]
    for f in functions or ():
        parts += ["--function", f]
    parts += ["--out", str(out) if out else "-", "--force"]
    return shlex.join(parts)


def eval_asserts(
    model: Optional[str] = ModelOpt,
    reference: Optional[str] = typer.Option(
        None, "--reference", "-r", help="A second model (e.g. the teacher): its predictions become a second yardstick."
    ),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N examples of the split."),
    split: str = typer.Option("test", "--split", help="train, validation or test."),
    dataset: Optional[Path] = typer.Option(
        None, "--dataset", help="Dataset folder (default: built once under the user cache)."
    ),
    rebuild: bool = typer.Option(False, "--rebuild", help="Mine the dataset again even if it exists."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="Save predictions (JSONL, reruns resume) and summary.json here."
    ),
    max_tokens: int = typer.Option(96, "--max-tokens", min=8, help="Tokens per prediction at most."),
    threads: Optional[int] = ThreadsOpt,
    json_out: bool = JsonOpt,
    offline: bool = OfflineOpt,
    lock: Optional[Path] = LockOpt,
) -> None:
    """Assertion generation scored like the seed study: exact match and similarity, ms per sample."""
    from assistant.asserts import dataset as D
    from assistant.asserts import scoring as E
    from assistant.atomic import atomic_write_text, check_output_dir
    from assistant.cli.asserts import views as asserts_views
    from assistant.codegen.generate import load_model
    from assistant.errors import UsageError
    from assistant.runtime.engine import Engine, EngineConfig

    if split not in D.SPLITS:
        raise UsageError(f"--split must be one of {', '.join(D.SPLITS)}, not {split!r}")
    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file", hint="pass a folder for the predictions and summary")
    if out is not None:
        check_output_dir(out)
    directory = ensure_dataset(dataset, rebuild)
    manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
    examples = D.load_split(directory, split, limit)
    if not examples:
        raise UsageError(
            f"the {split} split of {directory} is empty", hint="rebuild it with --rebuild or pick another --split"
        )
    resolved = load_model(model, lock, offline)
    ref_resolved = load_model(reference, lock, offline) if reference else None  # fail before any work

    def predict(m):
        cached, log = {}, None
        if out is not None:
            path = E.predictions_path(out, m.name)
            cached = E.load_predictions(path)
            log = E.PredictionLog(path)
        try:
            with Engine(m, EngineConfig(n_threads=threads)) as engine:
                with asserts_views.progress(f"eval asserts: {m.name}", len(examples)) as step:

                    def on_prediction(p, done, total):
                        if log:
                            log(p, done, total)
                        step(p.id[-40:], done, total)

                    return E.predict_assertions(
                        engine, examples, max_tokens=max_tokens, cached=cached, on_prediction=on_prediction
                    )
        finally:
            if log:
                log.close()

    preds = predict(resolved)
    ref = None
    if ref_resolved is not None:
        ref = ({"name": ref_resolved.name, "sha256": ref_resolved.sha256}, predict(ref_resolved))
    data = {
        "dir": str(directory),
        "version": manifest.get("version"),
        "split_sha256": manifest["splits"][split]["sha256"],
        "split_examples": manifest["splits"][split]["examples"],
    }
    summary = E.summarize(examples, preds, {"name": resolved.name, "sha256": resolved.sha256}, split, data, ref)
    if out is not None:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    if json_out:
        typer.echo(json.dumps(summary, indent=2))
    else:
        asserts_views.print_eval(summary)


def ensure_dataset(dataset: Optional[Path], rebuild: bool) -> Path:
    """The dataset folder, mined first when missing (or asked to): about a minute on this machine."""
    from assistant.asserts import dataset as D
    from assistant.cli.asserts import views as asserts_views
    from assistant.errors import UsageError

    directory = Path(dataset) if dataset else D.default_dataset_dir()
    has_manifest = (directory / "manifest.json").is_file()
    if has_manifest and not rebuild:
        return directory
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"--dataset {directory} is a file", hint="pass a folder")
    if directory.is_dir() and any(directory.iterdir()) and not has_manifest:
        raise UsageError(
            f"{directory} is not an assertion dataset (no manifest.json) and not empty",
            hint="pass an empty or new folder to build one there",
        )
    typer.echo(f"mining assertion examples from this machine's test files into {directory} ...", err=True)
    with asserts_views.progress("dataset", 1) as step:
        manifest = D.build_dataset(directory, on_file=lambda k, n: step("test files", k, n))
    counts = ", ".join(f"{s} {manifest['splits'][s]['examples']}" for s in D.SPLITS)
    typer.echo(f"dataset: {counts} examples", err=True)
    return directory
