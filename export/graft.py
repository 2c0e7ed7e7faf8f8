"""Graft a student onto its base: every tensor it never trained becomes the base file's own bytes.

A student cut from a pretrained GGUF with its lower layers frozen holds, in those layers, exactly
the weights transformers dequantized from the base. Quantizing the student again would round
them a second time; grafting puts the base's original quantized tensors back (the values the
student was trained against), so the student quantizes only what it learned, and the file
shares those bytes with the base, which lets the repository ship it as a patch
(`export.patch`). Which tensors are unchanged is decided by value, not by name: each tensor of
the student's F16/F32 export is compared with the base tensors of the same role and shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from export.errors import ExportError
from export.files import atomic_path

#: The student's F16 export rounds each weight to 11 significant bits; anything it trained moves far more.
REL_TOL = 2.0**-10
_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class GraftResult:
    path: Path
    size: int
    grafted: dict[str, str] = field(default_factory=dict)  # student tensor -> base tensor
    kept: tuple[str, ...] = ()  # tensors the student changed (its own quantization)

    @property
    def grafted_elements(self) -> int:
        return len(self.grafted)


def _role(name: str) -> str:
    m = _LAYER.match(name)
    return m.group(2) if m else name


def _values(tensor, rows: int | None = None) -> np.ndarray:
    """The tensor's values as float32 (only its first ``rows`` rows when given), flattened."""
    from gguf import GGMLQuantizationType, quants

    qtype = GGMLQuantizationType(int(tensor.tensor_type))
    data = np.asarray(tensor.data)
    if rows is not None and data.ndim > 1:
        data = data[:rows]
    if qtype in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
        return data.astype(np.float32).reshape(-1)
    return quants.dequantize(data, qtype).astype(np.float32).reshape(-1)


def _same(ref: np.ndarray, base: np.ndarray) -> bool:
    return ref.shape == base.shape and bool(np.all(np.abs(ref - base) <= np.abs(base) * REL_TOL + 1e-8))


def match_frozen(reference, base) -> dict[str, str]:
    """Student tensor name -> the base tensor it equals (after the reference's rounding)."""
    by_role: dict[tuple[str, tuple[int, ...]], list] = {}
    for t in base.tensors:
        by_role.setdefault((_role(t.name), tuple(int(d) for d in t.shape)), []).append(t)
    found: dict[str, str] = {}
    for t in reference.tensors:
        candidates = by_role.get((_role(t.name), tuple(int(d) for d in t.shape)), [])
        if not candidates:
            continue
        head, ref = _values(t, rows=1), None
        for c in candidates:  # the first row rules out the wrong layers before anything big is dequantized
            if not _same(head, _values(c, rows=1)):
                continue
            ref = _values(t) if ref is None else ref
            if _same(ref, _values(c)):
                found[t.name] = c.name
                break
    return found


def graft(student: Path, reference: Path, base: Path, out: Path, *, force: bool = False) -> GraftResult:
    """Write ``student`` (a quantized export) to ``out`` with its unchanged tensors taken from ``base``.

    ``reference`` is the same student's F16 or F32 export, whose values say what is unchanged.
    """
    import gguf

    readers = {}
    for what, path in (("student", student), ("reference", reference), ("base", base)):
        try:
            readers[what] = gguf.GGUFReader(str(path))
        except (OSError, ValueError) as e:
            raise ExportError(f"cannot read the {what} GGUF {path}: {e}") from None
    s, ref, b = readers["student"], readers["reference"], readers["base"]
    rounded = [t.name for t in ref.tensors if int(t.tensor_type) not in (0, 1)]  # GGML F32, F16
    if rounded:
        raise ExportError(
            f"{reference} stores {rounded[0]} quantized: the reference must be the student's F16 or F32 export",
            hint="pass the file `assistant export gguf --outtype f16` wrote",
        )
    names = [t.name for t in s.tensors]
    if sorted(names) != sorted(t.name for t in ref.tensors):
        raise ExportError(
            f"{reference} is not an export of the same student as {student} (their tensor names differ)",
            hint="pass the F16/F32 file that the quantized student was made from",
        )
    mapping = match_frozen(ref, b)
    matrices = {t.name for t in ref.tensors if len(t.shape) > 1}
    if not matrices & set(mapping):
        raise ExportError(
            f"no weight matrix of {student} equals one of {base}: the student shares no weight matrix with that base",
            hint="graft onto the model the student was initialized from, with its lower layers frozen",
        )
    base_by_name = {t.name: t for t in b.tensors}
    arch = str(bytes(s.fields["general.architecture"].parts[-1]), "utf-8")
    with atomic_path(out, force) as tmp:
        w = gguf.GGUFWriter(str(tmp), arch)
        for f in s.fields.values():
            if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
                continue
            vtype = f.types[0]
            sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
        chosen = [base_by_name[mapping[t.name]] if t.name in mapping else t for t in s.tensors]
        for name, t in zip(names, chosen, strict=True):
            w.add_tensor_info(name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for t in chosen:
            w.write_tensor_data(t.data)
        w.close()
    kept = tuple(n for n in names if n not in mapping)
    return GraftResult(out, out.stat().st_size, mapping, kept)
