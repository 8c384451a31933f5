"""The speed-motivated LAFITE ops against plain reference implementations.

Each fast op (custom autograd Functions, folded gains, matmul forms of 1x1 convs) must give the
same forward values and the same first and second derivatives as the textbook formulation; the
second order matters because R1 (D) and path length (G) differentiate the gradients again.
Float64 and small shapes keep gradcheck exact and quick.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from langfree.families.lafite import networks, ops
from test_lafite_networks import _fir_reference as _fir_ref


def _x(*shape, grad=True):
    g = torch.Generator().manual_seed(sum(shape))
    return torch.randn(*shape, dtype=torch.float64, generator=g).requires_grad_(grad)


def test_strided_resampling_matches_reference_and_is_adjoint():
    x = _x(2, 3, 8, 8, grad=False)
    assert torch.allclose(ops.downsample2x(x), _fir_ref(x, 1, 2, 1, 1, 1.0))
    assert torch.allclose(ops.upsample2x(x), _fir_ref(x, 2, 1, 2, 1, 4.0))
    # <up(x), y> = 4 <x, down(y)>: each op's backward is the other one.
    y = _x(2, 3, 16, 16, grad=False)
    assert torch.allclose((ops.upsample2x(x) * y).sum(), 4 * (x * ops.downsample2x(y)).sum())


def test_strided_resampling_keeps_channels_last():
    x = torch.randn(2, 8, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    for fn in (ops.upsample2x, ops.downsample2x):
        y = fn(x)
        assert y.is_contiguous(memory_format=torch.channels_last)
        (g,) = torch.autograd.grad(y.square().sum(), x)
        assert g.is_contiguous(memory_format=torch.channels_last)


def test_downsample_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even"):
        ops.downsample2x(torch.randn(1, 2, 5, 5))


@pytest.mark.parametrize("fn", [ops.upsample2x, ops.downsample2x])
def test_strided_resampling_twice_differentiable(fn):
    x = _x(1, 2, 4, 4)
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


@pytest.mark.parametrize("stride,padding,size", [(1, 1, 4), (2, 0, 5)])
def test_conv2d_matches_torch_to_second_order(stride, padding, size):
    x, w, b = _x(1, 2, size, size), _x(2, 2, 3, 3), _x(2)

    def fn(x, w, b):
        return ops.conv2d(x, w, b, stride=stride, padding=padding)

    assert torch.allclose(fn(x, w, b), F.conv2d(x, w, b, stride=stride, padding=padding))
    # fast_mode: random projections of the Jacobians; the full ones are O(n^2) and slow here
    assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, w, b), fast_mode=True)


def test_conv2d_r1_gradient_equals_torch():
    """The R1 pattern: grad wrt the input with create_graph, then its norm's weight gradient."""
    w0 = _x(4, 3, 3, 3, grad=False)

    def r1_weight_grad(conv):
        w = w0.clone().requires_grad_(True)
        x = _x(2, 3, 6, 6)
        (g,) = torch.autograd.grad(F.leaky_relu(conv(x, w), 0.2).square().sum(), x,
                                   create_graph=True)
        (gw,) = torch.autograd.grad(g.square().sum(), w)
        return gw

    ours = r1_weight_grad(lambda x, w: ops.conv2d(x, w, None, 1, 1))
    ref = r1_weight_grad(lambda x, w: F.conv2d(x, w, padding=1))
    assert torch.allclose(ours, ref)


def test_conv_up2x_matches_reference_to_second_order():
    x, w = _x(1, 3, 3, 3), _x(2, 3, 3, 3)
    # StyleGAN2 conv2d_resample(up=2, padding=1): stride-2 transposed conv, then FIR (gain 4)
    # with padding 1, all through autograd's own formulas.
    ref = _fir_ref(F.conv_transpose2d(x, w.transpose(0, 1), stride=2), 1, 1, 1, 1, 4.0)
    assert torch.allclose(ops.conv_up2x(x, w), ref)
    assert torch.autograd.gradcheck(ops.conv_up2x, (x, w))
    assert torch.autograd.gradgradcheck(ops.conv_up2x, (x, w))


def test_minibatch_stddev_matches_var_form_to_second_order():
    x = _x(4, 3, 2, 2)

    def ref(x):
        y = x.reshape(2, -1, 3, 2, 2)
        y = (y.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))
        y = y.reshape(1, -1, 1, 1, 1).expand(2, -1, 1, 2, 2).reshape(4, 1, 2, 2)
        return torch.cat([x, y], dim=1)

    assert torch.allclose(ops.minibatch_stddev(x, 2), ref(x))
    assert torch.autograd.gradgradcheck(lambda t: ops.minibatch_stddev(t, 2), (x,))


@pytest.mark.parametrize("cin", [3, 5])
def test_conv1x1_matmul_form_matches_conv(cin):
    x = _x(2, cin, 4, 4).contiguous(memory_format=torch.channels_last)
    w, b = _x(6, cin, 1, 1), _x(6)
    assert torch.allclose(networks._conv1x1(x, w, b), F.conv2d(x, w, b))
    assert torch.autograd.gradcheck(networks._conv1x1, (x, w, b))
    assert torch.autograd.gradgradcheck(networks._conv1x1, (x, w, b))


@pytest.mark.parametrize("activation", ["linear", "lrelu"])
def test_fully_connected_folded_gains_match_definition(activation):
    fc = networks.FullyConnected(5, 4, activation, lr_mult=0.01, bias_init=0.3).double()
    with torch.no_grad():
        fc.bias.normal_()
    x = _x(3, 5)
    ref = x @ (fc.weight * (0.01 / math.sqrt(5))).t() + fc.bias * 0.01
    if activation == "lrelu":
        ref = F.leaky_relu(ref, 0.2) * math.sqrt(2)
    assert torch.allclose(fc(x), ref)
    assert torch.autograd.gradgradcheck(fc, (x,))


def test_torgb_matches_per_sample_1x1_conv():
    style = networks.ConditionedStyle(4, 4, 4, 6, "concat").double()
    layer = networks.ToRGB(6, 3, style, conv_clamp=None).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = _x(2, 6, 4, 4).contiguous(memory_format=torch.channels_last)
    w, c = _x(2, 4), _x(2, 4)
    ours = layer(x, w, c)
    s = style(w, c)  # [2, 6]
    weight = layer.weight / math.sqrt(6)  # [3, 6, 1, 1]
    ref = torch.stack([F.conv2d(x[i:i + 1] * s[i].reshape(1, -1, 1, 1), weight, layer.bias)[0]
                       for i in range(2)])
    assert torch.allclose(ours, ref)
    assert torch.autograd.gradgradcheck(layer, (x, w, c), fast_mode=True)
