"""Identifier relations: parameters, locals and functions renamed to synonyms or to neutral names."""

from __future__ import annotations

import keyword
import random
import re
from typing import Callable

from assistant.fidelity.relations.scopes import RenamePlan, rename_with
from assistant.fidelity.relations.source import Transformed

#: Words of identifiers and their synonyms (MORPH-style renaming): first choice first.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "number": ("value", "figure"),
    "numbers": ("values", "figures"),
    "num": ("val", "value"),
    "nums": ("vals", "values"),
    "string": ("text", "word"),
    "strings": ("texts", "words"),
    "str": ("text",),
    "s": ("text", "string"),
    "txt": ("text",),
    "text": ("content", "string"),
    "word": ("token", "term"),
    "words": ("tokens", "terms"),
    "char": ("symbol", "letter"),
    "chars": ("symbols", "letters"),
    "c": ("ch", "symbol"),
    "ch": ("symbol", "char"),
    "letter": ("character",),
    "letters": ("characters",),
    "lst": ("items", "seq"),
    "list": ("seq", "items"),
    "arr": ("array", "items"),
    "array": ("items", "vector"),
    "l": ("items", "seq"),
    "result": ("outcome", "answer"),
    "res": ("outcome", "answer"),
    "ret": ("outcome", "answer"),
    "ans": ("answer", "outcome"),
    "answer": ("outcome", "reply"),
    "output": ("outcome", "product"),
    "count": ("tally", "total"),
    "cnt": ("tally", "total"),
    "total": ("tally", "aggregate"),
    "sum": ("total", "aggregate"),
    "acc": ("accumulator", "tally"),
    "index": ("position", "offset"),
    "idx": ("position", "offset"),
    "i": ("idx", "pos"),
    "j": ("jdx", "inner"),
    "k": ("kdx", "step"),
    "pos": ("position", "offset"),
    "n": ("num", "size"),
    "x": ("val", "item"),
    "y": ("other", "second"),
    "a": ("first", "lhs"),
    "b": ("second", "rhs"),
    "d": ("mapping", "table"),
    "dict": ("mapping", "table"),
    "dic": ("mapping", "table"),
    "key": ("name", "label"),
    "keys": ("names", "labels"),
    "value": ("amount", "datum"),
    "values": ("amounts", "data"),
    "val": ("amount", "datum"),
    "item": ("element", "entry"),
    "items": ("elements", "entries"),
    "element": ("item", "entry"),
    "elements": ("items", "entries"),
    "elem": ("item", "entry"),
    "e": ("entry", "element"),
    "has": ("contains",),
    "is": ("check",),
    "get": ("fetch", "obtain"),
    "find": ("search", "locate"),
    "check": ("verify", "test"),
    "make": ("build", "create"),
    "compute": ("calculate", "evaluate"),
    "calc": ("compute", "evaluate"),
    "calculate": ("compute",),
    "sort": ("order", "arrange"),
    "sorted": ("ordered", "arranged"),
    "remove": ("drop", "delete"),
    "add": ("append", "insert"),
    "filter": ("select", "keep"),
    "parse": ("read", "decode"),
    "max": ("largest", "biggest"),
    "min": ("smallest", "least"),
    "maximum": ("largest", "biggest"),
    "minimum": ("smallest", "least"),
    "largest": ("biggest", "greatest"),
    "smallest": ("least", "tiniest"),
    "close": ("near", "nearby"),
    "closest": ("nearest",),
    "prime": ("primal",),
    "first": ("initial", "leading"),
    "last": ("final", "trailing"),
    "reverse": ("invert", "flip"),
    "length": ("size", "extent"),
    "len": ("size",),
    "size": ("length", "extent"),
    "prefix": ("head", "start"),
    "suffix": ("tail", "ending"),
    "threshold": ("limit", "tolerance"),
    "delimiter": ("separator",),
    "delimeter": ("separator",),
    "sep": ("separator", "divider"),
    "separator": ("delimiter", "divider"),
    "paren": ("bracket",),
    "parens": ("brackets",),
    "depth": ("level", "nesting"),
    "level": ("depth", "tier"),
    "balance": ("net", "running"),
    "operations": ("steps", "actions"),
    "op": ("step", "action"),
    "mean": ("average", "avg"),
    "avg": ("average", "mean"),
    "average": ("mean",),
    "deviation": ("spread",),
    "substring": ("fragment", "piece"),
    "sub": ("part", "piece"),
    "factor": ("divisor",),
    "factors": ("divisors",),
    "new": ("fresh", "updated"),
    "old": ("previous", "prior"),
    "prev": ("previous", "prior"),
    "curr": ("current", "present"),
    "current": ("present", "now"),
    "cur": ("current", "present"),
    "next": ("following", "subsequent"),
    "tmp": ("temp", "scratch"),
    "temp": ("scratch", "interim"),
    "flag": ("marker", "switch"),
    "found": ("located", "seen"),
    "seen": ("visited", "met"),
    "visited": ("seen", "explored"),
    "left": ("lo", "low"),
    "right": ("hi", "high"),
    "low": ("bottom", "lo"),
    "high": ("top", "hi"),
    "start": ("begin", "origin"),
    "end": ("stop", "finish"),
    "begin": ("start",),
    "mid": ("middle", "center"),
    "grid": ("matrix", "board"),
    "matrix": ("grid", "table"),
    "row": ("line", "record"),
    "rows": ("lines", "records"),
    "col": ("column",),
    "cols": ("columns",),
    "node": ("vertex",),
    "nodes": ("vertices",),
    "path": ("route", "trail"),
    "date": ("day",),
    "month": ("mon",),
    "year": ("yr",),
    "day": ("date",),
    "digit": ("figure", "numeral"),
    "digits": ("figures", "numerals"),
    "base": ("radix",),
    "power": ("exponent",),
    "exp": ("exponent", "power"),
    "planet": ("world",),
    "planets": ("worlds",),
    "vowels": ("vocals",),
    "vowel": ("vocal",),
    "message": ("note", "msg"),
    "msg": ("message", "note"),
    "name": ("label", "title"),
    "names": ("labels", "titles"),
    "file": ("document",),
    "data": ("payload", "records"),
    "buf": ("buffer",),
    "buffer": ("buf", "store"),
    "line": ("row", "record"),
    "lines": ("rows", "records"),
    "width": ("breadth",),
    "height": ("tallness",),
    "area": ("surface",),
    "side": ("edge",),
    "sides": ("edges",),
    "shift": ("offset", "displacement"),
    "encode": ("encrypt", "encipher"),
    "decode": ("decrypt", "decipher"),
    "cyclic": ("rotating",),
    "groups": ("chunks", "batches"),
    "group": ("chunk", "batch"),
    "special": ("particular",),
    "score": ("points", "mark"),
    "scores": ("points", "marks"),
    "guess": ("estimate",),
    "guesses": ("estimates",),
    "game": ("match",),
    "extension": ("addon",),
    "extensions": ("addons",),
    "strength": ("power",),
    "car": ("vehicle",),
    "collision": ("crash",),
    "pairs": ("couples", "duos"),
    "pair": ("couple", "duo"),
    "triple": ("trio",),
    "triples": ("trios",),
    "product": ("prod", "multiple"),
    "prod": ("product",),
    "even": ("paired",),
    "odd": ("unpaired",),
    "odds": ("unpaired",),
    "evens": ("paired",),
    "positive": ("plus",),
    "negative": ("minus",),
    "unique": ("distinct",),
    "common": ("shared",),
    "fib": ("fibo",),
    "fibfib": ("fibofibo",),
    "palindrome": ("mirror",),
    "triangle": ("trigon",),
    "median": ("middle",),
    "mode": ("commonest",),
    "roman": ("latin",),
}
_SPLIT = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+|_+")


def _split_identifier(name: str) -> list[str]:
    parts = _SPLIT.findall(name)
    return parts if "".join(parts) == name else [name]


def _synonym_for(name: str, rng: random.Random, taken: set[str]) -> str | None:
    parts = _split_identifier(name)
    words = [p for p in parts if not p.startswith("_")]
    swappable = [i for i, p in enumerate(parts) if p.lower() in SYNONYMS]
    if not swappable or not words:
        return None
    options: list[str] = []
    for _ in range(6):
        new_parts = list(parts)
        for i in swappable:
            choices = SYNONYMS[parts[i].lower()]
            word = rng.choice(choices)
            if parts[i][:1].isupper():
                word = word[:1].upper() + word[1:]
            if parts[i].isupper() and len(parts[i]) > 1:
                word = word.upper()
            new_parts[i] = word
        options.append("".join(new_parts))
    options += [o + "_v" for o in options[:1]] + [o + "_2" for o in options[:1]]
    for option in options:
        if option.isidentifier() and option not in taken and not keyword.iskeyword(option):
            return option
    return None


def _choose_synonyms(rng: random.Random) -> Callable[[RenamePlan, set[str]], dict[str, str]]:
    def choose(plan: RenamePlan, taken: set[str]) -> dict[str, str]:
        mapping: dict[str, str] = {}
        used = set(taken)
        for name in plan.order:
            new = _synonym_for(name, rng, used)
            if new:
                mapping[name] = new
                used.add(new)
        return mapping

    return choose


def _choose_neutral(plan: RenamePlan, taken: set[str]) -> dict[str, str]:
    prefix = {"function": "func", "param": "arg", "local": "var"}
    counters = {k: 0 for k in prefix}
    mapping: dict[str, str] = {}
    for name in plan.order:
        role = plan.role[name]
        while True:
            new = f"{prefix[role]}{counters[role]}"
            counters[role] += 1
            if new not in taken:
                break
        mapping[name] = new
    return mapping


def rename_synonyms(source: str, rng: random.Random, keep: frozenset = frozenset()) -> Transformed:
    """Rename parameters, locals and module-level functions (with their callers) to synonyms."""
    return rename_with(source, keep, _choose_synonyms(rng))


def rename_neutral(source: str, rng: random.Random, keep: frozenset = frozenset()) -> Transformed:
    """Rename parameters, locals and module-level functions to neutral names (arg0, var0, func0)."""
    return rename_with(source, keep, _choose_neutral)
