"""`assistant bench`: a real (short) benchmark of the embedded model through the command and
the library, its outputs (JSON, CSV, PNG, baseline ratios), failing models and bad settings.

The machine is shared and noisy: these tests check consistency, never speed.
"""

import csv
import io
import json
import math
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from assistant.bench import config, corpus, machine, report, summary, worker
from assistant.bench import run as bench_run
from assistant.bench import targets as bench_targets
from assistant.cli.bench import views
from assistant.cli.bench.command import bench
from assistant.guard import OneLineErrorGroup as _Group
from assistant.store.gguf_file import read_gguf
from assistant.store.lockfile import FileSource, HfSource, load_lock
from assistant.store.resolve import HashCache, sha256_file
from tests.conftest import REPO
from tests.store.test_resolve import entry, make_lock

MODEL = "smollm2-135m-instruct"
SHORT = ["--prompt-tokens", "32", "--gen-tokens", "16", "--reps", "2"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_app() -> typer.Typer:
    """The registration the lead will do in assistant/cli/app.py, with the CLI's error handling."""
    app = typer.Typer(cls=_Group, pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        """Test app."""

    app.command("bench")(bench)
    return app


runner = CliRunner()


def invoke(*args):
    return runner.invoke(make_app(), ["bench", *args])


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One real run through the command: JSON on stdout, plus --out, --csv and --plot files."""
    d = tmp_path_factory.mktemp("bench")
    files = {"out": d / "run.json", "csv": d / "run.csv", "plot": d / "run.png"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ASSISTANT_CACHE", str(d / "cache"))
        mp.delenv("ASSISTANT_LOCK", raising=False)
        r = invoke(
            MODEL,
            "--threads",
            "1,2",
            *SHORT,
            "--json",
            "--out",
            str(files["out"]),
            "--csv",
            str(files["csv"]),
            "--plot",
            str(files["plot"]),
        )
    assert r.exit_code == 0, r.stderr + r.stdout
    return json.loads(r.stdout), files, r.stderr


def positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0 and math.isfinite(x)


def test_json_schema_machine_and_config(cli_run):
    data, _, stderr = cli_run
    assert data["schema"] == summary.SCHEMA
    assert set(data) >= {"command", "started", "config", "machine", "load_average", "rows", "prompt_cache"}
    assert data["command"].startswith(f"assistant bench {MODEL} --threads 1,2 --prompt-tokens 32 --gen-tokens 16")
    m = data["machine"]
    assert m["status"] == "ok" and m["cpu"] and m["logical_cpus"] >= 1 and m["physical_cores"] >= 1
    assert positive(m["bandwidth_bytes_per_s"]) and positive(m["memory_bytes"])
    assert isinstance(m["simd"], list) and "CPU" in m["llama_system_info"]
    assert m["power"] in ("battery", "ac", "unknown")
    assert m["versions"]["llama_cpp_python"] == "0.3.36" and m["versions"]["python"]
    assert data["config"]["models"] == [MODEL] and data["config"]["threads"] == [1, 2]
    assert "thread(s) ok" in stderr  # progress goes to stderr, never into the JSON


def test_rows_have_positive_consistent_figures(cli_run):
    data, _, _ = cli_run
    rows = data["rows"]
    assert [(r["model"], r["threads"], r["prompt_tokens"]) for r in rows] == [(MODEL, 1, 32), (MODEL, 2, 32)]
    for r in rows:
        assert r["status"] == "ok" and r["error"] is None
        assert r["quantization"] == "Q4_1" and r["file_size"] == 98362432 and r["reps"] == 2 and r["warmup"] == 1
        for k in (
            "load_s",
            "ttft_p50_s",
            "ttft_p90_s",
            "prompt_tps_mean",
            "decode_tps_mean",
            "decode_s_mean",
            "llama_prompt_tps_mean",
            "llama_decode_tps_mean",
            "peak_rss_bytes",
            "ceiling_tps",
            "ceiling_share",
            "bytes_per_token",
            "weight_bytes_per_token",
            "kv_bytes_per_token",
        ):
            assert positive(r[k]), (k, r[k])
        assert r["prompt_tps_sd"] >= 0 and r["decode_tps_sd"] >= 0
        assert r["other_load_cores"] is None or r["other_load_cores"] >= 0  # others' load, recorded not judged
        assert r["ttft_p90_s"] >= r["ttft_p50_s"]
        assert r["decode_tokens"] == 15
        # the summary is the runs' figures: tokens/s x seconds gives the tokens back, run by run,
        # and tokens / mean seconds lies within the runs' speeds (the spread is the machine's load)
        runs = r["runs"]
        assert r["decode_tps_mean"] == pytest.approx(sum(15 / x["decode_s"] for x in runs) / len(runs))
        assert r["decode_s_mean"] == pytest.approx(sum(x["decode_s"] for x in runs) / len(runs))
        speeds = [15 / x["decode_s"] for x in runs]
        assert min(speeds) * 0.999 <= 15 / r["decode_s_mean"] <= max(speeds) * 1.001
        assert r["prompt_tps_mean"] == pytest.approx(sum(32 / x["ttft_s"] for x in runs) / len(runs))
        assert min(x["ttft_s"] for x in runs) <= r["ttft_p50_s"] <= max(x["ttft_s"] for x in runs)
        # the model's pages are mapped and touched: peak memory is above the start and at least the weights
        assert r["peak_rss_bytes"] > r["rss_before_load_bytes"]
        assert r["peak_rss_bytes"] > r["weight_bytes_per_token"]
        assert r["bytes_per_token"] == pytest.approx(r["weight_bytes_per_token"] + r["kv_bytes_per_token"])
        bw = data["machine"]["bandwidth_bytes_per_s"]
        assert r["ceiling_tps"] == pytest.approx(bw / r["bytes_per_token"])
        assert r["ceiling_share"] == pytest.approx(r["decode_tps_mean"] / r["ceiling_tps"])
        # llama.cpp's own timer sees only its part of the wall-clock decode time
        assert -0.05 < r["decode_overhead"] < 0.6
        assert len(r["runs"]) == 2
        for run in r["runs"]:
            assert run["generated_tokens"] == 16 and run["decode_tokens"] == 15  # exactly, EOS ignored
            assert run["prompt_tokens"] == 32 and run["llama_prompt_tokens"] == 32
            assert run["llama_decode_tokens"] == 15
            assert run["decode_tokens"] / run["decode_s"] * run["decode_s"] == pytest.approx(15)
            assert 0 < run["llama_decode_ms"] / 1000 <= run["decode_s"] * 1.05


def test_prompt_cache_reuses_the_prefix(cli_run):
    data, _, _ = cli_run
    caches = data["prompt_cache"]
    assert [(c["model"], c["threads"]) for c in caches] == [(MODEL, 1), (MODEL, 2)]
    for c in caches:
        assert c["status"] == "ok" and c["prefix_tokens"] == 32 and c["suffix_tokens"] == 16 and c["reps"] == 2
        assert c["fresh_evaluated_tokens"] == 48  # the whole prompt again
        assert 0 < c["reuse_evaluated_tokens"] <= 16  # only the differing suffix
        assert positive(c["ttft_fresh_p50_s"]) and positive(c["ttft_reuse_p50_s"]) and positive(c["speedup"])


def test_out_csv_and_png_files(cli_run):
    data, files, _ = cli_run
    assert json.loads(files["out"].read_text()) == data
    rows = list(csv.DictReader(io.StringIO(files["csv"].read_text())))
    assert len(rows) == 2 and [r["threads"] for r in rows] == ["1", "2"]
    assert "runs" not in rows[0]
    for r in rows:
        assert float(r["decode_tps_mean"]) > 0 and float(r["ttft_p50_s"]) > 0 and r["status"] == "ok"
        assert float(r["decode_tps_mean"]) == pytest.approx(
            next(x for x in data["rows"] if str(x["threads"]) == r["threads"])["decode_tps_mean"]
        )
    png = files["plot"].read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 10_000


def test_baseline_against_itself_is_one_and_against_a_rerun_is_near_one(cli_run, tmp_path):
    data, files, _ = cli_run
    same = report.baseline_ratios(data, data)
    assert len(same) == 2
    for r in same:
        for f in report.RATIO_FIGURES:
            assert r[f] == pytest.approx(1.0)
    r = invoke(
        MODEL,
        "--threads",
        "1",
        "--prompt-tokens",
        "32",
        "--gen-tokens",
        "16",
        "--reps",
        "1",
        "--warmup",
        "0",
        "--cache-prefix",
        "0",
        "--baseline",
        str(files["out"]),
        "--json",
    )
    assert r.exit_code == 0, r.stderr
    rerun = json.loads(r.stdout)
    assert rerun["prompt_cache"] == []  # --cache-prefix 0 skips it
    ratios = rerun["baseline"]["ratios"]
    assert [(x["model"], x["threads"], x["prompt_tokens"]) for x in ratios] == [(MODEL, 1, 32)]
    assert ratios[0]["peak_rss_bytes"] == pytest.approx(1.0, rel=0.2)  # memory does not depend on the load
    # speeds on a shared machine can differ many-fold between runs: check the arithmetic, not the speed
    old = next(x for x in data["rows"] if x["threads"] == 1)
    for f in report.RATIO_FIGURES:
        assert positive(ratios[0][f]), f
        assert ratios[0][f] * old[f] == pytest.approx(rerun["rows"][0][f]), f


def test_table_view_prints_rows_and_errors(cli_run):
    data, _, _ = cli_run
    run = summary.BenchRun.from_dict(data)
    assert run.to_dict() == data  # a saved run round-trips
    from rich.console import Console

    console = Console(file=io.StringIO(), width=200)
    views.print_report(run, report.baseline_ratios(data, data), console=console)
    text = console.file.getvalue()
    assert MODEL in text and "decode tok/s" in text and "prompt cache" in text and "ratio to baseline" in text
    md = report.markdown(run)
    assert md.count("\n| smollm2") == 4  # two speed rows, two cache rows
    busy = summary.BenchRun.from_dict(data)
    busy.rows[1].other_load_cores = 1.3
    busy.rows[0].other_load_cores = 0.0
    assert [line.split(" ran ")[0] for line in report.disturbed_lines(busy)] == [f"{MODEL} at 2 thread(s)"]
    assert "- note: " in report.markdown(busy) and "re-run on a quiet machine" in report.markdown(busy)


@pytest.mark.parametrize("width", [80, 100])
def test_a_narrow_terminal_splits_the_table_and_never_cuts_a_figure(cli_run, width):
    """At 80 columns rich used to shorten every figure to `0.…`; now the table is split in parts."""
    from rich.console import Console

    data, _, _ = cli_run
    run = summary.BenchRun.from_dict(data)
    ratios = report.baseline_ratios(data, data)
    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system=None)
    views.print_report(run, ratios, console=console)
    text = console.file.getvalue()
    assert "…" not in text
    assert max(len(line) for line in text.splitlines()) <= width
    cells = [c for r in run.rows for c in report.speed_cells(r)[1:]]
    cells += [c for r in run.prompt_cache for c in report.cache_cells(r)[1:]]
    cells += [report.fmt(r[f], ".3f") for r in ratios for f in report.RATIO_FIGURES]
    rows = [" ".join(line.split()) for line in text.splitlines()]
    for cell in filter(None, cells):
        assert any(cell in row for row in rows), cell  # whole, on one line
    wide = Console(file=io.StringIO(), width=400, force_terminal=True, color_system=None)
    views.print_report(run, ratios, console=wide)
    table_lines = lambda out: sum(line.startswith(f"  {MODEL} ") for line in out.splitlines())
    once = len(run.rows) + len(run.prompt_cache) + len(ratios)
    assert table_lines(wide.file.getvalue()) == once  # wide enough: one table each, as before
    assert table_lines(text) > once  # narrow: the key columns repeat in each part


def test_names_in_the_bench_report_are_text_not_markup(cli_run):
    from rich.console import Console

    data, _, _ = cli_run
    run = summary.BenchRun.from_dict(data)
    for r in run.rows:
        r.model = "[/bold]odd [b, a]"
    run.rows[0].status, run.rows[0].error = "error", "cannot open [/tmp/x].gguf"
    console = Console(file=io.StringIO(), width=200)
    views.print_report(run, console=console)
    text = console.file.getvalue()
    assert "[/bold]odd [b, a]" in text and "cannot open [/tmp/x].gguf" in text


def test_library_reports_broken_models_in_their_rows(model_copy, default_gguf, tmp_path):
    """A truncated file fails our GGUF check; a file whose architecture is unknown gets past it
    and fails inside llama.cpp in the worker. Neither stops the good model."""
    with open(model_copy, "r+b") as f:
        f.truncate(model_copy.stat().st_size // 2)
    bad_arch = tmp_path / "bad-arch.gguf"
    data = bytearray(default_gguf.read_bytes())
    at = data.find(b"llama", data.find(b"general.architecture"))
    data[at : at + 5] = b"zzzzz"
    bad_arch.write_bytes(bytes(data))
    assert read_gguf(bad_arch).architecture == "zzzzz"

    cfg = config.BenchConfig(
        models=(str(model_copy), MODEL, str(bad_arch)),
        threads=(1,),
        prompt_tokens=(24,),
        gen_tokens=8,
        reps=1,
        warmup=0,
        cache_prefix=0,
        bandwidth_bytes=64 << 20,
        bandwidth_reps=2,
    )
    messages = []
    run = bench_run.run_bench(cfg, on_progress=messages.append, cache=HashCache(tmp_path / "h.json"))
    by_model = {Path(r.model).name: r for r in run.rows}
    assert list(by_model) == ["copy.gguf", MODEL, "bad-arch.gguf"]
    assert by_model["copy.gguf"].status == "error" and "truncated" in by_model["copy.gguf"].error
    assert by_model["bad-arch.gguf"].status == "error" and "could not load" in by_model["bad-arch.gguf"].error
    assert by_model["bad-arch.gguf"].decode_tps_mean is None
    good = by_model[MODEL]
    assert (
        good.status == "ok"
        and good.decode_tokens == 7
        and positive(good.decode_tps_mean)
        and positive(good.ceiling_tps)
    )
    assert len(good.runs) == 1 and good.runs[0]["generated_tokens"] == 8
    assert any("error" in m for m in messages) and any("ok" in m for m in messages)
    out = tmp_path / "run.csv"
    report.write_text(out, report.to_csv(run))
    rows = list(csv.DictReader(out.open()))
    assert [r["status"] for r in rows] == ["error", "ok", "error"]
    assert report.error_lines(run)[0].startswith(str(model_copy))


@pytest.mark.parametrize(
    "args, needles",
    [
        ([MODEL, "--threads", "0"], ["--threads must be 1 or more"]),
        ([MODEL, "--threads", "1,x"], ["--threads must be comma-separated integers"]),
        ([MODEL, "--reps", "0"], ["--reps must be 1 or more"]),
        ([MODEL, "--warmup", "-1"], ["--warmup must be 0 or more"]),
        ([MODEL, "--gen-tokens", "1"], ["--gen-tokens must be 2 or more"]),
        ([MODEL, "--prompt-tokens", "1"], ["--prompt-tokens must be 2 or more"]),
        ([MODEL, "--prompt-tokens", "8000", "--gen-tokens", "300"], ["8192-token context", "needs 8300"]),
        ([MODEL, "--prompt-tokens", "128", "--cache-prefix", "9000"], ["8192-token context", "--cache-prefix 9000"]),
        (["gpt-9"], ["unknown model 'gpt-9'", MODEL]),
        (["/nonexistent/m.gguf"], ["not found", "/nonexistent/m.gguf"]),
        ([MODEL, "--baseline", "/nonexistent/base.json"], ["baseline file not found"]),
    ],
)
def test_bad_settings_are_rejected_up_front_in_one_line(args, needles):
    r = invoke(*args)
    assert r.exit_code != 0
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in r.output
    for n in needles:
        assert n in err, err
    assert "bench:" not in r.stderr  # rejected before the machine probe or any worker ran


def test_baseline_that_is_not_a_bench_run_is_rejected(tmp_path):
    bad = tmp_path / "b.json"
    bad.write_text('{"rows": 1}')
    r = invoke(MODEL, "--baseline", str(bad))
    assert r.exit_code == 1 and "not an `assistant bench` result" in r.stderr


def test_plot_without_matplotlib_is_one_line_and_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    r = invoke(MODEL, "--plot", str(tmp_path / "p.png"))
    assert r.exit_code == 1
    assert r.stderr.strip() == "error: --plot needs matplotlib, which is not installed; pip install matplotlib"


def test_default_models_are_the_default_plus_present_lock_entries(tmp_path, default_gguf):
    real = load_lock(REPO / "models.lock")
    local = tmp_path / "student.gguf"
    shutil.copyfile(default_gguf, local)
    data = local.read_bytes()
    lock = make_lock(
        tmp_path,
        real.get(MODEL),
        entry("student-q4", FileSource("student.gguf"), data=data, context_length=2048),
        entry("absent", HfSource("o/r", "a" * 40, "x.gguf"), size=10, sha256="b" * 64),
    )
    targets = bench_targets.select_targets([], lock, HashCache(tmp_path / "h.json"))
    assert [t.name for t in targets] == [MODEL, "student-q4"]
    assert all(t.model is not None and t.error is None for t in targets)
    assert targets[1].model.sha256 == sha256_file(local)
    # a present file that fails its pin is an error row, not a crash
    local.write_bytes(data[:-1] + b"\0")
    targets = bench_targets.select_targets([], lock, HashCache(tmp_path / "h2.json"))
    assert targets[1].model is None and "sha256" in targets[1].error


def test_model_cost_of_the_embedded_model(default_gguf):
    info = read_gguf(default_gguf)
    cost = bench_targets.model_cost(info)
    tensor_bytes = sum(t.n_bytes for t in info.tensors)
    assert "output.weight" not in {t.name for t in info.tensors}  # tied: the embedding is the output matrix
    assert cost.weight_bytes == tensor_bytes <= info.file_size
    assert cost.kv_bytes_per_position == 30 * 3 * (64 + 64) * 2  # layers x KV heads x (K + V dims) x F16
    assert cost.bytes_per_token(100) == cost.weight_bytes + 100 * cost.kv_bytes_per_position


def test_model_cost_reads_one_embedding_row_when_untied(default_gguf):
    info = read_gguf(default_gguf)
    embd = next(t for t in info.tensors if t.name == "token_embd.weight")
    untied = replace(info, tensors=[*info.tensors, replace(embd, name="output.weight")])
    cost = bench_targets.model_cost(untied)
    assert cost.weight_bytes == bench_targets.model_cost(info).weight_bytes + embd.n_bytes // embd.shape[1]


def test_code_prompts_are_exact_real_and_different():
    files = corpus.code_files()
    assert len(files) >= 8 and all(f.endswith(".py") for f in files)
    tokenize = lambda text: text.split()
    prompts = [corpus.code_prompt(tokenize, ["<s>"], n, i, files) for i, n in enumerate((2, 7, 50, 3000))]
    assert [len(p) for p in prompts] == [2, 7, 50, 3000]
    assert all(p[0] == "<s>" for p in prompts)
    a, c = corpus.code_prompt(tokenize, [], 64, 0, files), corpus.code_prompt(tokenize, [], 64, 1, files)
    assert a != c and corpus.code_prompt(tokenize, [], 64, 0, files) == a  # deterministic, different per index
    mid = corpus.code_prompt(tokenize, [], 64, 0, files, middle=True)
    assert mid != a


def test_small_pure_helpers(tmp_path):
    assert config.parse_int_list("1, 2,2,4", "--threads") == (1, 2, 4)
    assert summary.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert summary.percentile([1.0, 2.0], 90) == pytest.approx(1.9)
    assert summary.percentile([5.0], 90) == 5.0
    assert machine.simd_flags("CPU : SSE3 = 1 | AVX = 1 | AVX512 = 0 | LLAMAFILE = 1 | ") == [
        "SSE3",
        "AVX",
        "LLAMAFILE",
    ]
    crash = bench_run.parse_worker_output(-6, "", "load...\nGGML_ASSERT(x) failed\n")
    assert crash["status"] == "error" and "signal 6" in crash["error"] and "GGML_ASSERT" in crash["error"]
    noise = bench_run.parse_worker_output(0, "llama noise\n" + worker.RESULT_MARK + '{"status": "ok", "x": 1}\n', "")
    assert noise == {"status": "ok", "x": 1}
    assert bench_run.parse_worker_output(1, "garbage", "")["error"] == "benchmark process failed (exit code 1)"


def test_power_source_reads_what_the_os_says(tmp_path):
    def supply(name, **files):
        d = tmp_path / name
        d.mkdir()
        for k, v in files.items():
            (d / k).write_text(v + "\n")

    assert machine.power_source(tmp_path / "none", "Linux") == "unknown"
    (tmp_path / "ps").mkdir()
    assert machine.power_source(tmp_path / "ps", "Linux") == "unknown"
    tmp_path = tmp_path / "ps"
    supply("AC", type="Mains", online="1")
    supply("BAT0", type="Battery", status="Charging")
    assert machine.power_source(tmp_path, "Linux") == "ac"
    (tmp_path / "BAT0" / "status").write_text("Discharging\n")
    (tmp_path / "AC" / "online").write_text("0\n")
    assert machine.power_source(tmp_path, "Linux") == "battery"
    assert machine.power_source(tmp_path, "Windows") == "unknown"


def test_the_command_module_imports_nothing_heavy():
    code = (
        "import sys, assistant.cli.bench.command; "
        "print([m for m in ('llama_cpp', 'rich', 'matplotlib', 'numpy', 'torch', 'assistant.bench.run', "
        "'assistant.bench.report', 'assistant.cli.bench.views') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("module", ["assistant.bench.worker", "assistant.bench"])
def test_the_worker_entry_point_imports_no_command_line(module):
    """The probe/worker processes load only the library: no Typer app, no CLI module, no rich."""
    spec = json.dumps({"bandwidth_bytes": 1 << 20, "bandwidth_reps": 1})
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", module, "--probe"],
        input=spec,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = bench_run.parse_worker_output(done.returncode, done.stdout, done.stderr)
    assert result["status"] == "ok" and result["bandwidth_bytes_per_s"] > 0
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert not {m for m in imported if m.startswith(("assistant.cli", "typer", "rich"))}, sorted(imported)


def test_the_worker_module_refuses_an_unknown_mode():
    done = subprocess.run(
        [sys.executable, "-m", "assistant.bench.worker", "--nope"],
        input="{}",
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 1 and done.stderr.strip().startswith("usage: python -m assistant.bench.worker")
