"""Read (and write) SentencePiece ``tokenizer.model`` files without sentencepiece or protobuf.

The file is a protobuf ``ModelProto``; we need only the pieces (text, score, type), the
special ids and whether a dummy space prefix is added. Reading it ourselves keeps the
real scores (a vocab rebuilt from tokenizer.json gets constant scores and llama.cpp then
mis-tokenizes code) without another dependency. Field numbers are sentencepiece_model.proto's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from export.errors import ExportError

# ModelProto
PIECES, TRAINER_SPEC, NORMALIZER_SPEC = 1, 2, 3
# ModelProto.SentencePiece
PIECE_TEXT, PIECE_SCORE, PIECE_TYPE = 1, 2, 3
# TrainerSpec
MODEL_TYPE, VOCAB_SIZE, BYTE_FALLBACK, UNK_ID, BOS_ID, EOS_ID, PAD_ID = 3, 4, 35, 40, 41, 42, 43
# NormalizerSpec
ADD_DUMMY_PREFIX = 3
#: SentencePiece piece types; the numbers are also GGUF's token types.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}

VARINT, I64, LEN, I32 = 0, 1, 2, 5


@dataclass(frozen=True)
class Piece:
    text: str
    score: float
    type: int = NORMAL


@dataclass(frozen=True)
class SentencePieceModel:
    pieces: tuple[Piece, ...]
    model_type: str = "unigram"
    unk_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    pad_id: int = -1
    byte_fallback: bool = False
    add_dummy_prefix: bool = True


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 70:
            raise ValueError("varint too long")


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of one protobuf message."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, pos = _varint(buf, pos)
        elif wire == I64:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == LEN:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == I32:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated field")
        yield number, wire, value


def _int32(v: int) -> int:
    """protobuf encodes negative int32 as a 64-bit two's complement varint."""
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >= 1 << 63 else v


def parse(data: bytes, where: str = "tokenizer.model") -> SentencePieceModel:
    try:
        pieces: list[Piece] = []
        spec: dict[int, int] = {}
        add_dummy_prefix = True
        for number, wire, value in _fields(data):
            if number == PIECES and wire == LEN:
                text, score, kind = "", 0.0, NORMAL
                for n, w, v in _fields(value):
                    if n == PIECE_TEXT and w == LEN:
                        text = v.decode("utf-8")
                    elif n == PIECE_SCORE and w == I32:
                        score = struct.unpack("<f", v)[0]
                    elif n == PIECE_TYPE and w == VARINT:
                        kind = v
                pieces.append(Piece(text, score, kind))
            elif number == TRAINER_SPEC and wire == LEN:
                spec = {n: _int32(v) for n, w, v in _fields(value) if w == VARINT}
            elif number == NORMALIZER_SPEC and wire == LEN:
                for n, w, v in _fields(value):
                    if n == ADD_DUMMY_PREFIX and w == VARINT:
                        add_dummy_prefix = bool(v)
    except (ValueError, UnicodeDecodeError) as e:
        raise ExportError(f"{where} is not a SentencePiece model: {e}") from None
    if not pieces:
        raise ExportError(f"{where} is not a SentencePiece model: it has no pieces")
    return SentencePieceModel(
        pieces=tuple(pieces),
        model_type=MODEL_TYPES.get(spec.get(MODEL_TYPE, 1), "unigram"),
        unk_id=spec.get(UNK_ID, 0),
        bos_id=spec.get(BOS_ID, 1),
        eos_id=spec.get(EOS_ID, 2),
        pad_id=spec.get(PAD_ID, -1),
        byte_fallback=bool(spec.get(BYTE_FALLBACK, 0)),
        add_dummy_prefix=add_dummy_prefix,
    )


def read(path: Path) -> SentencePieceModel:
    return parse(Path(path).read_bytes(), str(path))


# -- writing (tests and tooling build small models with it) ------------------------------------


def _enc_varint(v: int) -> bytes:
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _enc_varint(number << 3 | wire)


def _len_field(number: int, payload: bytes) -> bytes:
    return _key(number, LEN) + _enc_varint(len(payload)) + payload


def _varint_field(number: int, value: int) -> bytes:
    return _key(number, VARINT) + _enc_varint(value)


def serialize(model: SentencePieceModel) -> bytes:
    out = bytearray()
    for p in model.pieces:
        body = _len_field(PIECE_TEXT, p.text.encode("utf-8"))
        body += _key(PIECE_SCORE, I32) + struct.pack("<f", p.score)
        body += _varint_field(PIECE_TYPE, p.type)
        out += _len_field(PIECES, body)
    model_type = {v: k for k, v in MODEL_TYPES.items()}[model.model_type]
    spec = _varint_field(MODEL_TYPE, model_type) + _varint_field(VOCAB_SIZE, len(model.pieces))
    spec += _varint_field(BYTE_FALLBACK, int(model.byte_fallback))
    for number, value in (
        (UNK_ID, model.unk_id),
        (BOS_ID, model.bos_id),
        (EOS_ID, model.eos_id),
        (PAD_ID, model.pad_id),
    ):
        spec += _varint_field(number, value)
    out += _len_field(TRAINER_SPEC, spec)
    out += _len_field(NORMALIZER_SPEC, _varint_field(ADD_DUMMY_PREFIX, int(model.add_dummy_prefix)))
    return bytes(out)
