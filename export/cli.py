"""`assistant export gguf | quantize | verify | graft`: argument parsing only; the work is in export.pipeline.

Registered in assistant/cli/app.py with ``app.add_typer(export_app, name="export")``. Importing
this module must stay cheap (the laptop install has no torch): every heavy import happens
inside a command.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from assistant.guard import OneLineErrorGroup as _ExportGroup

export_app = typer.Typer(
    cls=_ExportGroup,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Convert a PyTorch Llama or Qwen2 checkpoint to GGUF, quantize it, graft it, and prove it still matches.",
)

LockOpt = typer.Option(None, "--lock", envvar="ASSISTANT_LOCK", help="models.lock to record the file in.")
NoLockOpt = typer.Option(False, "--no-lock", help="Write the file only; add no models.lock entry.")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")
ForceOpt = typer.Option(False, "--force", help="Overwrite an existing output file (and its lock entry).")
NameOpt = typer.Option(None, "--name", help="models.lock name (default: from the file name).")
RoleOpt = typer.Option(None, "--role", help="models.lock role (repeatable; default: generate).")
LicenseOpt = typer.Option(
    None, "--license", help="License recorded in models.lock (default: the teacher's, else unknown)."
)


def _entry_spec(name, roles, license_):
    from export.lock_entry import EntrySpec

    return EntrySpec(name=name, roles=tuple(roles) if roles else None, license=license_)


@export_app.command("gguf")
def gguf_cmd(
    model_dir: Path = typer.Argument(
        ..., help="A LlamaForCausalLM or Qwen2ForCausalLM directory (config.json + safetensors)."
    ),
    outtype: str = typer.Option("f16", "--outtype", help="f32, f16 or bf16 for the 2-D weights (norms stay f32)."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Output .gguf (default: <dir>.<OUTTYPE>.gguf beside it)."
    ),
    tokenizer_from: Optional[str] = typer.Option(
        None,
        "--tokenizer-from",
        help="Copy the tokenizer verbatim from this GGUF or models.lock name (default: tokenizer_from.json in the directory).",
    ),
    pre: Optional[str] = typer.Option(
        None, "--pre", help="llama.cpp pre-tokenizer name for a BPE tokenizer.json it cannot detect."
    ),
    name: Optional[str] = NameOpt,
    role: Optional[List[str]] = RoleOpt,
    license_: Optional[str] = LicenseOpt,
    force: bool = ForceOpt,
    no_lock: bool = NoLockOpt,
    lock: Optional[Path] = LockOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Convert MODEL_DIR to one GGUF file and pin it in models.lock."""
    from export import pipeline, views

    req = pipeline.GgufRequest(
        model_dir=model_dir,
        out=out,
        outtype=outtype,
        tokenizer_from=tokenizer_from,
        pre=pre,
        force=force,
        entry=_entry_spec(name, role, license_),
        lock=pipeline.LockTarget(lock, enabled=not no_lock),
    )
    outcome = pipeline.export_gguf(req)
    if json_out:
        typer.echo(json.dumps(views.gguf_dict(outcome), indent=2))
    else:
        views.print_gguf(outcome)


@export_app.command("quantize")
def quantize_cmd(
    file: Path = typer.Argument(..., help="An F32/F16/BF16 GGUF written by `assistant export gguf`."),
    type_: str = typer.Option(..., "--type", "-t", help="Comma-separated types, e.g. Q8_0,Q5_K_M,Q4_K_M,Q4_0."),
    out_dir: Optional[Path] = typer.Option(
        None, "--out-dir", help="Where <stem>.<TYPE>.gguf go (default: beside FILE)."
    ),
    threads: int = typer.Option(0, "--threads", min=0, help="Quantization threads (0: llama.cpp's default)."),
    name: Optional[str] = typer.Option(None, "--name", help="models.lock name (with several types: a prefix)."),
    role: Optional[List[str]] = RoleOpt,
    license_: Optional[str] = LicenseOpt,
    force: bool = ForceOpt,
    no_lock: bool = NoLockOpt,
    lock: Optional[Path] = LockOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Quantize FILE with llama.cpp to each --type; report tensors stored in another type."""
    from export import pipeline, views

    req = pipeline.QuantizeRequest(
        src=file,
        types=type_,
        out_dir=out_dir,
        force=force,
        threads=threads,
        entry=_entry_spec(name, role, license_),
        lock=pipeline.LockTarget(lock, enabled=not no_lock),
    )
    outcomes = pipeline.quantize_file(req)
    if json_out:
        typer.echo(json.dumps(views.quantize_dicts(outcomes), indent=2))
    else:
        views.print_quantize(outcomes)


@export_app.command("verify")
def verify_cmd(
    model_dir: Path = typer.Argument(..., help="The PyTorch checkpoint the files were exported from."),
    files: List[str] = typer.Argument(..., help="GGUF files or models.lock names to compare with it."),
    tokens: int = typer.Option(64, "--tokens", min=1, help="Greedy tokens compared per prompt."),
    threads: int = typer.Option(2, "--threads", min=1, help="Threads for the decode-speed run."),
    speed: bool = typer.Option(True, "--speed/--no-speed", help="Also measure decode tokens/s."),
    speed_runs: int = typer.Option(1, "--speed-runs", min=1, help="Report the best of N decode-speed runs."),
    lock: Optional[Path] = LockOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Run MODEL_DIR in PyTorch and every FILE in llama.cpp on held-out code; exit 1 on a mismatch."""
    from export import pipeline, views
    from export.verify import VerifyConfig

    cfg = VerifyConfig(n_new=tokens, speed_threads=threads, speed_tokens=64 if speed else 0, speed_runs=speed_runs)
    report = pipeline.verify_files(model_dir, files, cfg, lock_path=lock)
    if json_out:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        views.print_verify(report)
    if not report.passed:
        raise typer.Exit(1)


@export_app.command("graft")
def graft_cmd(
    student: Path = typer.Argument(..., help="The quantized student GGUF (from `assistant export quantize`)."),
    reference: Path = typer.Option(
        ..., "--reference", help="The same student's F16/F32 GGUF, whose values it compares."
    ),
    base: str = typer.Option(..., "--base", help="models.lock name of the model the student was cut from."),
    patch: Path = typer.Option(..., "--patch", help="Where to write the patch (beside models.lock, to ship it)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The grafted GGUF (default: <student>.grafted.gguf)."),
    student_lock: Optional[Path] = typer.Option(
        None, "--student-lock", help="models.lock holding the student's entry, whose provenance carries over."
    ),
    trained: Optional[Path] = typer.Option(
        None, "--trained", help="The distilled student's directory: its provenance.json goes into models.lock."
    ),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="The recipe it was trained with (recorded)."),
    name: Optional[str] = NameOpt,
    role: Optional[List[str]] = RoleOpt,
    license_: Optional[str] = LicenseOpt,
    force: bool = ForceOpt,
    no_lock: bool = NoLockOpt,
    lock: Optional[Path] = LockOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Put the base's own bytes back into STUDENT's unchanged tensors; pin it as a patch over the base."""
    from export import pipeline, views

    req = pipeline.GraftRequest(
        student=student,
        reference=reference,
        base=base,
        patch=patch,
        out=out,
        student_lock=student_lock,
        trained=trained,
        recipe=recipe,
        force=force,
        entry=_entry_spec(name, role, license_),
        lock=pipeline.LockTarget(lock, enabled=not no_lock),
    )
    outcome = pipeline.graft_student(req)
    if json_out:
        typer.echo(json.dumps(views.graft_dict(outcome), indent=2))
    else:
        views.print_graft(outcome)
