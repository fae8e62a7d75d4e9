"""HEP-NAS partitioning (METHODS.md 2.3.2-2.3.3): split each edge's ops into two groups by min-cut on
the gradient-matching distances, group the edges into hierarchies (the incoming edges of one
intermediate node), and spawn one child supernet per element of the Cartesian product of the
groups of a hierarchy's edges.

Paper Eq. 2 picks the group G minimising the gradient-matching similarity across the cut,
sum_{o_i in G, o_j not in G} GM(o_i, o_j). The code minimises the distance within the groups,
sum_{pairs inside G} Dbar + sum_{pairs inside O\\G} Dbar, over a fixed family of candidate groups:
  nb201  every pair G = {a, b} against the other ops (2|3 for 5 ops);
  darts  every subset G with 2 <= |G| <= floor(|O|/2).
With fixed group sizes (nb201) both objectives pick the same split, since GM = 1 - Dbar.
Ties keep the first candidate in enumeration order (sizes ascending, then lexicographic).
Every op the distance matrix holds takes part, `none` included: the group sizes follow from |O|.

Each child draws its own batches, as the authors' sub-supernets iterate their own data loaders:
its generator is seeded from (run seed, split level, child index) through `child_seed`, so a run
(and a resumed run) gives every child the same stream again.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Collection, Iterator, Sequence

import numpy as np
import torch

from ..common.errors import NasflowError
from ..scores.gradient_matching import EdgeDistances
from ..spaces import Space, darts, nb201
from ..supernet.state import SupernetState

EdgeRef = tuple[str, int]                  # (cell type, edge index)
Groups = tuple[tuple[int, ...], tuple[int, ...]]
SPLIT_RULES = ("nb201", "darts")
GRANULARITIES = ("hierarchy", "edge")
ORDERS = ("node", "reverse", "random")


@dataclass(frozen=True)
class EdgeSplit:
    """The two op groups (alpha columns) of one edge; group 0 is the candidate G, group 1 its complement."""
    cell_type: str
    edge: int
    groups: Groups
    within_distance: float                 # the minimised cost


# --------------------------------------------------------------------------- min-cut


def candidate_groups(n_ops: int, rule: str) -> Iterator[tuple[int, ...]]:
    """The candidate groups G (positions 0..n_ops-1) in the order the authors' code tries them."""
    if rule == "nb201":
        if n_ops < 3:
            raise NasflowError(f"the nb201 split rule (a pair against the rest) needs at least 3 ops, got {n_ops}")
        yield from itertools.combinations(range(n_ops), 2)
    elif rule == "darts":
        if n_ops < 2:
            raise NasflowError(f"an edge with {n_ops} op(s) cannot be split into two groups")
        # the code's sizes are 2..floor(n/2); with 2 or 3 ops that range is empty, so singletons are allowed
        smallest = min(2, n_ops // 2)
        for size in range(smallest, n_ops // 2 + 1):
            yield from itertools.combinations(range(n_ops), size)
    else:
        raise NasflowError(f"unknown split rule {rule!r}; valid rules: {', '.join(SPLIT_RULES)}")


def within_group_distance(distance: torch.Tensor, group: Sequence[int]) -> float:
    """Sum of Dbar over the unordered pairs inside `group`."""
    return float(sum(distance[i, j] for i, j in itertools.combinations(group, 2)))


def min_cut_split(distance: torch.Tensor, rule: str, ops: Sequence[int] | None = None,
                  not_alone: Collection[int] = ()) -> tuple[Groups, float]:
    """Exhaustive two-group split of one edge: the candidate G minimising the within-group distance
    of G plus that of its complement. Returns ((G, O\\G), cost), groups as entries of `ops`
    (default: matrix positions). Splits that leave an op of `not_alone` (entries of `ops`) alone
    in a group are not candidates (only reachable with 2..3 ops under the darts rule)."""
    n = distance.shape[0]
    if distance.shape != (n, n):
        raise NasflowError(f"a distance matrix must be square, got shape {tuple(distance.shape)}")
    ops = tuple(range(n)) if ops is None else tuple(ops)
    if len(ops) != n:
        raise NasflowError(f"{len(ops)} op ids for a {n}x{n} distance matrix")
    d = distance.detach().double().cpu()
    best: tuple[tuple[int, ...], tuple[int, ...]] | None = None
    best_cost = float("inf")
    for group in candidate_groups(n, rule):
        rest = tuple(i for i in range(n) if i not in group)
        if any(len(g) == 1 and ops[g[0]] in not_alone for g in (group, rest)):
            continue
        cost = within_group_distance(d, group) + within_group_distance(d, rest)
        if cost < best_cost:               # strict: the first minimum wins ties, as in the code
            best, best_cost = (group, rest), cost
    if best is None:
        raise NasflowError(f"no admissible two-group split of the ops {ops}: "
                           f"{sorted(not_alone)} may not be left alone in a group")
    return (tuple(ops[i] for i in best[0]), tuple(ops[i] for i in best[1])), best_cost


def split_edges(distances: Sequence[EdgeDistances], rule: str, not_alone: Collection[int] = ()) -> list[EdgeSplit]:
    """The min-cut split of every edge whose distance matrix is given."""
    splits = []
    for d in distances:
        groups, cost = min_cut_split(d.distance, rule, d.ops, not_alone)
        splits.append(EdgeSplit(d.cell_type, d.edge, groups, cost))
    return splits


# --------------------------------------------------------------------------- hierarchies


def hierarchies(space: Space) -> list[list[int]]:
    """h_k for every intermediate node k in node order: the indices of the edges ending in k.
    NB201: [[0], [1, 2], [3, 4, 5]]; DARTS: [[0, 1], [2, 3, 4], [5..8], [9..13]]."""
    if space.name == "nb201":
        targets = [i for i, _ in nb201.EDGES]
        nodes = range(1, nb201.NUM_NODES)
    elif space.name == "darts":
        targets = list(darts.EDGE_NODE)
        nodes = range(2, 2 + darts.STEPS)
    else:
        raise NasflowError(f"no hierarchies defined for the space {space.name!r}")
    return [[e for e, node in enumerate(targets) if node == k] for k in nodes]


def default_split_cell_types(space: Space) -> tuple[str, ...]:
    """The cell types the authors' code splits: the NB201 cell; in DARTS the normal cell only
    (its split edge ids are always below 14, METHODS.md 2.3.3)."""
    return ("normal",) if space.name == "darts" else tuple(space.cell_types)


def split_plan(space: Space, granularity: str = "hierarchy", order: str = "node", seed: int | None = None,
               levels: int | None = None, cell_types: Sequence[str] | None = None) -> list[tuple[EdgeRef, ...]]:
    """The sequence of split levels; each level is the edges split together (their groups' product
    gives the children).

    granularity  hierarchy: one level per (node, cell type), the paper's HEP; edge: one level per edge
    order        node: node (= edge index) order; reverse; random: a permutation drawn from `seed`
    levels       split only the first `levels` levels of that order (paper Table 8); None: all
    cell_types   which cell types are split; None: default_split_cell_types(space)
    Levels of several cell types go node by node: node k of every listed type before node k+1."""
    if granularity not in GRANULARITIES:
        raise NasflowError(f"unknown split granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    if order not in ORDERS:
        raise NasflowError(f"unknown split order {order!r}; valid: {', '.join(ORDERS)}")
    types = default_split_cell_types(space) if cell_types is None else tuple(cell_types)
    for kind in types:
        if kind not in space.cell_types:
            raise NasflowError(f"unknown cell type {kind!r} for the {space.name} space; "
                               f"valid: {', '.join(space.cell_types)}")
    plan: list[tuple[EdgeRef, ...]] = []
    for node_edges in hierarchies(space):
        for kind in types:
            if granularity == "hierarchy":
                plan.append(tuple((kind, e) for e in node_edges))
            else:
                plan.extend(((kind, e),) for e in node_edges)
    if order == "reverse":
        plan.reverse()
    elif order == "random":
        if seed is None:
            raise NasflowError("a random split order needs a seed")
        plan = [plan[i] for i in np.random.default_rng(seed).permutation(len(plan))]
    if levels is not None:
        if not 1 <= levels <= len(plan):
            raise NasflowError(f"levels must be between 1 and {len(plan)}, got {levels}")
        plan = plan[:levels]
    return plan


# --------------------------------------------------------------------------- children

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """One SplitMix64 step: a bijective, well-mixing map of 64-bit integers."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def child_seed(seed: int, level: int, index: int) -> int:
    """The generator seed of child `index` of split level `level` in the run seeded `seed`:
    SplitMix64 folded over the three integers (pure integer arithmetic, the same in every process
    and on every platform; distinct inputs give unrelated streams)."""
    x = 0
    for value in (seed, level, index):
        x = _splitmix64(x ^ (int(value) & _MASK64))
    return x


def children_masks(parent_mask: dict[str, torch.Tensor],
                   splits: Sequence[EdgeSplit]) -> list[dict[str, torch.Tensor]]:
    """One mask per element of prod_e {G_e, O\\G_e}, in itertools.product order over the group
    index (0 = G_e): on each split edge the chosen group ANDed with the parent's row, every other
    row as in the parent."""
    edges = [(s.cell_type, s.edge) for s in splits]
    if len(set(edges)) != len(edges):
        raise NasflowError(f"an edge appears twice in one split level: {edges}")
    masks = []
    for choice in itertools.product(range(2), repeat=len(splits)):
        mask = {k: m.clone() for k, m in parent_mask.items()}
        for split, g in zip(splits, choice):
            row = mask[split.cell_type][split.edge]
            in_group = torch.zeros_like(row)
            in_group[list(split.groups[g])] = True
            mask[split.cell_type][split.edge] = row & in_group
            if not mask[split.cell_type][split.edge].any():
                raise NasflowError(f"group {split.groups[g]} of edge {split.edge} ({split.cell_type}) "
                                   "holds no op alive in the parent")
        masks.append(mask)
    return masks


def spawn_child(parent: SupernetState, mask: dict[str, torch.Tensor],
                generator_seed: int | None = None) -> SupernetState:
    """A full deep copy of `parent` (weights and BN statistics, alpha, both optimizers with their
    moments, scheduler, generator state, epoch, history) with its mask replaced by `mask`.
    The copy is taken in one pass, so the child's optimizers and scheduler point at the child's
    own tensors. With `generator_seed` the child's generator is reseeded with it and the child
    begins its own pass over D_tr at its first batch (its own data loader); without it the child
    continues the parent's stream (an exact copy)."""
    if set(mask) != set(parent.mask):
        raise NasflowError(f"child mask cell types {sorted(mask)} differ from the parent's {sorted(parent.mask)}")
    for k, m in mask.items():
        if m.shape != parent.mask[k].shape:
            raise NasflowError(f"child mask for {k!r} has shape {tuple(m.shape)}, "
                               f"the parent's {tuple(parent.mask[k].shape)}")
    # torch's probe of optimizer-before-scheduler order is not copied: a child of a state whose
    # scheduler never stepped gets one harmless warning at its first scheduler step
    child = copy.deepcopy(parent)
    child.mask = {k: m.detach().clone().bool().to(parent.mask[k].device) for k, m in mask.items()}
    if generator_seed is not None:
        child.generator.manual_seed(generator_seed)
        train_pass = getattr(child, "train_pass", None)
        if train_pass is not None:          # what the parent left of its pass is not the child's
            child.train_pass = type(train_pass)()
    return child


def spawn_children(parent: SupernetState, splits: Sequence[EdgeSplit], *, seed: int | None = None,
                   level: int = 0) -> list[SupernetState]:
    """The 2^len(splits) children of one split level, in children_masks order; child m draws its
    batches from its own generator, seeded child_seed(seed, level, m). `seed` is the run seed
    (None: the seed the parent's generator was started from)."""
    if seed is None:
        seed = parent.generator.initial_seed()
    return [spawn_child(parent, mask, child_seed(seed, level, m))
            for m, mask in enumerate(children_masks(parent.mask, splits))]
