"""The DARTS genotype: per cell type, two (op, input) pairs for each of the 4 intermediate nodes.

Node numbering is the DARTS one: 0 = c_{k-2}, 1 = c_{k-1}, 2..5 = intermediate nodes; the pairs
are listed node by node, so pairs 2i and 2i+1 feed node i+2. Two stable serialisations, both
round-tripping: the DARTS text form

    Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=[2, 3, 4, 5], reduce=[...], reduce_concat=[2, 3, 4, 5])

(which is also what the research code prints, so genotypes from papers paste in directly; a
`range(2, 6)` concat is accepted) and a JSON object with the same four keys.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..common.errors import NasflowError
from .darts_ops import ALL_OPS

STEPS = 4                      # intermediate nodes per cell
FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")
CELLS = ("normal", "reduce")
TEXT_FORM = ("Genotype(normal=[('op', input), ...], normal_concat=[2, 3, 4, 5], "
             "reduce=[('op', input), ...], reduce_concat=[2, 3, 4, 5])")

Pair = tuple[str, int]


@dataclass(frozen=True, repr=False)
class Genotype:
    normal: tuple[Pair, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Pair, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        for cell in CELLS:
            object.__setattr__(self, cell, _check_cell(cell, getattr(self, cell)))
            object.__setattr__(self, f"{cell}_concat", _check_concat(cell, getattr(self, f"{cell}_concat")))

    def cell(self, kind: str) -> tuple[tuple[Pair, ...], tuple[int, ...]]:
        """(pairs, concat) of the "normal" or "reduce" cell."""
        return getattr(self, kind), getattr(self, f"{kind}_concat")

    def ops(self) -> set[str]:
        return {op for cell in CELLS for op, _ in getattr(self, cell)}

    def to_text(self) -> str:
        def pairs(cell):
            return "[" + ", ".join(f"({op!r}, {j})" for op, j in cell) + "]"

        return (f"Genotype(normal={pairs(self.normal)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={pairs(self.reduce)}, reduce_concat={list(self.reduce_concat)})")

    __str__ = __repr__ = to_text

    def to_dict(self) -> dict[str, list]:
        return {"normal": [[op, j] for op, j in self.normal], "normal_concat": list(self.normal_concat),
                "reduce": [[op, j] for op, j in self.reduce], "reduce_concat": list(self.reduce_concat)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def _check_cell(cell: str, pairs: Any) -> tuple[Pair, ...]:
    if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Iterable):
        raise NasflowError(f"genotype {cell}: expected a list of (op, input) pairs, got {pairs!r}")
    out: list[Pair] = []
    for pair in pairs:
        if (isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2
                or not isinstance(pair[0], str) or not _is_int(pair[1])):
            raise NasflowError(f"genotype {cell}: {pair!r} is not an (op name, input node) pair")
        out.append((pair[0], int(pair[1])))
    expected = 2 * STEPS
    if len(out) != expected:
        # pairs go two by two to nodes 2, 3, ...; a shortfall or surplus lands on the last node
        node = 1 + min(max(len(out) - 1, 0) // 2 + 1, STEPS)
        got = len(out) - 2 * (node - 2)
        raise NasflowError(f"genotype {cell}: node {node} has {got} input(s); every intermediate node (2-{STEPS + 1}) "
                           f"takes exactly two, so a cell lists {expected} (op, input) pairs, got {len(out)}")
    for k, (op, j) in enumerate(out):
        node = 2 + k // 2
        if not 0 <= j < node:
            raise NasflowError(f"genotype {cell}: input {j} of node {node} ({op!r}) is out of range; "
                               f"node {node} can take inputs 0-{node - 1}")
    return tuple(out)


def _check_concat(cell: str, concat: Any) -> tuple[int, ...]:
    try:
        out = tuple(concat)
    except TypeError:
        raise NasflowError(f"genotype {cell}_concat: expected a list of node indices, got {concat!r}") from None
    if not out or not all(_is_int(n) and 0 <= n <= STEPS + 1 for n in out) or len(set(out)) != len(out):
        raise NasflowError(f"genotype {cell}_concat {list(out)!r}: expected distinct node indices in 0-{STEPS + 1}, "
                           "e.g. [2, 3, 4, 5]")
    return tuple(int(n) for n in out)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_ops(genotype: Genotype, ops: Sequence[str] = ALL_OPS) -> Genotype:
    """Every op of `genotype` must be one of `ops` (the space's ops)."""
    for cell in CELLS:
        for k, (op, j) in enumerate(getattr(genotype, cell)):
            if op not in ops:
                raise NasflowError(f"genotype {cell}: op {op!r} (node {2 + k // 2}, input {j}) is not in the space; "
                                   f"valid ops: {', '.join(ops)}")
    return genotype


def parse_genotype(text: str, ops: Sequence[str] = ALL_OPS) -> Genotype:
    """The DARTS text form -> Genotype; any problem is a NasflowError that names it."""
    bad = f"malformed genotype {text!r}; expected the form {TEXT_FORM}"
    try:
        call = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, AttributeError):
        raise NasflowError(bad) from None
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Genotype"):
        raise NasflowError(bad)
    if len(call.args) > len(FIELDS) or any(k.arg not in FIELDS for k in call.keywords):
        raise NasflowError(bad)
    values = dict(zip(FIELDS, call.args)) | {k.arg: k.value for k in call.keywords}
    missing = [f for f in FIELDS if f not in values]
    if missing:
        raise NasflowError(f"genotype {text!r} lacks {', '.join(missing)}; expected the form {TEXT_FORM}")
    return check_ops(Genotype(**{f: _literal(values[f], bad) for f in FIELDS}), ops)


def _literal(node: ast.expr, bad: str) -> Any:
    # `range(a, b)` is how several research codebases write the concat list
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
            and not node.keywords and 1 <= len(node.args) <= 3:
        try:
            return list(range(*(_literal(a, bad) for a in node.args)))
        except TypeError:
            raise NasflowError(bad) from None
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        raise NasflowError(bad) from None


def genotype_from_json(data: str | dict, ops: Sequence[str] = ALL_OPS) -> Genotype:
    """The JSON form (a string or an already decoded dict) -> Genotype."""
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as e:
            raise NasflowError(f"genotype JSON does not parse: {e}") from None
    if not isinstance(data, dict) or set(data) != set(FIELDS):
        raise NasflowError(f"genotype JSON must be an object with exactly the keys {', '.join(FIELDS)}")
    return check_ops(Genotype(**{f: data[f] for f in FIELDS}), ops)


# The second-order DARTS cell of Liu et al. (ICLR 2019), genotypes.py `DARTS_V2`.
DARTS_V2 = Genotype(
    normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)),
    normal_concat=(2, 3, 4, 5),
    reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)),
    reduce_concat=(2, 3, 4, 5),
)
