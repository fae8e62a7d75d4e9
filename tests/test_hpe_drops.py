"""HPE-DARTS building blocks, the importance drops: the NetPerfProxy and NASWOT drop of every alive
op, under both mixings and on both cell types, and the proxy batch (the kernels themselves are in
test_hpe_parts.py)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline_steps.common.errors import NasflowError
from pipeline_steps.data.search_data import DataSettings, SearchData
from pipeline_steps.scores.netperf import naswot_drop, naswot_score, netperf_drop, netperf_proxy, proxy_batch
from pipeline_steps.spaces import darts, nb201

from test_hpe_parts import DARTS_FEW_OPS, forward_of, images, keep_only, make_state, set_alpha, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------- the drop


def count_forwards(model: nn.Module) -> list[int]:
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def test_npp_drop_is_full_minus_masked_for_every_alive_op_nb201():
    state = make_state("nb201")
    set_alpha(state, seed=11)
    state.mask["cell"][3, nb201.OPS.index("avg_pool_3x3")] = False
    x = images(8)
    before = snapshot(state)
    calls = count_forwards(state.model)
    drop = netperf_drop(state, x)
    alive_non_none = int(state.mask["cell"][:, 1:].sum())
    assert len(calls) == 1 + alive_non_none                 # one forward per masked variant, none for `none`
    full = netperf_proxy(state, x)
    for e in range(6):
        for o in range(5):
            if not state.mask["cell"][e, o]:
                assert math.isnan(drop["cell"][e, o])     # dead: not scored
                continue
            state.mask["cell"][e, o] = False
            expected = full - netperf_proxy(state, x)
            state.mask["cell"][e, o] = True
            assert drop["cell"][e, o] == pytest.approx(expected, abs=1e-9)
    assert (drop["cell"][:, 0] == 0).all()                  # `none`: removing it changes nothing
    after = snapshot(state)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert drop["cell"].dtype == torch.float64 and drop["cell"].shape == state.alpha["cell"].shape


def test_under_softmax_mixing_a_removal_renormalises_nothing():
    """METHODS.md 4.3: the removed op's theta becomes 0, the other thetas of its edge stay as they were."""
    state = make_state("nb201")
    set_alpha(state, seed=15)
    keep_only(state, {"cell": [["skip_connect", "nor_conv_1x1", "nor_conv_3x3"]] + [["nor_conv_3x3"]] * 5})
    x = images(8)
    theta = state.weights("softmax")
    e, o = 0, nb201.OPS.index("nor_conv_1x1")
    removed = {"cell": theta["cell"].detach().clone()}
    removed["cell"][e, o] = 0.0
    full = netperf_proxy(state, x, weights=theta)
    state.mask["cell"][e, o] = False
    expected = full - netperf_proxy(state, x, weights=removed)
    renormalised = full - netperf_proxy(state, x, mixing="softmax")
    state.mask["cell"][e, o] = True
    drop = netperf_drop(state, x, mixing="softmax")["cell"][e, o]
    assert drop == pytest.approx(expected, abs=1e-9) and drop != pytest.approx(renormalised, abs=1e-6)


def test_npp_drop_in_the_darts_space_covers_both_cell_types():
    state = make_state("darts")
    set_alpha(state, seed=12)
    keep_only(state, DARTS_FEW_OPS)
    x = images(6)
    calls = count_forwards(state.model)
    drop = netperf_drop(state, x, form="literal")
    assert len(calls) == 1 + 2 * (14 + 2 * 2)            # full + one per alive non-`none` op
    assert set(drop) == {"normal", "reduce"}
    for kind in darts.CELLS:
        alive = state.mask[kind]
        assert not drop[kind][alive].isnan().any() and drop[kind][~alive].isnan().all()
        assert (drop[kind][:, state.space.op_index("none")] == 0).all()
    full = netperf_proxy(state, x, form="literal")
    for kind, e, name in (("normal", 0, "max_pool_3x3"), ("reduce", 13, "sep_conv_3x3"), ("reduce", 1, "skip_connect")):
        o = state.space.op_index(name)
        state.mask[kind][e, o] = False
        assert drop[kind][e, o] == pytest.approx(full - netperf_proxy(state, x, form="literal"), abs=1e-9)
        state.mask[kind][e, o] = True


def test_naswot_baseline_drop():
    state = make_state("nb201")
    keep_only(state, {"cell": [["none", "skip_connect", "nor_conv_3x3"], ["nor_conv_1x1", "avg_pool_3x3"]] * 3})
    x = images(8)
    # uniform alphas: weighting every op by the same constant only shifts log|det| by N log(alpha),
    # so the NPP drop (agreement) and the unweighted op-output NASWOT drop coincide ...
    torch.testing.assert_close(naswot_drop(state, x, code_source="op_output"), netperf_drop(state, x),
                               equal_nan=True, rtol=0, atol=1e-9)
    # ... and with unequal alphas they do not: the weighting is what NPP adds to NASWOT
    set_alpha(state, seed=13, low=0.05, high=3.0)
    npp, plain = netperf_drop(state, x), naswot_drop(state, x, code_source="op_output")
    alive = state.mask["cell"]
    assert (npp["cell"][alive] - plain["cell"][alive]).abs().max() > 1e-3
    # default: NASWOT as defined for any network (every ReLU of the supernet), full minus masked
    drop = naswot_drop(state, x)
    full = naswot_score(state.model, x, forward_of(state))
    for e, o in ((0, 3), (5, 4), (3, 2)):
        state.mask["cell"][e, o] = False
        assert drop["cell"][e, o] == pytest.approx(full - naswot_score(state.model, x, forward_of(state)), abs=1e-9)
        state.mask["cell"][e, o] = True


def test_proxy_batch_draws_distinct_training_images(tiny_folder):
    data = SearchData(DataSettings("cifar10", str(tiny_folder), source="folder"), batch_size=32, device="cpu")
    x = proxy_batch(data, torch.Generator().manual_seed(0), npp_batch=16)
    assert x.shape == (16, 3, 8, 8)
    assert len({tuple(row.tolist()) for row in x.flatten(1)}) == 16
    torch.testing.assert_close(x, proxy_batch(data, torch.Generator().manual_seed(0), npp_batch=16))
    assert math.isfinite(netperf_proxy(make_state("nb201"), x))
    for bad in (1, len(data.train_idx) + 1):
        with pytest.raises(NasflowError, match="hpe.npp_batch"):
            proxy_batch(data, torch.Generator().manual_seed(0), npp_batch=bad)


def test_npp_refuses_a_singular_kernel():
    state = make_state("nb201")
    x = images(4)
    x[1] = x[0]                              # two identical images: identical codes, det K = 0
    with pytest.raises(NasflowError, match="singular"):
        netperf_drop(state, x)
