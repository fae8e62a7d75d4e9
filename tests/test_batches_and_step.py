"""Search batches as the DARTS-lineage code draws them, and the captured step against the plain one.

* One epoch's training batches are one shuffled pass over D_tr (every index exactly once); each
  alpha step draws a fresh random D_val batch; a state saved mid-pass resumes with the same
  remaining batches.
* The captured step (static buffers, foreach SGD/Adam, autograd.grad) gives the plain step's loss,
  alpha, weights and OStr statistics after several steps; with the option off the plain path runs.
"""
from __future__ import annotations

import copy

import pytest
import torch

from pipeline_steps.data.search_data import DataSettings, SearchData
from pipeline_steps.scores.ostr import OStrStatistics
from pipeline_steps.spaces import get_space
from pipeline_steps.supernet.state import Optimisation, init_state
from pipeline_steps.supernet.train import StepSettings, train_epoch

NB201 = {"op_order": ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"], "bn_affine": False,
         "pool_bn": False, "channels": 4, "cells_per_stage": 1}


@pytest.fixture(scope="module")
def data(tiny_folder):
    # 240 images: D_tr = 120 -> 8 steps of 16 with a partial last batch of 8
    return SearchData(DataSettings("cifar10", str(tiny_folder), source="folder"), batch_size=16, device="cpu")


def _state(seed=0, space="nb201", settings=NB201, dtype=torch.float64):
    state = init_state(get_space(space, settings), 10, Optimisation(epochs=4), seed=seed, device="cpu")
    state.model.to(dtype)
    with torch.no_grad():
        for a in state.alpha.values():
            a.data = a.data.to(dtype)
    # the optimisers hold the parameter objects, so they follow the dtype change
    return state


def test_one_epoch_covers_every_training_index_once(data, one_thread):
    state = _state()
    seen = []
    for _ in range(data.steps_per_epoch):
        idx = state.train_pass.next(len(data.train_idx), data.batch_size, state.generator)
        seen.append(idx)
    seen = torch.cat(seen)
    assert sorted(seen.tolist()) == list(range(len(data.train_idx)))
    # the next epoch is a new, differently shuffled pass
    nxt = torch.cat([state.train_pass.next(len(data.train_idx), data.batch_size, state.generator)
                     for _ in range(data.steps_per_epoch)])
    assert sorted(nxt.tolist()) == list(range(len(data.train_idx)))
    assert not torch.equal(seen, nxt)


def test_train_batches_follow_the_pass(data, one_thread):
    """train_batch reads the pass: the labels of an epoch's batches are D_tr's labels, each once."""
    state = _state()
    labels = torch.cat([data.train_batch(state)[1] for _ in range(data.steps_per_epoch)])
    expected = data.images.labels[data.train_idx]
    assert sorted(labels.tolist()) == sorted(expected.tolist())


def test_val_batches_differ_per_step(data, one_thread):
    gen = torch.Generator().manual_seed(0)
    a = data.val_batch(gen)[0]
    b = data.val_batch(gen)[0]
    assert not torch.equal(a, b)


def test_resume_mid_epoch_gives_the_remaining_batches(data, one_thread, tmp_path):
    state = _state()
    for _ in range(3):
        data.train_batch(state)
    state.save(tmp_path / "mid.pt")
    rest = [data.train_batch(state)[0] for _ in range(data.steps_per_epoch - 3)]

    resumed = _state(seed=5)  # a different generator and pass until the checkpoint is loaded
    resumed.load_state_dict(torch.load(tmp_path / "mid.pt", weights_only=False))
    again = [data.train_batch(resumed)[0] for _ in range(data.steps_per_epoch - 3)]
    for x, y in zip(rest, again):
        assert torch.equal(x, y)


class Float64Batches:
    """The same batches in float64, so that plain and captured steps can be compared tightly."""

    def __init__(self, data):
        self.data, self.steps_per_epoch = data, data.steps_per_epoch

    def train_batch(self, state):
        x, y = self.data.train_batch(state)
        return x.double() if state.alpha[next(iter(state.alpha))].dtype == torch.float64 else x, y

    def val_batch(self, generator):
        x, y = self.data.val_batch(generator)
        return x.double() if self.double else x, y


def _run(state, data, captured, epochs=2, mode="bilevel", mixing="softmax"):
    ostr = OStrStatistics()
    data = Float64Batches(data)
    data.double = state.alpha[next(iter(state.alpha))].dtype == torch.float64
    records = []
    for _ in range(epochs):
        rec = train_epoch(state, data, mode, StepSettings(grad_clip=0.5, mixing=mixing), hooks=[ostr], progress=False,
                          captured=captured)
        rec["scores"] = ostr.finish_epoch()
        records.append(rec)
    return records


@pytest.mark.parametrize("mode", ["bilevel", "fixed_alpha"])
def test_captured_step_equals_plain_step(data, one_thread, mode):
    """Two epochs (16 steps, partial last batches, a clipped gradient) agree in float64."""
    plain, fast = _state(), _state()
    plain_records = _run(plain, data, "off", mode=mode)
    fast_records = _run(fast, data, "graph", mode=mode)  # no CUDA here: the captured function, eager
    for a, b in zip(plain_records, fast_records):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-9)
        for crit, per_kind in a["scores"].items():
            torch.testing.assert_close(torch.tensor(per_kind["cell"]), torch.tensor(b["scores"][crit]["cell"]),
                                       rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(plain.alpha["cell"], fast.alpha["cell"], rtol=1e-9, atol=1e-12)
    for (name, p), q in zip(plain.model.state_dict().items(), fast.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-10, msg=name)
    # the optimiser state the checkpoint keeps is the same too
    pa, fa = plain.a_optimizer.state_dict()["state"], fast.a_optimizer.state_dict()["state"]
    if mode == "bilevel":
        assert float(pa[0]["step"]) == float(fa[0]["step"]) == 2 * data.steps_per_epoch
        torch.testing.assert_close(pa[0]["exp_avg_sq"], fa[0]["exp_avg_sq"], rtol=1e-9, atol=1e-15)
    pw, fw = plain.w_optimizer.state_dict()["state"], fast.w_optimizer.state_dict()["state"]
    for k in pw:
        torch.testing.assert_close(pw[k]["momentum_buffer"], fw[k]["momentum_buffer"], rtol=1e-8, atol=1e-10)


def test_captured_step_equals_plain_step_with_masks_raw_mixing_and_nesterov(data, one_thread):
    """HPE-style raw alpha on a pruned mask, Nesterov momentum; then the plain path continues from it."""
    plain, fast = _state(), _state()
    for s in (plain, fast):
        s.mask["cell"][:, 3] = False
        s.mask["cell"][2, 1] = False
        for g in s.w_optimizer.param_groups:
            g["nesterov"] = True
    _run(plain, data, "off", epochs=1, mixing="raw")
    _run(fast, data, "eager", epochs=1, mixing="raw")
    _run(plain, data, "off", epochs=1, mixing="raw")
    _run(fast, data, "off", epochs=1, mixing="raw")  # the plain step reads the state the captured one left
    torch.testing.assert_close(plain.alpha["cell"], fast.alpha["cell"], rtol=1e-9, atol=1e-12)
    for p, q in zip(plain.model.parameters(), fast.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-10)


def test_captured_step_on_the_darts_space(data, one_thread):
    settings = {"op_set": "darts", "stem_multiplier": 3, "channels": 4, "layers": 3}
    plain, fast = _state(space="darts", settings=settings), _state(space="darts", settings=settings)
    _run(plain, data, "off", epochs=1)
    _run(fast, data, "graph", epochs=1)
    for k in plain.alpha:
        torch.testing.assert_close(plain.alpha[k], fast.alpha[k], rtol=1e-9, atol=1e-12)
    for p, q in zip(plain.model.parameters(), fast.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-10)


def test_option_off_is_the_plain_path_bit_for_bit(data, one_thread):
    a, b = _state(dtype=torch.float32), _state(dtype=torch.float32)
    ra = _run(a, data, "off", epochs=1)
    rb = _run(b, data, "auto", epochs=1)  # auto on CPU: the plain path
    assert ra[0]["train_loss"] == rb[0]["train_loss"]
    for p, q in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(p, q)


def test_unsupported_mode_falls_back_to_its_own_step(data, one_thread):
    from pipeline_steps.supernet.captured_step import supported

    state = _state()
    assert supported(state, "spos", []) is not None
    assert supported(state, "bilevel", [OStrStatistics()]) is None
    assert supported(state, "bilevel", [object()]) is not None
    assert supported(state, "bilevel", [OStrStatistics(), OStrStatistics()]) is not None  # it runs one hook


def test_channels_last_network_gives_the_same_step(data, one_thread):
    """NHWC weights (the default) compute the same epoch as NCHW, to float64 rounding."""
    from pipeline_steps.common.device import use_memory_format

    nchw, nhwc = _state(), _state()
    assert use_memory_format(nhwc.model, torch.device("cpu"), "on") == "channels_last"
    assert use_memory_format(nchw.model, torch.device("cpu"), "off") == "contiguous"
    assert use_memory_format(_state().model, torch.device("cpu"), "auto") == "channels_last"
    _run(nchw, data, "off", epochs=1)
    _run(nhwc, data, "eager", epochs=1)
    torch.testing.assert_close(nchw.alpha["cell"], nhwc.alpha["cell"], rtol=1e-9, atol=1e-12)
    for p, q in zip(nchw.model.parameters(), nhwc.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-8, atol=1e-10)
    with pytest.raises(Exception, match="channels_last"):
        use_memory_format(nchw.model, torch.device("cpu"), "sometimes")


def test_darts_space_supernet_in_nhwc_computes_the_same_logits_and_gradients():
    """The DARTS ops (separable and dilated depthwise convolutions, pools, factorized reduce)."""
    from pipeline_steps.spaces.darts import initial_mask, make_space

    torch.manual_seed(0)
    space = make_space({"op_set": "darts", "channels": 4, "layers": 3})
    nchw = space.build(10).double()
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    mask = initial_mask("darts")
    weights = {k: torch.softmax(torch.randn(m.shape, dtype=torch.float64), -1) for k, m in mask.items()}
    active = {k: [torch.nonzero(row).flatten().tolist() for row in m] for k, m in mask.items()}
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    out = [net(x, weights, active) for net in (nchw, nhwc)]
    torch.testing.assert_close(out[0], out[1], rtol=1e-10, atol=1e-12)
    for o in out:
        o.square().sum().backward()
    for p, q in zip(nchw.parameters(), nhwc.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10)


@pytest.fixture
def compile_backend(monkeypatch):
    """The compiled step's backend for a test; dynamo's caches are cleared afterwards."""
    from pipeline_steps.supernet import captured_step

    yield lambda backend: monkeypatch.setattr(captured_step, "COMPILE_BACKEND", backend)
    torch._dynamo.reset()


def _same_state(a, b, rtol=1e-8, atol=1e-10):
    for k in a.alpha:
        torch.testing.assert_close(a.alpha[k], b.alpha[k], rtol=rtol, atol=atol)
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol, msg=name)  # BN running statistics included


def test_compiled_network_in_the_captured_step_equals_the_plain_step(data, one_thread, compile_backend):
    """torch.compile's tracing and compiled autograd around the captured step (backend aot_eager: no
    code generation, so it runs quickly on CPU; inductor is the e2e test below)."""
    compile_backend("aot_eager")
    plain, fast = _state(), _state()
    plain_records = _run(plain, data, "off")
    fast_records = _run(fast, data, "compiled")
    assert [r["step_path"] for r in fast_records] == ["eager+compiled"] * 2
    for a, b in zip(plain_records, fast_records):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-9)
    _same_state(plain, fast)


def test_a_network_that_cannot_be_compiled_runs_uncompiled_after_one_line(data, one_thread, compile_backend, capfd):
    def no_compiler(graph, example_inputs):
        raise RuntimeError("no C++ compiler on this machine")

    compile_backend(no_compiler)
    plain, fast = _state(), _state()
    _run(plain, data, "off", epochs=1)
    records = _run(fast, data, "compiled", epochs=1)
    assert records[0]["step_path"] == "eager"
    err = capfd.readouterr().err
    assert err.count("compiling the network failed") == 1 and "no C++ compiler" in err
    _same_state(plain, fast)


@pytest.mark.e2e
def test_inductor_compiled_step_equals_the_plain_step(data, one_thread, compile_backend):
    """The default backend, code generated for this CPU (a minute or more to compile)."""
    compile_backend("inductor")
    plain, fast = _state(dtype=torch.float32), _state(dtype=torch.float32)
    _run(plain, data, "off", epochs=1)
    assert _run(fast, data, "compiled", epochs=1)[0]["step_path"] == "eager+compiled"
    _same_state(plain, fast, rtol=1e-4, atol=1e-5)
