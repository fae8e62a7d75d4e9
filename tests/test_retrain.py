"""From-scratch evaluation networks and their training: sizes, train/eval behaviour, cutout,
FLOPs counting and exact resume."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from pipeline_steps.common.errors import NasflowError
from pipeline_steps.data.search_data import DeviceImages
from pipeline_steps.evaluation.retrain import (NB201_PROTOCOL, NB201Network, NetworkCIFAR, NetworkImageNet,
                                               RetrainSettings, count_flops_m, count_params_m, cutout, retrain)
from pipeline_steps.spaces.genotype import DARTS_V2

from project import Crash

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: thread start-up costs more than the work


def images(n: int, size: int, seed: int = 0) -> DeviceImages:
    """Learnable synthetic images: the class sets the mean brightness of one channel."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    x = rng.integers(0, 120, (n, 3, size, size))
    x[np.arange(n), labels % 3] += (labels * 13)[:, None, None]
    return DeviceImages(x.clip(0, 255).astype(np.uint8), labels, CIFAR_MEAN, CIFAR_STD, "cpu", crop_padding=1)


def test_darts_v2_cifar_network_has_published_size():
    model = NetworkCIFAR(36, 10, 20, True, DARTS_V2)
    params = count_params_m(model)
    assert abs(params - 3.3) <= 0.1                   # DARTS paper: 3.3M
    assert params == pytest.approx(3.349342, abs=1e-6)  # what the DARTS train.py log prints
    assert sum(p.numel() for p in model.parameters()) / 1e6 > params + 0.4   # the auxiliary head is left out


def test_imagenet_network_builds_and_runs():
    model = NetworkImageNet(8, 5, 3, True, DARTS_V2)
    x = torch.randn(2, 3, 224, 224)
    logits, aux = model(x)
    assert logits.shape == aux.shape == (2, 5)
    model.eval()
    assert model(x)[1] is None
    assert count_params_m(NetworkImageNet(48, 1000, 14, True, DARTS_V2)) == pytest.approx(4.718752, abs=1e-6)


def test_drop_path_and_auxiliary_head_only_in_training():
    torch.manual_seed(0)
    model = NetworkCIFAR(4, 10, 5, True, DARTS_V2, drop_path_prob=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    a, aux = model(x)
    b, _ = model(x)
    assert aux is not None and aux.shape == (4, 10)
    assert not torch.allclose(a, b)                     # a different drop-path draw per forward
    model.drop_path_prob = 0.0
    torch.testing.assert_close(model(x)[0], model(x)[0], rtol=0, atol=0)   # ... and nothing else random
    model.drop_path_prob = 0.5
    model.eval()
    c, aux = model(x)
    assert aux is None
    torch.testing.assert_close(c, model(x)[0], rtol=0, atol=0)


def test_cutout_zeroes_the_darts_square_clipped_at_the_borders():
    b, h, w, length = 64, 9, 7, 4
    x = torch.ones(b, 3, h, w)
    out = cutout(x, length, torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    cy = torch.randint(0, h, (b, 1), generator=replay)
    cx = torch.randint(0, w, (b, 1), generator=replay)
    for i in range(b):  # DARTS' Cutout with the same centres
        mask = np.ones((h, w), np.float32)
        y, xx = int(cy[i]), int(cx[i])
        mask[np.clip(y - length // 2, 0, h): np.clip(y + length // 2, 0, h),
             np.clip(xx - length // 2, 0, w): np.clip(xx + length // 2, 0, w)] = 0
        assert np.array_equal(out[i].numpy(), np.broadcast_to(mask, (3, h, w))), i
    assert (out.sum(dim=(1, 2, 3)) < 3 * h * w).all()                     # every image lost a patch
    clipped = (cy.flatten() < length // 2) | (cx.flatten() < length // 2)
    assert clipped.any()                                                  # the border case was exercised


def test_flops_counter_matches_a_hand_count():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(),
                        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 5))
    # conv1: 8*8*4 outputs x 3*3*3; conv2: 4*4*4 outputs x (4/2)*3*3; linear: 5 x 4
    hand = 8 * 8 * 4 * 27 + 4 * 4 * 4 * 18 + 5 * 4
    assert count_flops_m(net, (1, 3, 8, 8)) == pytest.approx(hand / 1e6, rel=1e-12)
    assert count_flops_m(net, (3, 3, 8, 8)) == pytest.approx(hand / 1e6, rel=1e-12)   # per image
    assert net.training


def _tiny(settings: RetrainSettings) -> NetworkCIFAR:
    return NetworkCIFAR(settings.channels, 10, settings.layers, settings.auxiliary_weight > 0, DARTS_V2)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    s = RetrainSettings(epochs=3, batch_size=16, cutout=4, drop_path=0.3, auxiliary_weight=0.0, layers=4,
                        channels=4)
    train, test = images(40, 8), images(20, 8, seed=1)
    torch.manual_seed(0)
    straight = _tiny(s)
    done = retrain(straight, train, test, s, tmp_path / "a.pt", seed=7)

    def crash_after_two(record):
        if record["epoch"] == 2:
            raise Crash

    torch.manual_seed(0)
    with pytest.raises(Crash):
        retrain(_tiny(s), train, test, s, tmp_path / "b.pt", seed=7, on_epoch=crash_after_two)
    assert torch.load(tmp_path / "b.pt", weights_only=False)["epoch"] == 2
    torch.manual_seed(99)            # another init: the weights must come from the checkpoint
    resumed = _tiny(s)
    again = retrain(resumed, train, test, s, tmp_path / "b.pt", seed=7)

    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=0, atol=0, msg=k)
    assert again["history"] == done["history"] and again["test_acc"] == done["test_acc"]
    assert [r["drop_path_prob"] for r in done["history"]] == pytest.approx([0.0, 0.1, 0.2])
    assert done["history"][1]["lr"] < done["history"][0]["lr"] == s.lr
    assert done["params_m"] == count_params_m(straight) and done["flops_m"] > 0
    assert done["test_error"] == pytest.approx(100 - done["test_acc"])

    finished = retrain(_tiny(s), train, test, s, tmp_path / "a.pt", seed=7)   # nothing left to do
    assert finished["history"] == done["history"]
    with pytest.raises(NasflowError, match="other retrain settings"):
        retrain(_tiny(s), train, test, dataclasses.replace(s, lr=0.1), tmp_path / "a.pt", seed=7)


def test_auxiliary_loss_trains_on_cifar_sized_images(tmp_path):
    s = RetrainSettings(epochs=1, batch_size=4, layers=5, channels=4)
    torch.manual_seed(0)
    result = retrain(_tiny(s), images(8, 32), images(4, 32, seed=1), s, tmp_path / "aux.pt", seed=0)
    assert len(result["history"]) == 1 and np.isfinite(result["history"][0]["train_loss"])


def test_nb201_arch_builds_and_trains_one_epoch(tmp_path):
    best = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    all_conv = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"
    # NAS-Bench-201's CIFAR-10 size of its largest cell network: 1.531546 MB params, 220.1 M FLOPs
    assert count_params_m(NB201Network(all_conv, 10)) == pytest.approx(1.531546, abs=1e-6)
    assert count_flops_m(NB201Network(all_conv, 10)) == pytest.approx(220.12, abs=0.01)
    torch.manual_seed(0)
    model = NB201Network(best, 10, channels=4, cells_per_stage=1)
    s = dataclasses.replace(NB201_PROTOCOL, epochs=1, batch_size=16)
    result = retrain(model, images(40, 8), images(20, 8, seed=1), s, tmp_path / "nb201.pt", seed=0)
    assert set(result) == {"test_acc", "test_error", "params_m", "flops_m", "epochs", "history", "wall_time_s"}
    assert result["epochs"] == 1 and len(result["history"]) == 1 and 0 <= result["test_acc"] <= 100
    assert result["params_m"] < count_params_m(
        NB201Network(all_conv, 10, channels=4, cells_per_stage=1))   # only the chosen ops hold parameters
