"""`assistant eval asserts`: assertion generation scored like the seed study.

The model sees the focal function and the test method with its assertion masked, and
writes the assertion. Scores: exact match and difflib similarity against the ground truth
and, with ``--reference``, against another model's predictions on the same prompts (the
seed compares a student with its teacher this way), plus milliseconds per sample.
``predict_assertions`` is the reusable part: any engine, any examples, same prompts.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from assistant.asserts.dataset import PLACEHOLDER, Example
from assistant.runtime.prompts import FENCE_RE

PROMPT_VERSION = 1
MAX_TOKENS = 96
TOO_LONG = "[the prompt does not fit the context window]"


@dataclass(frozen=True)
class Prediction:
    id: str
    prediction: str  # the predicted assertion, normalized ("" when the answer held none)
    raw: str  # the model's reply as generated
    ms: float  # wall time of the generation, prompt included
    tokens: int
    model_sha256: str = ""
    prompt_sha256: str = ""


def user_message(example: Example) -> str:
    return (
        f"Here is the function under test:\n\n```python\n{example.focal.rstrip()}\n```\n\n"
        f"Here is a test method in which one assertion is replaced by {PLACEHOLDER}:\n\n"
        f"```python\n{example.prefix.rstrip()}\n```\n\n"
        f"Write the assertion that replaces {PLACEHOLDER}. Reply with only that one line of Python."
    )


REPLY_START = "```python\n"


def normalize(code: str) -> str:
    """One canonical line: ``ast.unparse`` when it parses, else whitespace collapsed."""
    code = code.strip()
    try:
        tree = ast.parse(code)
        if len(tree.body) == 1:
            return ast.unparse(tree.body[0])
    except (SyntaxError, ValueError, RecursionError):
        pass
    return " ".join(code.split())


def _is_assertion_line(line: str) -> bool:
    s = line.strip()
    return (
        s.startswith("assert ") or s.startswith("assert(") or s.startswith("self.assert") or s.startswith("self.fail")
    )


def _statement_at(lines: list[str], i: int, max_lines: int = 12) -> str:
    """The statement starting at line ``i``: the fewest following lines that parse with it."""
    import textwrap

    for j in range(i + 1, min(len(lines), i + max_lines) + 1):
        chunk = textwrap.dedent("\n".join(lines[i:j]))
        try:
            tree = ast.parse(chunk)
        except (SyntaxError, ValueError, RecursionError):
            continue
        if tree.body:
            return ast.unparse(tree.body[0])
    return normalize(lines[i])


def extract_assertion(reply: str) -> str:
    """The first assertion of a reply (``assert ...`` or ``self.assertX(...)``), normalized.

    An assertion the model spread over several lines is joined; with no assertion, the
    first line of code stands as the prediction (it scores on similarity only).
    """
    text = REPLY_START + reply
    blocks = [m.group(2) for m in FENCE_RE.finditer(text)] or [reply]
    for block in blocks:
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if PLACEHOLDER not in line and _is_assertion_line(line):
                return _statement_at(lines, i)
    for block in blocks:
        for line in block.splitlines():
            if line.strip() and PLACEHOLDER not in line and not line.strip().startswith(("def ", "#", "class ", "@")):
                return normalize(line)
    return ""


def prompt_sha256(example: Example) -> str:
    """Keys a saved prediction: a changed prompt (or prompt version) is predicted again."""
    return hashlib.sha256(f"{PROMPT_VERSION}\n{user_message(example)}".encode()).hexdigest()


def predict_assertions(
    engine,
    examples: Sequence[Example],
    *,
    max_tokens: int = MAX_TOKENS,
    cached: dict[str, Prediction] | None = None,
    on_prediction: Callable[[Prediction, int, int], None] | None = None,
) -> list[Prediction]:
    """One greedy prediction per example, in order; ``cached`` ones (same model, same prompt) are reused.

    ``on_prediction`` sees each new prediction as it is made (for saving and progress).
    """
    from assistant.runtime.engine import ContextError, Sampling
    from assistant.runtime.prompts import Request

    cached = cached or {}
    stops = tuple(dict.fromkeys(("```", "\n\n", *engine.model.stop)))
    sampling = Sampling(max_tokens=max_tokens, temperature=0.0, seed=0, stop=stops)
    out = []
    for i, ex in enumerate(examples):
        key = prompt_sha256(ex)
        hit = cached.get(ex.id)
        if hit and hit.model_sha256 == engine.model.sha256 and hit.prompt_sha256 == key:
            out.append(hit)
            continue
        prompt = engine.render(Request(user_message(ex)), style="chat", system=None) + REPLY_START
        t0 = time.perf_counter()
        try:
            g = engine.generate(prompt, sampling)
        except ContextError:  # counts as no answer rather than ending the run
            p = Prediction(ex.id, "", TOO_LONG, 0.0, 0, engine.model.sha256, key)
        else:
            ms = (time.perf_counter() - t0) * 1000
            p = Prediction(
                ex.id,
                extract_assertion(g.text),
                g.text,
                round(ms, 1),
                g.timings.generated_tokens,
                engine.model.sha256,
                key,
            )
        out.append(p)
        if on_prediction:
            on_prediction(p, i + 1, len(examples))
    return out


# -- scores ---------------------------------------------------------------------------------------


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def score(predicted: Sequence[str], expected: Sequence[str]) -> dict:
    """Exact-match accuracy and mean difflib similarity of normalized assertions."""
    if len(predicted) != len(expected):
        raise ValueError("predicted and expected differ in length")
    n = len(expected)
    if not n:
        return {"exact_match": 0.0, "similarity": 0.0, "n": 0}
    pairs = [(normalize(p) if p else "", normalize(e)) for p, e in zip(predicted, expected)]
    return {
        "exact_match": round(sum(p == e for p, e in pairs) / n, 4),
        "similarity": round(sum(similarity(p, e) for p, e in pairs) / n, 4),
        "n": n,
    }


# -- saved predictions ----------------------------------------------------------------------------


def predictions_path(out: Path, model_name: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in model_name)
    return Path(out) / f"predictions-{safe}.jsonl"


def load_predictions(path: Path) -> dict[str, Prediction]:
    """Saved predictions by example id; unreadable lines (a killed run's last) are skipped."""
    found: dict[str, Prediction] = {}
    if not Path(path).is_file():
        return found
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                p = Prediction(**json.loads(line))
            except (ValueError, TypeError):
                continue
            found[p.id] = p
    return found


class PredictionLog:
    """Appends each prediction as one JSON line, so a killed run resumes where it stopped."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - an append log kept open across calls

    def __call__(self, p: Prediction, done: int, total: int) -> None:
        self.file.write(json.dumps(asdict(p), sort_keys=True) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def summarize(
    examples: Sequence[Example],
    preds: Sequence[Prediction],
    model: dict,
    split: str,
    dataset: dict,
    reference: tuple[dict, Sequence[Prediction]] | None = None,
) -> dict:
    """The eval's result: scores against the ground truth and the reference, and timings."""
    truth = [e.assertion for e in examples]
    mine = [p.prediction for p in preds]
    summary = {
        "model": model,
        "split": split,
        "examples": len(examples),
        "dataset": dataset,
        "prompt_version": PROMPT_VERSION,
        "ground_truth": score(mine, truth),
        "ms_per_sample": _ms(preds),
        "no_assertion": sum(not p.prediction for p in preds),
    }
    if reference is not None:
        ref_model, ref_preds = reference
        theirs = [p.prediction for p in ref_preds]
        summary["reference"] = {
            **ref_model,
            **score(mine, theirs),
            "ground_truth": score(theirs, truth),
            "ms_per_sample": _ms(ref_preds),
        }
    return summary


def _ms(preds: Sequence[Prediction]) -> float:
    """Mean milliseconds per generated sample (prompts that did not fit are not timed)."""
    timed = [p.ms for p in preds if p.raw != TOO_LONG]
    return round(sum(timed) / len(timed), 1) if timed else 0.0
