"""LAFITE generator and discriminator (Zhou et al., CVPR 2022, Sec. 3; StyleGAN2 backbone).

Generator: an unconditional StyleGAN2 mapping z -> w, then a 'skip' synthesis network whose every
modulated conv and toRGB layer takes its style from BOTH w and the condition c (a CLIP-space
feature, f_dim = c_dim):
  - resolution <= change_resolution ("concat" styles): u = MLP(c), style = affine([u, w])
  - resolution  > change_resolution ("scale_bias" styles): style = bias_mlp(c) + affine(w) * scale_mlp(c)
The text MLPs are f_dim -> (f_dim + m)/2 -> m with lrelu and learning-rate multiplier 0.01, where m
is ``style_mlp_dim`` (default w_dim; the official code fixes it at 512, which is its w_dim).

Discriminator: StyleGAN2 'resnet' discriminator; the 4x4 epilogue (minibatch stddev -> conv -> fc)
feeds two heads: realness ``out`` and the semantic feature f_s (``features``, f_dim). The logit is
out(x_i) + <f_s(x_i), c_i> (paper, Eq. 5: "per_sample"); the official code adds
sum_i <f_s(x_i), c_i> over the whole batch to every logit ("batch_sum").

Parameter shapes, initialisation, equalised learning rate, gains and clamps follow the official
networks so that official weights load one to one (see ``convert.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from langfree.families.lafite import ops

# w is broadcast to every layer; the mapping's EMA of w (for truncation) decays with this factor.
W_AVG_BETA = 0.995
# Learning-rate multiplier of the mapping and the per-layer text MLPs (official: 0.01, tuned for
# 25 000-kimg runs). Stored weights are N(0, 1)/lr_mult, so official checkpoints need 0.01.
STYLE_MLP_LR = 0.01
# Activations are channels_last (NHWC), oneDNN's native layout for convolutions on CPU; it also
# makes the 1x1 convs (toRGB, D skip) plain matmuls over a free [B, H, W, C] view.
MEMORY_FORMAT = torch.channels_last
NOISE_MODES = ("random", "const", "none")


def _check_resolution(resolution: int) -> int:
    if resolution < 4 or resolution & (resolution - 1):
        raise ValueError(f"img_resolution must be a power of two >= 4, got {resolution}")
    return int(math.log2(resolution))


def _channels(res: int, channel_base: int, channel_max: int) -> int:
    return min(channel_base // res, channel_max)


class FullyConnected(nn.Module):
    """Equalised-learning-rate linear layer: weights stored N(0, 1)/lr_mult, scaled at run time by
    lr_mult / sqrt(in); bias scaled by lr_mult. ``activation`` is 'linear' or 'lrelu'."""

    def __init__(self, in_features: int, out_features: int, activation: str = "linear",
                 lr_mult: float = 1.0, bias_init: float = 0.0):
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"activation must be 'linear' or 'lrelu', got {activation!r}")
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mult)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_mult / math.sqrt(in_features)
        self.bias_gain = lr_mult

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Scale the [B, in] input instead of the [out, in] weight: at small batches the weight is
        # the bigger tensor, and neither the forward nor the weight gradient then needs an
        # extra pass over it (these layers are memory-bound at batch 8). The bias gain rides on
        # addmm's beta. The activation gain g folds into both (lrelu(g v) = g lrelu(v), g > 0),
        # so a layer is three ops, each with a cheap backward.
        g = ops.LRELU_GAIN if self.activation == "lrelu" else 1.0
        x = torch.addmm(self.bias, x * (self.weight_gain * g), self.weight.t(),
                        beta=self.bias_gain * g)  # [B, out]
        if self.activation == "lrelu":
            x = F.leaky_relu(x, ops.LRELU_SLOPE)
        return x


def _mlp(dims: list[int], last_activation: str, lr_mult: float) -> nn.Sequential:
    acts = ["lrelu"] * (len(dims) - 2) + [last_activation]
    return nn.Sequential(*[FullyConnected(i, o, a, lr_mult) for i, o, a in zip(dims, dims[1:], acts)])


class MappingNetwork(nn.Module):
    """z [B, z_dim] -> ws [B, num_ws, w_dim]; tracks the EMA of w in ``w_avg`` while training."""

    def __init__(self, z_dim: int, w_dim: int, num_ws: int, num_layers: int = 8,
                 lr_mult: float = STYLE_MLP_LR):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"mapping_layers must be >= 1, got {num_layers}")
        self.z_dim, self.w_dim, self.num_ws = z_dim, w_dim, num_ws
        dims = [z_dim] + [w_dim] * num_layers
        self.layers = _mlp(dims, "lrelu", lr_mult)
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, truncation_psi: float = 1.0,
                update_w_avg: bool = True) -> torch.Tensor:
        w = self.layers(ops.normalize_2nd_moment(z.float()))  # [B, w_dim]
        if self.training and update_w_avg:
            self.w_avg.copy_(w.detach().mean(dim=0).lerp(self.w_avg, W_AVG_BETA))
        ws = w.unsqueeze(1).expand(-1, self.num_ws, -1)  # [B, num_ws, w_dim]
        if truncation_psi != 1:
            ws = self.w_avg.lerp(ws, truncation_psi)
        return ws


class ConditionedStyle(nn.Module):
    """Style s [B, in_channels] of one layer from w [B, w_dim] and the condition c [B, f_dim]."""

    def __init__(self, w_dim: int, f_dim: int, mlp_dim: int, channels: int, mode: str,
                 lr_mult: float = STYLE_MLP_LR):
        super().__init__()
        self.mode = mode
        hidden = (f_dim + mlp_dim) // 2
        if mode == "concat":
            self.text_mlp = _mlp([f_dim, hidden, mlp_dim], "lrelu", lr_mult)
            self.affine = FullyConnected(mlp_dim + w_dim, channels, bias_init=1.0)
        elif mode == "scale_bias":
            self.affine = FullyConnected(w_dim, channels, bias_init=1.0)
            # The last layer of each MLP has lr multiplier 1 (official code).
            self.scale_mlp = nn.Sequential(*_mlp([f_dim, hidden, mlp_dim], "lrelu", lr_mult),
                                           FullyConnected(mlp_dim, channels))
            self.bias_mlp = nn.Sequential(*_mlp([f_dim, hidden, mlp_dim], "lrelu", lr_mult),
                                          FullyConnected(mlp_dim, channels))
        else:
            raise ValueError(f"style mode must be 'concat' or 'scale_bias', got {mode!r}")

    def forward(self, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        if self.mode == "concat":
            u = self.text_mlp(c)  # [B, mlp_dim]
            return self.affine(torch.cat([u, w], dim=1))  # [B, channels]
        return self.bias_mlp(c) + self.affine(w) * self.scale_mlp(c)  # [B, channels]


class StyledConv(nn.Module):
    """Modulated/demodulated 3x3 conv (optionally 2x upsampling) + noise + bias + lrelu."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int, up: bool,
                 style: ConditionedStyle, conv_clamp: float | None):
        super().__init__()
        self.resolution, self.up, self.conv_clamp = resolution, up, conv_clamp
        self.style = style
        # Demodulation normalises the weight, so no equalised-lr gain is needed here.
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def forward(self, x: torch.Tensor, w: torch.Tensor, c: torch.Tensor, noise_mode: str,
                gain: float = 1.0) -> torch.Tensor:
        s = self.style(w, c)  # [B, I]
        d = ops.demodulation(self.weight, s)  # [B, O]
        # Modulate the activations instead of the weights: one convolution shared by the whole
        # batch (the official "non-fused" path), instead of a grouped conv per sample.
        x = x * s.reshape(*s.shape, 1, 1)  # [B, I, H, W]
        if self.up:
            x = ops.conv_up2x(x, self.weight)  # [B, O, 2H, 2W]
        else:
            x = ops.conv2d(x, self.weight, padding=1)  # [B, O, H, W]
        # lrelu(g * v) = g * lrelu(v) for g > 0: the activation gain sqrt(2)*gain folds into the
        # demodulation, bias and noise scales, so no separate pass scales the activations.
        g = ops.LRELU_GAIN * gain
        x = torch.addcmul((self.bias * g).reshape(1, -1, 1, 1), x, (d * g).reshape(*d.shape, 1, 1))
        if noise_mode == "random":
            r = self.resolution
            noise = torch.randn(x.shape[0], 1, r, r, dtype=x.dtype, device=x.device)
            x = x + noise * (self.noise_strength * g)  # [B, 1, H, W] broadcast over channels
        elif noise_mode == "const":
            x = x + self.noise_const * (self.noise_strength * g)
        x = F.leaky_relu(x, ops.LRELU_SLOPE)
        if self.conv_clamp is not None:
            x = x.clamp(-self.conv_clamp * gain, self.conv_clamp * gain)
        return x


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB without demodulation: [B, C, H, W] -> [B, 3, H, W]."""

    def __init__(self, in_channels: int, img_channels: int, style: ConditionedStyle,
                 conv_clamp: float | None):
        super().__init__()
        self.style, self.conv_clamp = style, conv_clamp
        self.weight = nn.Parameter(torch.randn(img_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        s = self.style(w, c) * self.weight_gain  # [B, C]
        # Fold the per-sample style into a per-sample [3, C] matrix: a batched matmul over pixels
        # costs less than scaling the whole activation first.
        m = self.weight.flatten(1).unsqueeze(0) * s.unsqueeze(1)  # [B, 3, C]
        b, ch, h, wd = x.shape
        # x is channels_last, so [B, H*W, C] is a free view of it; one batch-B matmul with the
        # bias added inside (torch.matmul would broadcast to B*H tiny products instead).
        y = torch.baddbmm(self.bias.reshape(1, 1, -1), x.permute(0, 2, 3, 1).reshape(b, h * wd, ch),
                          m.transpose(1, 2))  # [B, H*W, 3]
        y = y.reshape(b, h, wd, -1).permute(0, 3, 1, 2)  # [B, 3, H, W], channels_last strides
        if self.conv_clamp is not None:
            y = y.clamp(-self.conv_clamp, self.conv_clamp)
        return y


class SynthesisBlock(nn.Module):
    """One resolution of the 'skip' generator: (up-)conv, conv, toRGB; ws: [B, n, w_dim]."""

    def __init__(self, in_channels: int, out_channels: int, resolution: int, img_channels: int,
                 w_dim: int, f_dim: int, mlp_dim: int, mode: str, conv_clamp: float | None,
                 lr_mult: float = STYLE_MLP_LR):
        super().__init__()
        self.resolution = resolution

        def style(ch: int) -> ConditionedStyle:
            return ConditionedStyle(w_dim, f_dim, mlp_dim, ch, mode, lr_mult)

        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
            self.conv0 = None
        else:
            self.conv0 = StyledConv(in_channels, out_channels, resolution, True, style(in_channels),
                                    conv_clamp)
        self.conv1 = StyledConv(out_channels, out_channels, resolution, False, style(out_channels),
                                conv_clamp)
        self.torgb = ToRGB(out_channels, img_channels, style(out_channels), conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor,
                c: torch.Tensor, noise_mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.conv0 is None:
            x = self.const.unsqueeze(0).expand(ws.shape[0], -1, -1, -1)  # [B, C, 4, 4]
            x = x.contiguous(memory_format=MEMORY_FORMAT)
            x = self.conv1(x, ws[:, 0], c, noise_mode)
        else:
            x = self.conv0(x, ws[:, 0], c, noise_mode)  # [B, C, R, R]
            x = self.conv1(x, ws[:, 1], c, noise_mode)
        y = self.torgb(x, ws[:, self.num_conv], c)  # [B, 3, R, R]
        img = y if img is None else ops.upsample2x(img) + y
        return x, img


class SynthesisNetwork(nn.Module):
    """ws [B, num_ws, w_dim], c [B, f_dim] -> img [B, 3, R, R]."""

    def __init__(self, w_dim: int, f_dim: int, img_resolution: int, img_channels: int,
                 channel_base: int, channel_max: int, change_resolution: int, mlp_dim: int,
                 conv_clamp: float | None, lr_mult: float = STYLE_MLP_LR):
        super().__init__()
        log2 = _check_resolution(img_resolution)
        self.resolutions = [2 ** i for i in range(2, log2 + 1)]
        self.blocks = nn.ModuleDict()
        self.num_ws = 0
        for res in self.resolutions:
            cin = _channels(res // 2, channel_base, channel_max) if res > 4 else 0
            cout = _channels(res, channel_base, channel_max)
            mode = "concat" if res <= change_resolution else "scale_bias"
            block = SynthesisBlock(cin, cout, res, img_channels, w_dim, f_dim, mlp_dim, mode,
                                   conv_clamp, lr_mult)
            self.blocks[f"b{res}"] = block
            self.num_ws += block.num_conv
        self.num_ws += 1  # the last toRGB; every other toRGB shares w with the next block's conv0

    def forward(self, ws: torch.Tensor, c: torch.Tensor, noise_mode: str = "random") -> torch.Tensor:
        if ws.ndim != 3 or ws.shape[1] != self.num_ws:
            raise ValueError(f"ws must be [B, {self.num_ws}, w_dim], got {list(ws.shape)}")
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        x = img = None
        i = 0
        for block in self.blocks.values():
            n = block.num_conv
            x, img = block(x, img, ws[:, i:i + n + 1], c, noise_mode)
            i += n
        return img.contiguous()  # [B, 3, R, R], standard layout for callers


class Generator(nn.Module):
    """LAFITE generator: z [B, z_dim] and condition c [B, c_dim] -> image [B, 3, R, R] (~[-1, 1]).

    c is the (unit-norm) CLIP-space feature: the pseudo text feature while training
    language-free, a text embedding at inference.
    """

    def __init__(self, z_dim: int = 512, c_dim: int = 512, w_dim: int = 512,
                 img_resolution: int = 256, img_channels: int = 3, channel_base: int = 32768,
                 channel_max: int = 512, mapping_layers: int = 8, change_resolution: int = 256,
                 conv_clamp: float | None = None, style_mlp_dim: int | None = None,
                 style_lr_mult: float = STYLE_MLP_LR):
        super().__init__()
        style_mlp_dim = style_mlp_dim or w_dim
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, c_dim, img_resolution, img_channels, channel_base,
                                          channel_max, change_resolution, style_mlp_dim, conv_clamp,
                                          style_lr_mult)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, mapping_layers, style_lr_mult)

    def _check(self, z: torch.Tensor, c: torch.Tensor) -> None:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must be [B, {self.z_dim}], got {list(z.shape)}")
        if c.ndim != 2 or c.shape != (z.shape[0], self.c_dim):
            raise ValueError(f"c must be [{z.shape[0]}, {self.c_dim}], got {list(c.shape)}")

    def forward(self, z: torch.Tensor, c: torch.Tensor, truncation_psi: float = 1.0,
                noise_mode: str = "random", style_mix_prob: float = 0.0) -> torch.Tensor:
        self._check(z, c)
        ws = self.mapping(z, truncation_psi)  # [B, num_ws, w_dim]
        if style_mix_prob > 0 and torch.rand([]).item() < style_mix_prob:
            # Style mixing regularisation: from a random layer on, use the w of a second z.
            cutoff = int(torch.randint(1, self.num_ws, []).item())
            ws2 = self.mapping(torch.randn_like(z), truncation_psi, update_w_avg=False)
            ws = torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)
        return self.synthesis(ws, c.float(), noise_mode)  # [B, 3, R, R]


class DiscriminatorBlock(nn.Module):
    """Residual block at one resolution: [B, C, R, R] -> [B, C', R/2, R/2]."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int,
                 conv_clamp: float | None):
        super().__init__()
        self.conv_clamp = conv_clamp
        if in_channels == 0:  # the first block reads the image
            self.fromrgb = _ConvWeights(img_channels, tmp_channels, 1, bias=True)
        self.conv0 = _ConvWeights(tmp_channels, tmp_channels, 3, bias=True)
        self.conv1 = _ConvWeights(tmp_channels, out_channels, 3, bias=True)
        self.skip = _ConvWeights(tmp_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> torch.Tensor:
        clamp = self.conv_clamp
        if x is None:
            x = _lrelu_conv(self.fromrgb, img, 1.0, clamp)  # [B, C, R, R]
        half = math.sqrt(0.5)  # residual branches are scaled so their sum keeps unit variance
        y = _conv1x1(ops.downsample2x(x), self.skip.scaled(half))  # [B, C', R/2, R/2]
        x = _lrelu_conv(self.conv0, x, 1.0, clamp)  # [B, C, R, R]
        x = _lrelu_conv(self.conv1, x, half, clamp, down=True)  # [B, C', R/2, R/2]
        return y + x


def _conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """1x1 conv as a matmul over the channels_last view (oneDNN has no fast 1x1 path here)."""
    b, _, h, w = x.shape
    x = x.permute(0, 2, 3, 1).reshape(b * h * w, -1)  # [BHW, I], a free view when channels_last
    # The weight as a contiguous [I, O] copy (tiny): autograd then forms its gradient as
    # x^T @ grad ([I, BHW] @ [BHW, O]); F.linear's (grad^T @ x) is ~6x slower at I = 3 (fromrgb).
    wt = weight.flatten(1).t().contiguous()  # [I, O]
    y = x @ wt if bias is None else torch.addmm(bias, x, wt)  # [BHW, O]
    return y.reshape(b, h, w, -1).permute(0, 3, 1, 2)  # [B, O, H, W], channels_last strides


def _lrelu_conv(layer: _ConvWeights, x: torch.Tensor, gain: float, clamp: float | None,
                down: bool = False) -> torch.Tensor:
    """StyleGAN2 Conv2dLayer with lrelu: lrelu(conv(x, w) + b) * sqrt(2) * gain, clamped.

    The activation gain is folded into the weights and bias (lrelu(g v) = g lrelu(v), g > 0), so
    the convolution's own bias add is the only pass before the activation.
    """
    g = ops.LRELU_GAIN * gain
    w, b = layer.scaled(g), layer.bias * g
    k = w.shape[-1]
    if down:
        # StyleGAN2's conv2d_resample(down=2): FIR filter with padding 2, then a stride-2 conv.
        x = ops.conv2d(ops.blur(x, pad=2), w, b, stride=2)
    elif k == 1:
        x = _conv1x1(x, w, b)
    else:
        x = ops.conv2d(x, w, b, padding=k // 2)
    x = F.leaky_relu(x, ops.LRELU_SLOPE)
    if clamp is not None:
        x = x.clamp(-clamp * gain, clamp * gain)
    return x


class _ConvWeights(nn.Module):
    """Equalised-learning-rate conv weights (applied by the caller's fused code path)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel * kernel)

    def scaled(self, gain: float = 1.0) -> torch.Tensor:
        return self.weight * (self.weight_gain * gain)


class DiscriminatorEpilogue(nn.Module):
    """4x4 features -> (realness [B], semantic feature f_s [B, f_dim])."""

    def __init__(self, channels: int, f_dim: int, mbstd_group_size: int, conv_clamp: float | None):
        super().__init__()
        self.mbstd_group_size, self.conv_clamp = mbstd_group_size, conv_clamp
        self.conv = _ConvWeights(channels + 1, channels, 3, bias=True)
        self.fc = FullyConnected(channels * 16, channels, activation="lrelu")
        self.out = FullyConnected(channels, 1)
        self.features = FullyConnected(channels, f_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = ops.minibatch_stddev(x, self.mbstd_group_size)  # [B, C+1, 4, 4]
        x = _lrelu_conv(self.conv, x, 1.0, self.conv_clamp)  # [B, C, 4, 4]
        h = self.fc(x.flatten(1))  # [B, C]
        return self.out(h).squeeze(1), self.features(h)  # [B], [B, f_dim]


class Discriminator(nn.Module):
    """LAFITE discriminator: img [B, 3, R, R], c [B, c_dim] -> (logits [B], features [B, c_dim]).

    ``features`` is f_s(x) (not normalised); ``logits`` already include the projection term.
    """

    def __init__(self, c_dim: int = 512, img_resolution: int = 256, img_channels: int = 3,
                 channel_base: int = 32768, channel_max: int = 512, mbstd_group_size: int = 4,
                 projection: str = "per_sample", conv_clamp: float | None = None):
        super().__init__()
        if projection not in ("per_sample", "batch_sum"):
            raise ValueError(f"projection must be 'per_sample' or 'batch_sum', got {projection!r}")
        log2 = _check_resolution(img_resolution)
        self.c_dim, self.img_resolution, self.img_channels = c_dim, img_resolution, img_channels
        self.projection = projection
        self.blocks = nn.ModuleDict()
        for res in [2 ** i for i in range(log2, 2, -1)]:
            cin = _channels(res, channel_base, channel_max) if res < img_resolution else 0
            self.blocks[f"b{res}"] = DiscriminatorBlock(
                cin, _channels(res, channel_base, channel_max),
                _channels(res // 2, channel_base, channel_max), img_channels, conv_clamp)
        self.epilogue = DiscriminatorEpilogue(_channels(4, channel_base, channel_max), c_dim,
                                              mbstd_group_size, conv_clamp)

    def forward(self, img: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.img_resolution
        if img.ndim != 4 or img.shape[1:] != (self.img_channels, r, r):
            raise ValueError(f"img must be [B, {self.img_channels}, {r}, {r}], got {list(img.shape)}")
        if c.ndim != 2 or c.shape != (img.shape[0], self.c_dim):
            raise ValueError(f"c must be [{img.shape[0]}, {self.c_dim}], got {list(c.shape)}")
        x = None
        img = img.contiguous(memory_format=MEMORY_FORMAT)
        for block in self.blocks.values():
            x = block(x, img)  # [B, C, R/2, R/2] ... [B, C, 4, 4]
        out, f_s = self.epilogue(x)  # [B], [B, c_dim]
        proj = (f_s * c).sum(dim=1)  # [B]: <f_s(x_i), c_i>
        if self.projection == "batch_sum":
            proj = proj.sum().expand_as(out)  # official code: one batch-wide sum for every sample
        return out + proj, f_s
