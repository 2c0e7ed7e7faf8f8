"""`assistant asserts FILE`: generate test assertions for a module and keep only validated ones.

The pipeline, one focal function at a time, each step a module that knows only the steps below it:
``focal`` parses the module; ``candidates`` prompts the model (doctest examples in the docstring
seed the reply) and extracts candidate ``assert`` statements with ``ast`` (with the few setup
statements each needs), deduplicated; ``validate`` runs every candidate against the real module
inside the sandbox; ``render`` writes the passing ones (regression oracles) into a pytest file,
confirms it runs as a whole and measures coverage. Failing ones (model mistakes or real bugs)
are reported apart; ones that error for reasons unrelated to the module's behaviour (a name the
model made up, a timeout) are dropped with the reason counted. The module is imported only
inside the sandbox.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from assistant.asserts.candidates import AssertsConfig, Candidate, doctest_candidates, generate_candidates, target_names
from assistant.asserts.focal import Focal, ModuleInfo
from assistant.asserts.render import (
    Coverage,
    FunctionReport,
    confirm,
    file_docstring,
    measure_coverage,
    relative_path_expr,
    render_test_file,
)
from assistant.asserts.validate import ERRORED, FAILING, KEPT, make_target, validate
from assistant.atomic import check_output_file
from assistant.errors import UsageError


@dataclass
class AssertsReport:
    module: str
    model: dict
    functions: list[FunctionReport]
    test_source: str | None = None  # the pytest file, None when nothing was kept
    out: str | None = None
    coverage: Coverage | None = None
    import_error: str | None = None

    def totals(self) -> dict:
        t: Counter[str] = Counter()
        for f in self.functions:
            t.update(
                generated=f.generated,
                kept=f.count(KEPT),
                failing=f.count(FAILING),
                errored=f.count(ERRORED),
                from_model=sum(c.origin == "model" for c in f.candidates),
                kept_from_model=f.count(KEPT, "model"),
            )
        return {k: t[k] for k in ("generated", "kept", "failing", "errored", "from_model", "kept_from_model")}

    def errored_reasons(self) -> dict[str, int]:
        c = Counter(v.reason for f in self.functions for v in f.verdicts if v.status == ERRORED)
        return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))

    @property
    def kept_rate(self) -> float:
        t = self.totals()
        return t["kept"] / t["generated"] if t["generated"] else 0.0

    def to_dict(self) -> dict:
        return {
            "module": self.module,
            "model": self.model,
            "totals": self.totals(),
            "kept_rate": round(self.kept_rate, 4),
            "errored_reasons": self.errored_reasons(),
            "import_error": self.import_error,
            "coverage": self.coverage.to_dict() if self.coverage else None,
            "out": self.out,
            "functions": [f.to_dict() for f in self.functions],
        }


Progress = Callable[[str, int, int], None]


def run_asserts(
    engine,
    info: ModuleInfo,
    focals: Sequence[Focal],
    cfg: AssertsConfig,
    *,
    out: Path | None = None,
    coverage: bool = False,
    command: str = "",
    on_function: Progress | None = None,
) -> AssertsReport:
    """Generate, validate and confirm assertions for ``focals``; render the test file (not written)."""
    from assistant.runtime.engine import ContextError

    cfg.validate()
    target = make_target(info.path)
    targets = target_names(info)
    reports: list[FunctionReport] = []
    all_candidates: list[Candidate] = []
    for n, focal in enumerate(focals):
        if on_function:
            on_function(focal.name, n, len(focals))
        seeds = doctest_candidates(focal, targets)
        try:
            found, gen = generate_candidates(engine, info, focal, cfg, seeds)
            report = FunctionReport(
                focal.name, generations=gen.generations, generated_tokens=gen.generated_tokens, seconds=gen.seconds
            )
        except ContextError as e:  # one huge function must not sink the others
            found, report = [], FunctionReport(focal.name, note=f"no generation: {e}")
        report.candidates = [*seeds, *found]
        reports.append(report)
        all_candidates.extend(report.candidates)
    if on_function:
        on_function("validating in the sandbox", len(focals), len(focals))
    validation = validate(target, info.name, all_candidates, cfg)
    pos = 0
    for r in reports:
        r.verdicts = list(validation.verdicts[pos : pos + len(r.candidates)])
        pos += len(r.candidates)
    model = {"name": engine.model.name, "sha256": engine.model.sha256, "path": str(engine.model.path)}
    result = AssertsReport(str(info.path), model, reports, import_error=validation.import_error)
    if validation.import_error is None:
        confirm(target, info.name, reports, validation.names, cfg)
        groups = [(f.name, f.kept()) for f in reports]
        if any(g for _, g in groups):
            doc = file_docstring(info, engine.model.name, command or f"assistant asserts {info.path}")
            result.test_source = render_test_file(
                target, info.name, groups, validation.names, relative_path_expr(info.path, out), doc
            ).source
            if coverage:
                result.coverage = measure_coverage(target, info.name, reports, validation.names, cfg)
    return result


def check_out_path(out: Path, module: Path, force: bool) -> None:
    """Refuse before any work: overwriting the module itself, or an existing file without --force."""
    if out.resolve() == Path(module).resolve():
        raise UsageError(f"--out {out} is the module itself", hint="write the tests to another file")
    if out.is_dir():
        raise UsageError(f"--out {out} is a directory", hint="pass a file name such as tests/test_module_generated.py")
    if out.exists() and not force:
        raise UsageError(f"{out} already exists", hint="pass --force to overwrite it, or choose another --out")
    check_output_file(out)  # /proc, a read-only folder, a path under a file


def write_test_file(out: Path, source: str, module: Path, force: bool) -> None:
    from assistant.atomic import atomic_write_text

    check_out_path(out, module, force)
    atomic_write_text(out, source)


def default_out(module: Path) -> Path:
    return Path("tests") / f"test_{Path(module).stem}_generated.py"
