"""The DARTS space: op sets, the search supernet, the genotype parse and its text/JSON forms."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline_steps.common.errors import NasflowError
from pipeline_steps.spaces.cell_plot import plot_genotype
from pipeline_steps.spaces.darts import (EDGE_INPUT, EDGE_NODE, NUM_EDGES, OP_SETS, edge_ops, initial_mask, make_space,
                                         space_ops)
from pipeline_steps.spaces.darts_ops import NoiseOp
from pipeline_steps.spaces.genotype import DARTS_V2, Genotype, genotype_from_json, parse_genotype
from pipeline_steps.spaces.ops import Zero
from pipeline_steps.supernet.state import mixing_weights

# genotypes.py of the DARTS code, printed as the namedtuple repr
DARTS_V2_TEXT = ("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), "
                 "('sep_conv_3x3', 1), ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), "
                 "('dil_conv_3x3', 2)], normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), "
                 "('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
                 "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")

TINY = {"channels": 4, "layers": 5}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: thread start-up costs more than the work


def edge(node: int, src: int) -> int:
    return next(e for e in range(NUM_EDGES) if EDGE_NODE[e] == node and EDGE_INPUT[e] == src)


def active_of(mask: dict) -> dict:
    return {k: [torch.nonzero(r).flatten().tolist() for r in m] for k, m in mask.items()}


# --------------------------------------------------------------------------- derive


def test_edge_layout_is_the_darts_one():
    assert [EDGE_NODE.count(n) for n in (2, 3, 4, 5)] == [2, 3, 4, 5]
    assert [e for e in range(NUM_EDGES) if EDGE_NODE[e] == 4] == [5, 6, 7, 8]
    assert EDGE_INPUT[9:] == (0, 1, 2, 3, 4)


def test_parse_picks_expected_edges_and_ops_ignoring_none_and_masked_ops():
    space = make_space({"op_set": "darts", **TINY})
    ops = list(space.ops)
    w = torch.full((NUM_EDGES, len(ops)), 0.01)
    mask = torch.ones_like(w, dtype=torch.bool)

    def put(node, src, op, value):
        w[edge(node, src), ops.index(op)] = value

    put(2, 0, "none", 0.9)              # `none` is the largest weight in the whole node: ignored
    put(2, 0, "sep_conv_3x3", 0.05)
    put(2, 1, "dil_conv_5x5", 0.2)
    put(3, 0, "avg_pool_3x3", 0.3)
    put(3, 1, "skip_connect", 0.1)
    put(3, 2, "sep_conv_5x5", 0.8)      # strongest op of node 3, but masked: never picked
    mask[edge(3, 2), ops.index("sep_conv_5x5")] = False
    put(3, 2, "max_pool_3x3", 0.05)
    put(4, 0, "none", 0.99)
    put(4, 1, "dil_conv_3x3", 0.35)
    put(4, 3, "sep_conv_3x3", 0.4)
    put(5, 4, "max_pool_3x3", 0.6)
    put(5, 0, "skip_connect", 0.2)
    reduce = torch.full_like(w, 0.01)
    for node in range(2, 6):
        reduce[edge(node, 1), ops.index("max_pool_3x3")] = 0.5
        reduce[edge(node, node - 1), ops.index("skip_connect")] = 0.3 if node > 2 else 0.4
    reduce[edge(2, 0), ops.index("skip_connect")] = 0.4
    weights = {"normal": w, "reduce": reduce}
    masks = {"normal": mask, "reduce": torch.ones_like(mask)}
    g = space.derive(weights, masks, False)
    assert g.normal == (("dil_conv_5x5", 1), ("sep_conv_3x3", 0),
                        ("avg_pool_3x3", 0), ("skip_connect", 1),
                        ("sep_conv_3x3", 3), ("dil_conv_3x3", 1),
                        ("max_pool_3x3", 4), ("skip_connect", 0))
    assert g.reduce == (("max_pool_3x3", 1), ("skip_connect", 0),
                        ("max_pool_3x3", 1), ("skip_connect", 2),
                        ("max_pool_3x3", 1), ("skip_connect", 3),
                        ("max_pool_3x3", 1), ("skip_connect", 4))
    assert g.normal_concat == g.reduce_concat == (2, 3, 4, 5)
    assert space.derive(weights, masks, True) == g   # allow_none is ignored by the DARTS parse


@pytest.mark.parametrize("op_set", list(OP_SETS))
def test_random_alphas_derive_two_distinct_inputs_per_node_from_each_edges_candidates(op_set):
    space = make_space({"op_set": op_set, **TINY})
    mask = initial_mask(op_set)
    per_edge = edge_ops(op_set)
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        weights = {k: mixing_weights(torch.randn(m.shape, generator=gen), m, "softmax") for k, m in mask.items()}
        g = space.derive(weights, mask, True)
        for kind in ("normal", "reduce"):
            pairs, _ = g.cell(kind)
            assert len(pairs) == 8
            for node in range(2, 6):
                (op_a, a), (op_b, b) = pairs[2 * (node - 2): 2 * (node - 2) + 2]
                assert a != b and 0 <= a < node and 0 <= b < node
                assert op_a in per_edge[kind][edge(node, a)] and op_b in per_edge[kind][edge(node, b)]
                assert "none" not in (op_a, op_b)


def test_derive_fails_clearly_when_a_node_has_one_usable_edge():
    space = make_space({"op_set": "darts", **TINY})
    mask = initial_mask("darts")
    mask["reduce"][[edge(2, 0)]] = False
    mask["reduce"][edge(2, 1)] = False
    mask["reduce"][edge(2, 1), 0] = True          # only `none` left on edge 1 -> not usable
    weights = {k: mixing_weights(torch.zeros(m.shape), m, "softmax") for k, m in mask.items()}
    with pytest.raises(NasflowError, match="reduce cell: node 2"):
        space.derive(weights, mask, False)


# --------------------------------------------------------------------------- genotype forms


def test_text_and_json_round_trip():
    assert DARTS_V2.to_text() == DARTS_V2_TEXT == str(DARTS_V2) == repr(DARTS_V2)
    assert parse_genotype(DARTS_V2_TEXT) == DARTS_V2
    assert genotype_from_json(DARTS_V2.to_json()) == DARTS_V2
    assert genotype_from_json(DARTS_V2.to_dict()) == DARTS_V2
    ranged = DARTS_V2_TEXT.replace("[2, 3, 4, 5]", "range(2, 6)")   # how darts-pt prints the concat
    assert parse_genotype(ranged) == DARTS_V2
    assert parse_genotype(parse_genotype(ranged).to_text()).to_text() == DARTS_V2_TEXT


def _with_normal(pairs) -> str:
    body = "[" + ", ".join(f"({op!r}, {j})" for op, j in pairs) + "]"
    return DARTS_V2_TEXT.replace(DARTS_V2_TEXT[DARTS_V2_TEXT.index("["):DARTS_V2_TEXT.index("]") + 1], body, 1)


@pytest.mark.parametrize("pairs, message", [
    (DARTS_V2.normal[:7], r"normal: node 5 has 1 input"),
    (DARTS_V2.normal + (("sep_conv_3x3", 4),), r"normal: node 5 has 3 input"),
    (DARTS_V2.normal[:6] + (("sep_conv_3x3", 5), ("skip_connect", 0)), r"input 5 of node 5 .* out of range"),
    ((("sep_conv_3x3", 2),) + DARTS_V2.normal[1:], r"input 2 of node 2 .* out of range"),
    (DARTS_V2.normal[:3] + (("conv_7x1_1x7", 1),) + DARTS_V2.normal[4:],
     r"op 'conv_7x1_1x7' \(node 3, input 1\) is not in the space; valid ops: none, noise, max_pool_3x3"),
])
def test_bad_genotypes_are_rejected_naming_the_problem(pairs, message):
    with pytest.raises(NasflowError, match=message):
        parse_genotype(_with_normal(pairs))
    with pytest.raises(NasflowError, match=message):
        genotype_from_json({**DARTS_V2.to_dict(), "normal": [list(p) for p in pairs]})


def test_op_validity_is_relative_to_the_space_and_malformed_text_is_explained():
    with pytest.raises(NasflowError, match="'dil_conv_3x3' .* valid ops: skip_connect, sep_conv_3x3"):
        parse_genotype(DARTS_V2_TEXT, ops=space_ops("s2"))
    for text in ("Genotype(normal=[", "Foo(normal=[])", "normal=[('sep_conv_3x3', 0)]", "Genotype(normal=x, normal_concat=[2], reduce=[], reduce_concat=[2])"):
        with pytest.raises(NasflowError, match="malformed genotype"):
            parse_genotype(text)
    with pytest.raises(NasflowError, match="lacks reduce_concat"):
        parse_genotype(DARTS_V2_TEXT.replace(", reduce_concat=[2, 3, 4, 5]", ""))
    with pytest.raises(NasflowError, match="exactly the keys"):
        genotype_from_json('{"normal": []}')
    with pytest.raises(NasflowError, match="normal_concat"):
        Genotype(DARTS_V2.normal, (2, 9), DARTS_V2.reduce, (2, 3, 4, 5))


# --------------------------------------------------------------------------- supernet


def test_search_supernet_matches_the_reference_parameter_count():
    # the DARTS / darts-pt search Network(C=16, layers=8, 10 classes) logs "param size = 1.930618MB"
    for op_set in ("darts", "darts_no_none"):
        model = make_space({"op_set": op_set}).build(10)
        assert sum(p.numel() for p in model.parameters()) == 1_930_618


def test_op_sets_and_initial_mask():
    assert space_ops("darts") == ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                                  "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
    assert space_ops("darts_no_none") == space_ops("darts")[1:]
    assert space_ops("s4") == ("noise", "sep_conv_3x3")
    s1 = initial_mask("s1")
    assert s1["normal"].shape == (14, 6) and s1["normal"].sum(1).tolist() == [2] * 14
    ops = space_ops("s1")
    assert s1["normal"][5].tolist() == [op in ("max_pool_3x3", "skip_connect") for op in ops]
    assert s1["reduce"][1].tolist() == [op in ("max_pool_3x3", "dil_conv_3x3") for op in ops]
    assert all(initial_mask(name)[k].all() for name in ("darts", "s2", "s3", "s4") for k in ("normal", "reduce"))
    with pytest.raises(NasflowError, match="unknown DARTS op set 'bogus'; valid op sets: darts, darts_no_none, s1"):
        make_space({"op_set": "bogus"})
    with pytest.raises(NasflowError, match="channels must be even"):
        make_space({"op_set": "darts", "channels": 5})


MASKED = {"darts": "sep_conv_3x3", "darts_no_none": "dil_conv_5x5", "s1": "dil_conv_3x3", "s2": "sep_conv_3x3",
          "s3": "skip_connect", "s4": "noise"}


@pytest.mark.parametrize("op_set", list(OP_SETS))
def test_supernet_forward_skips_masked_ops_and_none(op_set):
    torch.manual_seed(0)
    space = make_space({"op_set": op_set, **TINY})
    model = space.build(10)
    assert model.initial_mask()["normal"].equal(initial_mask(op_set)["normal"])
    target = MASKED[op_set]
    calls = {"target": 0, "none": 0}
    for cell in model.cells:
        for ops in cell.edges:
            for name, op in ops.items():
                if name == target:
                    op.register_forward_hook(lambda *a: calls.__setitem__("target", calls["target"] + 1))
                if isinstance(op, Zero):
                    op.register_forward_hook(lambda *a: calls.__setitem__("none", calls["none"] + 1))
    mask = initial_mask(op_set)
    col = space.ops.index(target)
    masked = {k: m.clone() for k, m in mask.items()}
    for m in masked.values():
        m[:, col] = False
    x = torch.randn(2, 3, 8, 8)
    alpha = {k: 1e-3 * torch.randn(m.shape) for k, m in mask.items()}
    out = model(x, {k: mixing_weights(alpha[k], masked[k], "softmax") for k in alpha}, active_of(masked))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert calls == {"target": 0, "none": 0}
    model(x, {k: mixing_weights(alpha[k], mask[k], "softmax") for k in alpha}, active_of(mask))
    assert calls["target"] > 0 and calls["none"] == 0


def test_ops_absent_from_an_edge_cannot_be_activated():
    model = make_space({"op_set": "s1", **TINY}).build(10)
    full = {k: torch.ones(14, 6, dtype=torch.bool) for k in ("normal", "reduce")}
    weights = {k: torch.full((14, 6), 1 / 6) for k in full}
    with pytest.raises(ValueError, match="no candidate there"):
        model(torch.randn(2, 3, 8, 8), weights, active_of(full))


def test_noise_op_returns_unit_gaussian_of_the_strided_shape():
    x = torch.full((4, 8, 16, 16), 7.0)
    y = NoiseOp(stride=2)(x)
    assert y.shape == (4, 8, 8, 8)
    assert abs(y.mean().item()) < 0.1 and abs(y.std().item() - 1) < 0.1


@pytest.mark.parametrize("op_set", ["darts", "s1"])
def test_alpha_gradient_reaches_both_cell_types(op_set):
    torch.manual_seed(0)
    space = make_space({"op_set": op_set, **TINY})
    model = space.build(3)
    mask = initial_mask(op_set)
    mask["normal"][0, -1] = False                       # a dead op gets no gradient
    alpha = {k: (1e-3 * torch.randn(m.shape)).requires_grad_() for k, m in mask.items()}
    weights = {k: mixing_weights(alpha[k], mask[k], "softmax") for k in alpha}
    loss = F.cross_entropy(model(torch.randn(4, 3, 8, 8), weights, active_of(mask)), torch.tensor([0, 1, 2, 1]))
    loss.backward()
    for k in ("normal", "reduce"):
        g = alpha[k].grad
        assert torch.isfinite(g).all() and g[mask[k]].abs().sum() > 0
        assert (g[~mask[k]] == 0).all()


def test_cell_plot_writes_png_and_svg(tmp_path):
    png, svg = plot_genotype(DARTS_V2, tmp_path / "cells" / "darts_v2.png", title="DARTS_V2")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = svg.read_text()
    assert "<svg" in text and "dil_conv_3x3" in text
    assert sorted(p.name for p in (tmp_path / "cells").iterdir()) == ["darts_v2.png", "darts_v2.svg"]
