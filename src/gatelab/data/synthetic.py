"""The embedded default corpus: seeded, synthetic, multi-domain text generated in code.

Each document comes from one domain (`DOMAINS`) and carries its domain id, so routing
statistics can later be compared with ground truth per token. The domains mix easy
surface statistics (templated stories, code layout) with things a bigger model does
better within a few hundred steps: carrying in arithmetic, matching brackets, copying,
reversing and recalling values from earlier in the context.

Generation uses only ``random.Random(seed)`` integer draws (``randrange``, ``choice``,
``shuffle``) over fixed tuples, so a seed gives byte-identical text on every run,
platform and ``PYTHONHASHSEED``.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from ..core.config import check
from ..core.registry import register
from .corpus import Documents, TextCorpus, split_documents

_LETTERS = "abcdefghijklmnopqrstuvwxyz"

# ---------------------------------------------------------------------------- stories

_GIRLS = ("Lily", "Mia", "Anna", "Zoe", "Emma", "Lucy", "Ruby", "Ella", "Sara", "Nora")
_BOYS = ("Tom", "Ben", "Sam", "Max", "Leo", "Jack", "Finn", "Owen", "Tim", "Noah")
_ANIMALS = ("cat", "dog", "bird", "frog", "bunny", "duck", "bear", "fox", "mouse", "owl")
_ADJS = ("little", "big", "happy", "small", "brave", "shy", "kind", "silly", "curious", "quiet")
_PLACES = ("park", "garden", "forest", "house", "beach", "school", "farm", "river", "hill", "town")
_OBJECTS = ("ball", "box", "kite", "hat", "book", "toy", "cake", "flower", "stone", "drum")
_COLORS = ("red", "blue", "green", "yellow", "pink", "purple", "orange", "white")
_VERBS = ("play", "run", "jump", "sing", "read", "swim", "dance", "paint")
_FEELINGS = ("happy", "sad", "excited", "scared", "tired", "proud", "surprised")

_OPENINGS = (
    "Once upon a time, there was a {adj} {animal} named {hero}.",
    "One day, a {adj} {kid} named {hero} went to the {place}.",
    "{hero} was a {adj} {animal} who lived near the {place}.",
    "There once was a {kid} called {hero} who loved to {verb}.",
)
_MIDDLES = (
    "{Pron} liked to {verb} with {pos} friend {friend}.",
    "One day, {hero} found a {color} {obj} in the {place}.",
    '{hero} said, "Look, {friend}! I found a {color} {obj}!"',
    "{friend} wanted to {verb} too.",
    "They played with the {obj} all day.",
    "{Pron} felt {feeling} when {pron} saw the {obj}.",
    "Then it started to rain, so {hero} ran back to the {place}.",
    "{hero} gave the {color} {obj} to {friend}.",
    '"Can we {verb} together?" asked {friend}.',
    "The {color} {obj} was very pretty, and {hero} smiled.",
)
_ENDINGS = (
    "{hero} and {friend} were very {feeling}. The end.",
    "From that day on, {hero} always took the {obj} to the {place}.",
    "They lived happily ever after.",
    "And {hero} never forgot the {color} {obj}.",
)


def _story(rng: random.Random) -> str:
    girl = rng.randrange(2) == 0
    hero = rng.choice(_GIRLS if girl else _BOYS)
    friend = rng.choice(_BOYS if girl else _GIRLS)
    slots = {
        "hero": hero,
        "friend": friend,
        "kid": "girl" if girl else "boy",
        "pron": "she" if girl else "he",
        "Pron": "She" if girl else "He",
        "pos": "her" if girl else "his",
        "adj": rng.choice(_ADJS),
        "animal": rng.choice(_ANIMALS),
        "place": rng.choice(_PLACES),
        "obj": rng.choice(_OBJECTS),
        "color": rng.choice(_COLORS),
        "verb": rng.choice(_VERBS),
        "feeling": rng.choice(_FEELINGS),
    }
    middles = list(_MIDDLES)
    rng.shuffle(middles)
    parts = [rng.choice(_OPENINGS), *middles[: 3 + rng.randrange(4)], rng.choice(_ENDINGS)]
    return " ".join(p.format(**slots) for p in parts)


# ---------------------------------------------------------------------------- algorithmic


def _arithmetic(rng: random.Random) -> str:
    lines = []
    for _ in range(8 + rng.randrange(9)):
        op = rng.randrange(3)
        if op == 0:
            a, b = rng.randrange(1000), rng.randrange(1000)
            lines.append(f"{a}+{b}={a + b}")
        elif op == 1:
            a, b = rng.randrange(1000), rng.randrange(1000)
            a, b = max(a, b), min(a, b)
            lines.append(f"{a}-{b}={a - b}")
        else:
            a, b = rng.randrange(13), rng.randrange(13)
            lines.append(f"{a}*{b}={a * b}")
    return "\n".join(lines)


_BRACKETS = ("()", "[]", "{}", "<>")


def _dyck_line(rng: random.Random, n_pairs: int, max_depth: int = 8) -> str:
    out, stack = [], []
    opened = 0
    while opened < n_pairs or stack:
        can_open = opened < n_pairs and len(stack) < max_depth
        if can_open and (not stack or rng.randrange(2) == 0):
            pair = rng.choice(_BRACKETS)
            out.append(pair[0])
            stack.append(pair[1])
            opened += 1
        else:
            out.append(stack.pop())
    return "".join(out)


def _dyck(rng: random.Random) -> str:
    return "\n".join(_dyck_line(rng, 4 + rng.randrange(20)) for _ in range(3 + rng.randrange(5)))


def _word(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice(_LETTERS) for _ in range(lo + rng.randrange(hi - lo + 1)))


def _copy(rng: random.Random) -> str:
    return "\n".join(f"copy {w} -> {w}" for w in (_word(rng, 3, 16) for _ in range(4 + rng.randrange(6))))


def _reverse(rng: random.Random) -> str:
    return "\n".join(f"reverse {w} -> {w[::-1]}" for w in (_word(rng, 3, 16) for _ in range(4 + rng.randrange(6))))


def _kv_recall(rng: random.Random) -> str:
    n = 4 + rng.randrange(9)
    keys: list[str] = []
    while len(keys) < n:  # distinct keys, in draw order (no set iteration)
        k = _word(rng, 2, 2)
        if k not in keys:
            keys.append(k)
    values = [str(rng.randrange(1000)) for _ in keys]
    store = " ".join(f"{k}={v}" for k, v in zip(keys, values))
    queries = [rng.randrange(n) for _ in range(3 + rng.randrange(4))]
    return "\n".join([f"store {store}", *(f"get {keys[q]} -> {values[q]}" for q in queries)])


# ---------------------------------------------------------------------------- code

_FUNCS = ("add", "scale", "mix", "step", "count", "total", "shift", "area", "clip", "score")
_VARS = ("x", "y", "n", "a", "b", "k", "size", "value", "count", "total")
_OPS = ("+", "-", "*")


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _code_snippet(rng: random.Random) -> str:
    """A small function, a call, and the printed result as a comment."""
    kind = rng.randrange(3)
    f = f"{rng.choice(_FUNCS)}_{rng.randrange(10)}"
    a, b = rng.choice(_VARS[:6]), rng.choice(_VARS[6:])
    c1, c2, arg = rng.randrange(1, 10), rng.randrange(1, 10), rng.randrange(20)
    op1, op2 = rng.choice(_OPS), rng.choice(_OPS)
    if kind == 0:
        body = [f"    {b} = {a} {op1} {c1}", f"    return {b} {op2} {c2}"]
        result = _apply(op2, _apply(op1, arg, c1), c2)
    elif kind == 1:
        body = [f"    {b} = 0", f"    for i in range({a}):", f"        {b} += i {op1} {c1}", f"    return {b}"]
        result = sum(_apply(op1, i, c1) for i in range(arg))
    else:
        body = [f"    if {a} > {c1}:", f"        return {a} {op2} {c2}", "    else:", f"        return {c2}"]
        result = _apply(op2, arg, c2) if arg > c1 else c2
    return "\n".join([f"def {f}({a}):", *body, f"print({f}({arg}))  # {result}"])


def _code(rng: random.Random) -> str:
    return "\n\n".join(_code_snippet(rng) for _ in range(1 + rng.randrange(3)))


# ---------------------------------------------------------------------------- corpus

_GENERATORS: dict[str, Callable[[random.Random], str]] = {
    "story": _story,
    "arithmetic": _arithmetic,
    "dyck": _dyck,
    "copy": _copy,
    "reverse": _reverse,
    "kv_recall": _kv_recall,
    "code": _code,
}
#: Domain names; a token's domain id indexes this tuple.
DOMAINS: tuple[str, ...] = tuple(_GENERATORS)


def generate(n_docs: int, seed: int = 0, domains: tuple[str, ...] = DOMAINS) -> tuple[list[str], list[int]]:
    """`n_docs` documents and their domain ids (indices into `DOMAINS`), equal counts per domain (+-1)."""
    rng = random.Random(seed)
    ids = [DOMAINS.index(d) for d in domains]
    order = [ids[i % len(ids)] for i in range(n_docs)]
    rng.shuffle(order)
    return [_GENERATORS[DOMAINS[d]](rng) for d in order], order


@register("corpus", "synthetic")
class SyntheticCorpus(TextCorpus):
    """Seeded multi-domain synthetic documents (the dependency-free default, ~500 KB)."""

    @dataclass
    class Config:
        n_docs: int = 3000  # documents generated, split into train/val by index
        seed: int = 0  # generation seed (batch sampling has its own, data.seed)
        domains: tuple[str, ...] = ()  # subset of DOMAINS; empty = all

        def validate(self) -> None:
            check(self.n_docs >= 2, "n_docs", self.n_docs, "an integer >= 2")
            bad = [d for d in self.domains if d not in DOMAINS]
            check(not bad, "domains", list(self.domains), f"names from {', '.join(DOMAINS)}")
            check(len(set(self.domains)) == len(self.domains), "domains", list(self.domains), "distinct names")

    def documents(self, val_fraction: float) -> Documents:
        texts, doms = generate(self.cfg.n_docs, self.cfg.seed, self.cfg.domains or DOMAINS)
        docs = split_documents(texts, val_fraction, "synthetic corpus", doms, DOMAINS)
        docs.info.update(n_docs=self.cfg.n_docs, seed=self.cfg.seed)
        return docs
