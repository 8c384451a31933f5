"""Low-level ops of the LAFITE / StyleGAN2 networks, written for speed on CPU.

StyleGAN2 resamples with the FIR low-pass filter [1, 3, 3, 1] (normalised to unit DC gain).
The official code runs a generic ``upfirdn2d`` (zero-insertion, padding, crop, then a full 2-D
depthwise convolution); here each resampling case is one (strided or transposed-strided)
depthwise convolution with the same filter and the same padding, which gives the same numbers
without materialising the zero-inserted image. Everything here is differentiable twice (R1 and
path-length penalties), and the custom autograd Functions write their backward with the same
fast forward ops, so that second-order terms avoid PyTorch's slow generic conv double-backward.

Legend (StyleGAN2 paper, Karras et al. 2020, Sec. 2.2): ``styles`` s are per-sample input-channel
scales, demodulation divides each output channel by sqrt(sum (w * s)^2 + 1e-8).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# StyleGAN2's resampling filter; the 2-D kernel is its outer product, normalised to sum 1.
FIR_TAPS = (1.0, 3.0, 3.0, 1.0)
LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)  # keeps activation variance for lrelu(0.2) (StyleGAN "def_gain")


def fir_kernel(channels: int, gain: float = 1.0, dtype=torch.float32, device=None) -> torch.Tensor:
    """Depthwise 2-D filter [C, 1, 4, 4]: outer([1,3,3,1]) / 64 * gain."""
    taps = torch.tensor(FIR_TAPS, dtype=dtype, device=device)
    k = torch.outer(taps, taps)
    k = k / k.sum() * gain
    return k.expand(channels, 1, 4, 4).contiguous()


_KERNELS: dict[tuple, torch.Tensor] = {}


def _kernel(channels: int, gain: float, like: torch.Tensor) -> torch.Tensor:
    # Filters are constants: cache them per (channels, gain, dtype, device) instead of rebuilding
    # them at every call (they are tiny, but allocation shows up in profiles at 32 px).
    key = (channels, gain, like.dtype, like.device)
    k = _KERNELS.get(key)
    if k is None:
        k = fir_kernel(channels, gain, like.dtype, like.device)
        _KERNELS[key] = k
    return k


class _FIR(torch.autograd.Function):
    """Depthwise FIR filter with explicit zero padding (left, right, top, bottom), stride 1.

    Its adjoint (the gradient) is the same filter with padding (3 - pad) on each side, because
    the filter is symmetric. Writing the backward as this same op keeps every gradient - also
    the second-order ones of R1 and path-length - on the fast forward depthwise-conv path;
    autograd's own backward would run a transposed depthwise conv, ~10x slower on CPU.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, pad: tuple[int, int, int, int], gain: float) -> torch.Tensor:
        ctx.pad, ctx.gain = pad, gain
        k = _kernel(x.shape[1], gain, x)
        if pad[0] == pad[1] == pad[2] == pad[3]:
            return F.conv2d(x, k, padding=pad[0], groups=x.shape[1])
        return F.conv2d(F.pad(x, pad), k, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        adjoint = tuple(3 - p for p in ctx.pad)
        return _FIR.apply(grad, adjoint, ctx.gain), None, None


def blur(x: torch.Tensor, pad: int, gain: float = 1.0) -> torch.Tensor:
    """FIR filter with ``pad`` zeros on every side: [B, C, H, W] -> [B, C, H+2p-3, W+2p-3]."""
    return _FIR.apply(x, (pad, pad, pad, pad), gain)


class _Down(torch.autograd.Function):
    """FIR filter (padding 1) keeping every other sample, as ONE stride-2 depthwise conv.

    It computes only the kept quarter of the outputs. Its adjoint is zero insertion followed by
    the same (symmetric) filter, i.e. _Up with the same gain, and vice versa: each op is the
    other's backward, so gradients of any order stay on these two fast conv paths.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, gain: float) -> torch.Tensor:
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f"downsample2x needs even height and width, got {list(x.shape)}")
        ctx.gain = gain
        return F.conv2d(x, _kernel(x.shape[1], gain, x), stride=2, padding=1, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _Up.apply(grad, ctx.gain), None


class _Up(torch.autograd.Function):
    """Zero insertion + FIR filter (padding 2 before, 1 after) as one stride-2 transposed
    depthwise conv: no zero-inserted image is materialised (measured 2x faster than
    zero-insert + conv, and it keeps channels_last)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gain: float) -> torch.Tensor:
        ctx.gain = gain
        k = _kernel(x.shape[1], gain, x)
        return F.conv_transpose2d(x, k, stride=2, padding=1, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _Down.apply(grad, ctx.gain), None


def upsample2x(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, 2H, 2W] as StyleGAN2's ``upsample2d``: zero insertion, then the FIR
    filter with gain 4 and padding 2 before / 1 after."""
    return _Up.apply(x, 4.0)


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, H/2, W/2] as StyleGAN2's ``downsample2d``: FIR filter (padding 1)
    then every other sample; H and W must be even."""
    return _Down.apply(x, 1.0)


def conv_up2x(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """3x3 conv at twice the resolution: [B, I, H, W] -> [B, O, 2H, 2W].

    Same result as StyleGAN2's ``conv2d_resample(up=2, padding=1)``: a stride-2 transposed
    convolution (no weight flip) gives 2H+1 samples, then the FIR filter (gain 4, padding 1)
    low-passes and crops to 2H. weight: [O, I, 3, 3].
    """
    y = _ConvUp.apply(x, weight)  # [B, O, 2H+1, 2W+1]
    return blur(y, pad=1, gain=4.0)  # [B, O, 2H, 2W]


class _ConvUp(torch.autograd.Function):
    """Stride-2 transposed 3x3 conv, x [B, I, H, W], weight [O, I, 3, 3] -> [B, O, 2H+1, 2W+1].

    Backward written with plain conv ops for the same reason as _Conv2d (fast when path-length
    regularisation differentiates it again): the input gradient is the stride-2 conv with the
    same weight, the weight gradient that conv's weight gradient with input and output swapped.
    """

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        v = weight.transpose(0, 1)  # [I, O, 3, 3]: as a conv weight, it maps O -> I channels
        if not torch.is_grad_enabled():  # first order: autograd's own fused kernel call
            grad_x, grad_v, _ = torch.ops.aten.convolution_backward(
                grad, x, v, None, [2, 2], [0, 0], [1, 1], True, [0, 0], 1,
                [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
            return grad_x, None if grad_v is None else grad_v.transpose(0, 1)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, v, stride=2)  # [B, I, H, W]
        if ctx.needs_input_grad[1]:
            # <convT(x, V), g> = <x, conv(g, V)>: the weight gradient of conv(g, V) at output x.
            grad_v = torch.ops.aten.convolution_backward(
                x, grad, v, None, [2, 2], [0, 0], [1, 1], False, [0, 0], 1,
                [False, True, False])[1]
            grad_w = grad_v.transpose(0, 1)
        return grad_x, grad_w


def demodulation(weight: torch.Tensor, styles: torch.Tensor) -> torch.Tensor:
    """Demodulation coefficients [B, O] = 1 / sqrt(sum_{i,k} (w[o,i,k] s[b,i])^2 + 1e-8).

    Computed as a [B, I] x [I, O] product of squares instead of materialising the per-sample
    weights [B, O, I, k, k] as the official code does.
    """
    w2 = weight.square().sum(dim=(2, 3))  # [O, I]
    return (styles.square() @ w2.t() + 1e-8).rsqrt()  # [B, O]


def normalize_2nd_moment(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each row to unit mean square (StyleGAN's input normalisation of z)."""
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def minibatch_stddev(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Append one channel with the mean std-dev over groups of samples: [B,C,H,W] -> [B,C+1,H,W].

    Samples i, i + n, i + 2n, ... (n = B / G) form a group, as in StyleGAN2.
    """
    b, c, h, w = x.shape
    g = min(group_size, b)
    if b % g != 0:
        raise ValueError(f"discriminator batch {b} is not a multiple of the minibatch-stddev "
                         f"group size {g}; use a batch divisible by {g} or change mbstd_group_size")
    y = x.reshape(g, -1, c, h, w)  # [G, n, C, H, W]
    # Variance over the group as mean of squared deviations: same maths as var(unbiased=False),
    # but ~4x faster forward + backward on CPU than var's strided reduction over dim 0.
    y = y - y.mean(dim=0)  # [G, n, C, H, W]
    y = (y.square().mean(dim=0) + 1e-8).sqrt()  # [n, C, H, W]
    y = y.mean(dim=(1, 2, 3))  # [n]
    y = y.reshape(1, -1, 1, 1, 1).expand(g, -1, 1, h, w).reshape(b, 1, h, w)  # [B, 1, H, W]
    return torch.cat([x, y.to(x.dtype)], dim=1)


class _Conv2d(torch.autograd.Function):
    """F.conv2d (groups 1, dilation 1) whose backward is written with plain conv ops.

    First order it runs the same oneDNN kernels as autograd's own backward. The difference is
    the second order (R1, path length): autograd differentiates its fused convolution_backward
    with a generic double-backward that re-lays the tensors out and convolves with batch and
    channels swapped (~4x slower here); the input gradient written as conv_transpose2d is
    differentiated like any conv instead.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride: int, padding: int):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding, ctx.has_bias = stride, padding, bias is not None
        return F.conv2d(x, weight, bias, stride=stride, padding=padding)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        if not torch.is_grad_enabled():
            # Plain first-order backward (no create_graph): autograd's own fused kernel call,
            # measured ~5% faster here than the split form below.
            mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1],
                    ctx.has_bias and ctx.needs_input_grad[2]]
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [s, s], [p, p],
                [1, 1], False, [0, 0], 1, mask)
            return grad_x, grad_w, grad_b, None, None
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # conv_transpose2d reproduces sizes up to stride - 1 lost rows/cols: pad them back.
            extra = [x.shape[i] - ((grad.shape[i] - 1) * s - 2 * p + weight.shape[i]) for i in (2, 3)]
            grad_x = F.conv_transpose2d(grad, weight, stride=s, padding=p, output_padding=extra)
        if ctx.needs_input_grad[1]:
            grad_w = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [s, s], [p, p], [1, 1], False, [0, 0], 1,
                [False, True, False])[1]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3))
        return grad_x, grad_w, grad_b, None, None


def conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           stride: int = 1, padding: int = 0) -> torch.Tensor:
    """F.conv2d with a backward that stays fast when differentiated again (see _Conv2d)."""
    return _Conv2d.apply(x, weight, bias, stride, padding)
