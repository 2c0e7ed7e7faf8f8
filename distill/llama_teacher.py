"""The teacher on llama.cpp: a GGUF teacher's per-token logits through llama-cpp-python.

On a CPU llama.cpp runs the quantized teacher several times faster than PyTorch runs its
dequantized float32 copy, so the offline logit cache (distill/logit_cache.py) can be built from
the GGUF itself. The logits are those of the file users run (quantized weights, 8-bit activations
in the matmuls), which differ slightly from the dequantized PyTorch model's: the benchmark
`benchmarks/distill_teacher_backends.py` measures by how much.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from assistant.errors import UsageError

BACKENDS = ("torch", "llama.cpp")


@dataclass
class LlamaCppTeacher:
    """A loaded GGUF teacher; ``forward`` has the signature the logit cache expects."""

    llm: Any  # llama_cpp.Llama with logits_all
    source: str  # lock name or path, as the user named it
    sha256: str
    vocab_size: int
    tokenizer_spec: str
    n_ctx: int

    def forward(self, input_ids: Any) -> Any:
        """Logits [batch, B, V] (float32 torch tensor) for a LongTensor [batch, B], one sequence at a time."""
        import numpy as np
        import torch

        rows = []
        for row in input_ids.tolist():
            if len(row) > self.n_ctx:
                raise UsageError(f"a block of {len(row)} tokens does not fit the teacher's context of {self.n_ctx}")
            self.llm.reset()
            self.llm.eval(row)
            rows.append(np.array(self.llm.scores[: len(row)], dtype=np.float32))
        return torch.from_numpy(np.stack(rows))

    def forward_at(self, input_ids: Any, mask: Any) -> Any:
        """Logits [mask.sum(), V] at the masked positions only (an example corpus's targets), row-major.

        Each row is evaluated only up to its last target and only those rows of the scores are
        copied out, instead of B × 151,936 floats per block.
        """
        import numpy as np
        import torch

        picked = []
        for row, keep in zip(input_ids.tolist(), mask.cpu().numpy()):
            where = np.flatnonzero(keep)
            if not len(where):
                continue
            row = row[: int(where[-1]) + 1]
            if len(row) > self.n_ctx:
                raise UsageError(f"a block of {len(row)} tokens does not fit the teacher's context of {self.n_ctx}")
            self.llm.reset()
            self.llm.eval(row)
            picked.append(np.array(self.llm.scores[where], dtype=np.float32))
        if not picked:
            return torch.empty((0, self.vocab_size), dtype=torch.float32)
        return torch.from_numpy(np.concatenate(picked))

    def close(self) -> None:
        self.llm.close()


def load_llama_teacher(spec: str, *, n_ctx: int, threads: int = 1, offline: bool = False) -> LlamaCppTeacher:
    """A lock name or .gguf path, verified against its pinned sha256, loaded with per-token logits."""
    from assistant.runtime.llama_lib import llama_cpp as load_llama_cpp
    from assistant.store.lockfile import load_lock
    from assistant.store.resolve import HashCache, offline_mode, resolve

    resolved = resolve(spec, load_lock(), HashCache(), offline=offline_mode(offline))
    if threads < 1:
        raise UsageError(f"--threads must be at least 1, not {threads}")
    llama_cpp = load_llama_cpp()
    try:
        llm = llama_cpp.Llama(
            model_path=str(resolved.path),
            n_ctx=n_ctx,
            n_batch=n_ctx,
            n_ubatch=min(n_ctx, 512),
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=True,
            verbose=False,
        )
    except (ValueError, RuntimeError) as e:
        raise UsageError(f"llama.cpp could not load teacher {spec}: {e}") from None
    return LlamaCppTeacher(llm, resolved.name, resolved.sha256, int(llm.n_vocab()), resolved.name, n_ctx)
