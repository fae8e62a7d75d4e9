"""The CPU form of 3x3 average pooling computes what torch's pooling computes."""
import pytest
import torch
from torch import nn

from pipeline_steps.spaces.ops import AvgPool3x3


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(8, 8), (7, 5), (1, 1), (2, 3)])
def test_forward_and_backward_equal_torch_pooling_at_the_borders(stride, size):
    torch.manual_seed(0)
    x = torch.randn(3, 4, *size, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    reference = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    out, out_ref = AvgPool3x3(stride)(x), reference(x_ref)
    assert out.shape == out_ref.shape
    torch.testing.assert_close(out, out_ref, rtol=0, atol=1e-12)
    g = torch.randn_like(out)
    out.backward(g)
    out_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-12)


def test_a_corner_is_the_mean_of_the_four_pixels_inside_the_image():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert AvgPool3x3()(x)[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 4 + 5) / 4)


def test_constants_made_under_inference_mode_do_not_break_training():
    pool = AvgPool3x3()
    x = torch.randn(2, 3, 6, 6)
    with torch.inference_mode():
        pool(x)
    y = x.clone().requires_grad_(True)
    pool(y).sum().backward()  # would raise if an inference tensor were saved for backward
    assert y.grad is not None


def test_state_dict_is_that_of_torch_pooling():
    assert AvgPool3x3().state_dict() == {} == nn.AvgPool2d(3, 1, 1).state_dict()
