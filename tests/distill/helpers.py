"""Shared by the distill tests: a tiny training recipe over a test world, and a run's weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any, Sequence

from distill.recipe import Recipe

REPO = Path(__file__).resolve().parents[2]

#: a few steps of everything the loop does: accumulate, validate, checkpoint, log
TINY: dict[str, Any] = dict(
    student={"layers": 2},
    block_size=32,
    micro_batch=2,
    grad_accum=2,
    max_steps=4,
    warmup_steps=1,
    lr=3e-3,
    min_lr=3e-4,
    eval_interval=2,
    eval_blocks=4,
    log_interval=1,
    ckpt_interval=2,
    chunk_size=16,
)


def stdlib_corpus_world(base: Path, teacher: Path, files: Sequence[str]) -> dict:
    """A test world: ``teacher`` (already written) and a token corpus of the stdlib ``files`` in its tokenizer."""
    from distill.corpus import CorpusConfig, build_corpus
    from distill.tokenizer import load_tokenizer

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    src = base / "src"
    src.mkdir()
    for name in files:
        shutil.copyfile(stdlib / name, src / name)
    corpus = base / "corpus"
    build_corpus(
        load_tokenizer(str(teacher)), CorpusConfig(roots=(src,), val_fraction=0.3, decontaminate=False), corpus
    )
    return {"teacher": str(teacher), "corpus": str(corpus), "base": base}


def tiny_recipe(world: dict, out: Path, **changes: Any) -> Recipe:
    """TINY on the world's teacher and corpus, writing to ``out``; ``changes`` override any field."""
    return Recipe.from_dict(
        {"teacher": world["teacher"], "corpus": world["corpus"], "out": str(out), **TINY, **changes}
    )


def weights(student_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(student_dir / "model.safetensors"))


def torchrun(recipe: Recipe, launch: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """``recipe`` through the real torchrun launcher (``nproc`` CPU processes, gloo), from a JSON file at ``launch``."""
    launch.write_text(json.dumps(recipe.to_dict()))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run(
        [*cmd, "-m", "distill.train", str(launch)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        cwd=REPO,
        timeout=300,
    )
