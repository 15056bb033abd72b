"""The merchandising rule language: a tokenizer, a recursive-descent parser and an evaluator that
computes a rule as NumPy masks over item attribute columns (never ``eval``, never per item).

A rule is a boolean expression over item attributes and the request::

    category in ("rainwear", "boots") and price < $item.price and attributes.brand != "X"

- item paths: ``item_id``, ``category`` (any of the item's categories), ``price``, ``available``,
  ``age_days`` (days since ``created_at``), ``popularity``, ``trending``, ``attributes.<key>``;
- ``$item.<path>`` the item in view (its primary category for ``category``), ``$user.<attr>``
  (the user's attributes), ``$context.<key>`` (the request context);
- ``== != < <= > >=`` (``=`` reads as ``==``), ``in (...)``, ``not in (...)``, ``and``, ``or``,
  ``not``, parentheses, numbers, 'single' or "double" quoted strings, ``true``/``false``.

A comparison with a missing value (no price, no such attribute, no such ``$user`` key) is false;
``!=`` and ``not in`` are the negation of ``==`` and ``in``, so an item without a brand passes
``attributes.brand != "X"``. Errors are :class:`~scalerec.errors.RuleError` with the position.
"""

from __future__ import annotations

import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from scalerec.data.ids import lookup
from scalerec.errors import RuleError

MAX_RULE_LENGTH = 2_000
MAX_DEPTH = 50
#: ``age_days`` is recomputed from ``created_at`` at most this often (seconds): masks of rules that
#: read it are cached per such period, so a rule like ``age_days < 30`` lets an item age out live.
AGE_REFRESH_S = 60.0

#: item paths and their kind: num (float, nan = unknown), bool, set (categories), text, attr (both)
ITEM_PATHS = {
    "item_id": "text",
    "category": "set",
    "categories": "set",
    "price": "num",
    "available": "bool",
    "age_days": "num",
    "popularity": "num",
    "trending": "num",
}
REF_ROOTS = ("item", "user", "context")
_KEYWORDS = {"and", "or", "not", "in", "true", "false"}
_OPS = {"==": "==", "=": "==", "!=": "!=", "<>": "!=", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_FLIP = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}

_TOKEN = re.compile(
    r"""(?P<ws>\s+)
      | (?P<num>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<ref>\$[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_\-]+)*)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_\-]+)*)
      | (?P<op>==|!=|<>|<=|>=|=|<|>)
      | (?P<punct>[(),])""",
    re.VERBOSE,
)


@dataclass(frozen=True)
class Token:
    kind: str  # num | str | ref | name | kw | op | punct | end
    text: str
    pos: int
    value: Any = None


def tokenize(text: str, *, field: str | None = None) -> list[Token]:
    """The tokens of ``text`` (keywords case-insensitive), ending with an ``end`` token."""
    if len(text) > MAX_RULE_LENGTH:
        raise RuleError(f"a rule is at most {MAX_RULE_LENGTH} characters, got {len(text)}",
                        rule=text[:80], position=0, field=field)
    out: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            hint = "close the string" if ch in "\"'" else "remove it or quote it as a string"
            raise RuleError(f"unexpected character {ch!r}; {hint}", rule=text, position=pos, field=field)
        kind = m.lastgroup or ""
        s = m.group()
        if kind == "num":
            out.append(Token("num", s, pos, float(s)))
        elif kind == "str":
            body = s[1:-1]
            out.append(Token("str", s, pos, re.sub(r"\\(.)", r"\1", body)))
        elif kind == "name" and s.lower() in _KEYWORDS:
            out.append(Token("kw", s.lower(), pos))
        elif kind == "op":
            out.append(Token("op", _OPS[s], pos))
        elif kind != "ws":
            out.append(Token(kind, s, pos))
        pos = m.end()
    out.append(Token("end", "", len(text)))
    return out


# ---------------------------------------------------------------------- the syntax tree
@dataclass(frozen=True)
class Lit:
    value: Any  # float | str | bool
    pos: int


@dataclass(frozen=True)
class Attr:
    """An item path: ``kind`` from ITEM_PATHS, or "attr" for ``attributes.<key>``."""

    path: str
    kind: str
    pos: int


@dataclass(frozen=True)
class Ref:
    root: str  # item | user | context
    path: str
    pos: int


Operand = Union[Lit, Attr, Ref]


@dataclass(frozen=True)
class Cmp:
    op: str
    left: Operand
    right: Operand
    pos: int


@dataclass(frozen=True)
class In:
    left: Operand
    values: tuple[Operand, ...]
    negated: bool
    pos: int


@dataclass(frozen=True)
class Truth:
    operand: Operand  # a bool item column or a true/false literal


@dataclass(frozen=True)
class Not:
    inner: "Node"


@dataclass(frozen=True)
class BoolOp:
    op: str  # and | or
    parts: tuple["Node", ...]


Node = Union[Cmp, In, Truth, Not, BoolOp]


class _Parser:
    def __init__(self, text: str, field: str | None) -> None:
        self.text = text
        self.field = field
        self.toks = tokenize(text, field=field)
        self.i = 0
        self.depth = 0

    def error(self, message: str, tok: Token | None = None) -> RuleError:
        tok = tok or self.peek()
        return RuleError(message, rule=self.text, position=tok.pos, field=self.field)

    def peek(self) -> Token:
        return self.toks[self.i]

    def take(self) -> Token:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def is_kw(self, word: str) -> bool:
        t = self.peek()
        return t.kind == "kw" and t.text == word

    def expect_punct(self, ch: str, what: str) -> Token:
        t = self.peek()
        if t.kind != "punct" or t.text != ch:
            raise self.error(f"expected {ch!r} {what}, got {_shown(t)}")
        return self.take()

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise self.error("the rule is empty; write a condition such as category == \"shoes\"")
        node = self.parse_or()
        t = self.peek()
        if t.kind != "end":
            raise self.error(f"expected 'and', 'or' or the end of the rule, got {_shown(t)}")
        return node

    def parse_or(self) -> Node:
        parts = [self.parse_and()]
        while self.is_kw("or"):
            self.take()
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else BoolOp("or", tuple(parts))

    def parse_and(self) -> Node:
        parts = [self.parse_not()]
        while self.is_kw("and"):
            self.take()
            parts.append(self.parse_not())
        return parts[0] if len(parts) == 1 else BoolOp("and", tuple(parts))

    def parse_not(self) -> Node:
        if self.is_kw("not"):
            self.take()
            return Not(self.parse_not())
        return self.parse_atom()

    def parse_atom(self) -> Node:
        t = self.peek()
        if t.kind == "punct" and t.text == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.error(f"parentheses nest deeper than {MAX_DEPTH}")
            self.take()
            node = self.parse_or()
            self.expect_punct(")", "to close the parenthesis")
            self.depth -= 1
            return node
        left = self.parse_operand()
        t = self.peek()
        if t.kind == "op":
            self.take()
            right = self.parse_operand()
            return _check_cmp(self, Cmp(t.text, left, right, t.pos))
        negated = False
        if self.is_kw("not") and self.toks[self.i + 1].kind == "kw" and self.toks[self.i + 1].text == "in":
            self.take()
            negated = True
        if self.is_kw("in"):
            at = self.take()
            self.expect_punct("(", "after 'in'")
            values = [self.parse_operand()]
            while self.peek().kind == "punct" and self.peek().text == ",":
                self.take()
                values.append(self.parse_operand())
            self.expect_punct(")", "or ',' in the list")
            return _check_in(self, In(left, tuple(values), negated, at.pos))
        if (isinstance(left, Attr) and left.kind == "bool") or (isinstance(left, Lit) and isinstance(left.value, bool)):
            return Truth(left)
        raise self.error(f"expected a comparison (== != < <= > >=) or 'in' after {self.text[_pos(left):t.pos].strip()!r}, "
                         f"got {_shown(t)}")

    def parse_operand(self) -> Operand:
        t = self.peek()
        if t.kind in ("num", "str"):
            self.take()
            return Lit(t.value, t.pos)
        if t.kind == "kw" and t.text in ("true", "false"):
            self.take()
            return Lit(t.text == "true", t.pos)
        if t.kind == "name":
            self.take()
            return Attr(t.text, _item_path_kind(self, t.text, t), t.pos)
        if t.kind == "ref":
            self.take()
            root, _, path = t.text[1:].partition(".")
            if root not in REF_ROOTS:
                raise self.error(f"unknown reference ${root}; use $item, $user or $context", t)
            if not path:
                raise self.error(f"${root} needs a key, as in ${root}.{'price' if root == 'item' else 'segment'}", t)
            if root == "item":
                _item_path_kind(self, path, t)
            if root == "user" and path.startswith("attributes."):
                path = path[len("attributes."):]
            return Ref(root, path, t.pos)
        raise self.error(f"expected a value (a number, a 'string', an item attribute or a $reference), got {_shown(t)}")


def _shown(t: Token) -> str:
    return "the end of the rule" if t.kind == "end" else repr(t.text)


def _pos(o: Operand) -> int:
    return o.pos


def _item_path_kind(p: _Parser, path: str, tok: Token) -> str:
    if path in ITEM_PATHS:
        return ITEM_PATHS[path]
    head, _, key = path.partition(".")
    if head == "attributes" and key:
        return "attr"
    known = ", ".join([*ITEM_PATHS, "attributes.<key>"])
    raise p.error(f"unknown item attribute {path!r}; known: {known}", tok)


def _kind(o: Operand) -> str:
    if isinstance(o, Attr):
        return o.kind
    if isinstance(o, Lit):
        return "bool" if isinstance(o.value, bool) else "num" if isinstance(o.value, float) else "str"
    return "ref"


def _check_cmp(p: _Parser, c: Cmp) -> Cmp:
    left, right, op = c.left, c.right, c.op
    if not isinstance(left, Attr) and isinstance(right, Attr):  # the item column on the left
        left, right, op = right, left, _FLIP[op]
    c = Cmp(op, left, right, c.pos)
    if not isinstance(left, Attr):
        return c
    kl, kr = left.kind, _kind(right)
    tok = Token("op", op, c.pos)
    if isinstance(right, Attr):
        if not (kl in ("num", "attr") and kr in ("num", "attr")):
            raise p.error(f"{left.path} and {right.path} cannot be compared: two item columns compare only as numbers", tok)
        return c
    if kl in ("set", "bool") and op not in ("==", "!="):
        raise p.error(f"{left.path} supports == and != (and 'in' for category), not {op}", tok)
    if kl == "bool" and kr not in ("bool", "ref"):
        raise p.error(f"{left.path} compares with true or false", tok)
    if kl == "num" and kr in ("str", "bool"):
        raise p.error(f"{left.path} is a number; compare it with a number, not {right.value!r}", tok)
    if kl in ("set", "text") and kr == "bool":
        raise p.error(f"{left.path} is text; compare it with a 'string'", tok)
    return c


def _check_in(p: _Parser, node: In) -> In:
    left = node.left
    if not isinstance(left, Attr):
        raise p.error("the left side of 'in' must be an item attribute (category, price, attributes.<key>, ...)",
                      Token("kw", "in", node.pos))
    for v in node.values:
        if isinstance(v, Attr):
            raise p.error("the list of 'in' holds values ($references, numbers, strings), not item attributes",
                          Token("name", v.path, v.pos))
        if left.kind == "num" and isinstance(v, Lit) and not isinstance(v.value, float):
            raise p.error(f"{left.path} is a number; the list of 'in' must hold numbers", Token("str", "", v.pos))
        if left.kind == "bool":
            raise p.error(f"{left.path} compares with == true or == false, not 'in'", Token("kw", "in", node.pos))
    return node


# ---------------------------------------------------------------------- item columns
class ItemColumns:
    """Per-model item attribute columns (index j = model column j), built once per model and
    catalogue version; attribute columns are made on first use and kept.

    ``attr_keys``/``attr_values``/``attr_items`` are the catalogue's flattened attribute maps.
    """

    def __init__(
        self,
        item_ids: np.ndarray,
        available: np.ndarray,
        price: np.ndarray,
        primary_category: np.ndarray,
        category_names: tuple[str, ...],
        category_mask: Callable[[tuple[str, ...]], np.ndarray],
        numbers: dict[str, np.ndarray],
        attr_keys: np.ndarray,
        attr_values: np.ndarray,
        attr_items: np.ndarray,
        created_us: np.ndarray | None = None,
    ) -> None:
        self.item_ids = item_ids
        self.n_items = len(item_ids)
        self.available = available
        self.price = price
        self.primary_category = primary_category
        self.category_names = category_names
        self.category_mask = category_mask
        self.numbers = numbers  # popularity, trending (age_days too when no created_us is given)
        self._attr_keys, self._attr_values, self._attr_items = attr_keys, attr_values, attr_items
        self.created_us = created_us  # float64 [n_items], nan = unknown: age_days is computed from it live
        self._age: tuple[int, np.ndarray] | None = None
        self._text: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._num: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def age_epoch(self, now: float | None = None) -> int:
        """The AGE_REFRESH_S period ``age_days`` is computed for (0 when ages are fixed numbers)."""
        if self.created_us is None:
            return 0
        return int((time.time() if now is None else now) // AGE_REFRESH_S)

    def age_days(self, now: float | None = None) -> np.ndarray:
        """Days since each item's ``created_at`` (nan = unknown), as of the current AGE_REFRESH_S period."""
        if self.created_us is None:
            return self.numbers.get("age_days", np.full(self.n_items, np.nan))
        epoch = self.age_epoch(now)
        hit = self._age
        if hit is None or hit[0] != epoch:
            age = (epoch * AGE_REFRESH_S * 1e6 - self.created_us) / 86_400e6
            age.flags.writeable = False
            hit = self._age = (epoch, age)
        return hit[1]

    def numeric(self, path: str) -> np.ndarray:
        """float64 [n_items] (nan = unknown) of a num path or of ``attributes.<key>`` read as numbers."""
        if path == "price":
            return self.price
        if path == "age_days":
            return self.age_days()
        if path in self.numbers:
            return self.numbers[path]
        hit = self._num.get(path)
        if hit is None:
            values, items = self._attr(path)
            out = np.full(self.n_items, np.nan)
            if len(values):
                arr = pa.array(values, pa.string())
                ok = pc.match_substring_regex(arr, r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$").to_numpy(
                    zero_copy_only=False)
                if ok.any():
                    out[items[ok]] = pc.cast(pc.utf8_trim_whitespace(arr.filter(pa.array(ok))), pa.float64()).to_numpy()
            with self._lock:
                hit = self._num.setdefault(path, out)
        return hit

    def text(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        """(codes int32 [n_items], sorted vocabulary) of ``item_id`` or ``attributes.<key>``; code -1 = missing."""
        if path == "item_id":
            hit = self._text.get(path)
            if hit is None:
                hit = self._text.setdefault(path, (np.arange(self.n_items, dtype=np.int32), self.item_ids))
            return hit
        hit = self._text.get(path)
        if hit is None:
            values, items = self._attr(path)
            codes = np.full(self.n_items, -1, dtype=np.int32)
            vocab, inv = np.unique(values.astype(str), return_inverse=True) if len(values) else (np.zeros(0, str), np.zeros(0, np.int64))
            codes[items] = inv
            with self._lock:
                hit = self._text.setdefault(path, (codes, vocab))
        return hit

    def _attr(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        key = path.partition(".")[2]
        sel = self._attr_keys == key
        return self._attr_values[sel], self._attr_items[sel]

    def group_codes(self, by: str) -> np.ndarray:
        """int codes [n_items] (-1 = none) for a diversity cap: ``category`` (primary) or ``attributes.<key>``."""
        if by in ("category", "categories"):
            return self.primary_category
        return self.text(by)[0]


# ---------------------------------------------------------------------- evaluation
Env = dict[str, Any]  # {"item": {path: value}, "user": {key: str}, "context": {key: str}}


def _resolve(o: Operand, env: Env) -> Any:
    if isinstance(o, Lit):
        return o.value
    assert isinstance(o, Ref)
    scope = env.get(o.root) or {}
    return scope.get(o.path)


def _as_float(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    try:
        f = float(str(v).strip())
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def _as_text(v: Any) -> str | None:
    if v is None or isinstance(v, bool):
        return None
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _numcmp(col: np.ndarray, op: str, v: float) -> np.ndarray:
    if op == "==":
        return col == v
    if op == "!=":
        return ~(col == v)
    if op == "<":
        return col < v
    if op == "<=":
        return col <= v
    if op == ">":
        return col > v
    return col >= v


def _textcmp(codes: np.ndarray, vocab: np.ndarray, op: str, s: str) -> np.ndarray:
    # vocab is sorted, so ordering on text is ordering on codes
    lo = int(np.searchsorted(vocab, s, side="left"))
    found = lo < len(vocab) and vocab[lo] == s
    present = codes >= 0
    if op in ("==", "!="):
        eq = codes == lo if found else np.zeros(len(codes), bool)
        return eq if op == "==" else ~eq
    hi = lo + 1 if found else lo
    if op == "<":
        return present & (codes < lo)
    if op == "<=":
        return present & (codes < hi)
    if op == ">":
        return present & (codes >= hi)
    return present & (codes >= lo)


class Rule:
    """A parsed, checked rule. ``mask(cols, ids, env)`` is the rule over item columns ``ids``
    (int64 array; None = every item) as a bool array, computed column-wise."""

    def __init__(self, text: str, node: Node) -> None:
        self.text = text
        self.node = node
        self.refs = frozenset(_refs(node))
        self.paths = frozenset(_paths(node))  # item paths read (``age_days`` makes a mask time-dependent)

    def __repr__(self) -> str:
        return f"Rule({self.text!r})"

    @property
    def constant(self) -> bool:
        """True when the rule reads no $reference (its full mask can be cached per catalogue)."""
        return not self.refs

    def mask(self, cols: ItemColumns, ids: np.ndarray | None, env: Env | None = None) -> np.ndarray:
        n = cols.n_items if ids is None else len(ids)
        out = _eval(self.node, cols, ids, env or {}, n)
        return np.broadcast_to(out, (n,)).copy() if np.ndim(out) == 0 else out


def _refs(node: Any) -> set[str]:
    if isinstance(node, Ref):
        return {node.root}
    if isinstance(node, (Lit, Attr)):
        return set()
    if isinstance(node, Cmp):
        return _refs(node.left) | _refs(node.right)
    if isinstance(node, In):
        return _refs(node.left).union(*(_refs(v) for v in node.values))
    if isinstance(node, Truth):
        return _refs(node.operand)
    if isinstance(node, Not):
        return _refs(node.inner)
    return set().union(*(_refs(p) for p in node.parts))


def _paths(node: Any) -> set[str]:
    if isinstance(node, Attr):
        return {node.path}
    if isinstance(node, (Lit, Ref)):
        return set()
    if isinstance(node, Cmp):
        return _paths(node.left) | _paths(node.right)
    if isinstance(node, In):
        return _paths(node.left)
    if isinstance(node, Truth):
        return _paths(node.operand)
    if isinstance(node, Not):
        return _paths(node.inner)
    return set().union(*(_paths(p) for p in node.parts))


def _take(col: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
    return col if ids is None else col[ids]


def _eval(node: Node, cols: ItemColumns, ids: np.ndarray | None, env: Env, n: int) -> Any:
    if isinstance(node, BoolOp):
        acc = _eval(node.parts[0], cols, ids, env, n)
        for part in node.parts[1:]:
            nxt = _eval(part, cols, ids, env, n)
            acc = (acc & nxt) if node.op == "and" else (acc | nxt)
        return acc
    if isinstance(node, Not):
        return ~np.asarray(_eval(node.inner, cols, ids, env, n), dtype=bool)
    if isinstance(node, Truth):
        o = node.operand
        return np.bool_(o.value) if isinstance(o, Lit) else _take(cols.available, ids)
    if isinstance(node, In):
        return _eval_in(node, cols, ids, env, n)
    return _eval_cmp(node, cols, ids, env, n)


def _eval_cmp(c: Cmp, cols: ItemColumns, ids: np.ndarray | None, env: Env, n: int) -> Any:
    left, op = c.left, c.op
    if not isinstance(left, Attr):  # two scalars: one answer for every item
        a, b = _resolve(left, env), _resolve(c.right, env)
        fa, fb = _as_float(a), _as_float(b)
        if fa is not None and fb is not None:
            return np.bool_(_numcmp(np.array([fa]), op, fb)[0])
        ta, tb = _as_text(a), _as_text(b)
        if ta is None or tb is None:
            return np.bool_(op == "!=")
        return np.bool_({"==": ta == tb, "!=": ta != tb, "<": ta < tb, "<=": ta <= tb, ">": ta > tb, ">=": ta >= tb}[op])
    right = c.right
    if isinstance(right, Attr):
        return _numcmp(_take(cols.numeric(left.path), ids), op, _take(cols.numeric(right.path), ids))  # type: ignore[arg-type]
    v = _resolve(right, env)
    kind = left.kind
    if kind == "bool":
        want = v if isinstance(v, bool) else (str(v).strip().lower() in ("true", "1", "yes") if v is not None else None)
        if want is None:
            return np.bool_(op == "!=")
        col = _take(cols.available, ids)
        return col == want if op == "==" else col != want
    if kind == "set":
        s = _as_text(v)
        m = _take(cols.category_mask((s,)), ids) if s is not None else np.zeros(n, bool)
        return m if op == "==" else ~m
    numeric = kind == "num" or (kind == "attr" and (isinstance(v, float) or (op not in ("==", "!=") and _as_float(v) is not None)))
    if numeric:
        f = _as_float(v)
        if f is None:
            return np.bool_(op == "!=")
        return _numcmp(_take(cols.numeric(left.path), ids), op, f)
    s = _as_text(v)
    if s is None:
        return np.bool_(op == "!=")
    codes, vocab = cols.text(left.path)
    return _textcmp(_take(codes, ids), vocab, op, s)


def _eval_in(node: In, cols: ItemColumns, ids: np.ndarray | None, env: Env, n: int) -> Any:
    left = node.left
    assert isinstance(left, Attr)
    values = [_resolve(v, env) for v in node.values]
    if left.kind == "set":
        names = tuple(t for t in (_as_text(v) for v in values) if t is not None)
        m = _take(cols.category_mask(names), ids) if names else np.zeros(n, bool)
    elif left.kind == "num" or (left.kind == "attr" and all(isinstance(v, float) for v in values)):
        fs = [f for f in (_as_float(v) for v in values) if f is not None]
        m = np.isin(_take(cols.numeric(left.path), ids), np.array(fs, dtype=np.float64)) if fs else np.zeros(n, bool)
    else:
        codes, vocab = cols.text(left.path)
        want = np.array([t for t in (_as_text(v) for v in values) if t is not None], dtype=str)
        hit = lookup(vocab, want) if len(vocab) and len(want) else np.zeros(0, np.int64)
        hit = hit[hit >= 0]
        m = np.isin(_take(codes, ids), hit) if len(hit) else np.zeros(n, bool)
    return ~m if node.negated else m


_CACHE: dict[str, Rule] = {}
_CACHE_MAX = 4096


def parse_rule(text: str, *, field: str | None = None) -> Rule:
    """Parse and check ``text``; :class:`~scalerec.errors.RuleError` (with the position) when bad.
    Parsed rules are memoised by text (they are immutable)."""
    if not isinstance(text, str):
        raise RuleError(f"a rule is text, got {type(text).__name__}", rule=str(text)[:80], position=0, field=field)
    hit = _CACHE.get(text)
    if hit is not None:
        return hit
    rule = Rule(text, _Parser(text, field).parse())
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    _CACHE[text] = rule
    return rule
