"""Custom Diffusion's attention processors (Kumari et al. 2023, §3.1 "Rank of weight updates").

Fine-tuning only the cross-attention projections that read the text features (W_k, W_v), or also
W_q and W_out (``crossattn``), personalises a diffusion model: 5 % of SD-1.x's parameters
(19.2 M for K/V, REFERENCE §5). The processor keeps its own trainable copies of those
projections, initialised from the frozen UNet's, under the attribute names diffusers uses
(``to_k_custom_diffusion`` ...), so a processor's state dict has diffusers' keys.

Gradients to K/V are blocked at text position 0 (the start token): its features are the same for
every prompt, and the official code detaches them so the update only learns from the prompt's
words. ``key = m·key + (1 − m)·key.detach()`` with ``m`` zero at position 0 is that detach.

Attention itself is ``F.scaled_dot_product_attention`` (a fused kernel; this is what runs in
place of xformers' memory-efficient attention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from langfree.families.custom_diffusion.concepts import FREEZE_MODELS


def _detach_position_zero(x: torch.Tensor) -> torch.Tensor:
    """x [B, T, C] with no gradient flowing through x[:, 0] (its value unchanged)."""
    keep = torch.ones_like(x)
    keep[:, :1] = 0.0
    return keep * x + (1 - keep) * x.detach()


class CustomDiffusionAttnProcessor(nn.Module):
    """Cross-attention with trainable K/V (and Q/out when ``train_q_out``) copies.

    hidden_size: the attention's inner width (attn.to_q.out_features);
    cross_attention_dim: the text feature width (attn.to_k.in_features).
    """

    def __init__(self, hidden_size: int, cross_attention_dim: int, train_kv: bool = True,
                 train_q_out: bool = False, out_bias: bool = True):
        super().__init__()
        self.train_kv, self.train_q_out = train_kv, train_q_out
        self.hidden_size, self.cross_attention_dim = hidden_size, cross_attention_dim
        if train_kv:
            self.to_k_custom_diffusion = nn.Linear(cross_attention_dim, hidden_size, bias=False)
            self.to_v_custom_diffusion = nn.Linear(cross_attention_dim, hidden_size, bias=False)
        if train_q_out:
            self.to_q_custom_diffusion = nn.Linear(hidden_size, hidden_size, bias=False)
            # a ModuleList [Linear, Dropout], so the keys read to_out_custom_diffusion.0.weight
            self.to_out_custom_diffusion = nn.ModuleList(
                [nn.Linear(hidden_size, hidden_size, bias=out_bias), nn.Dropout(0.0)])

    @classmethod
    def from_attention(cls, attn: nn.Module, train_kv: bool, train_q_out: bool):
        """A processor for ``attn`` whose copies start equal to attn's frozen projections."""
        proc = cls(attn.to_q.out_features, attn.to_k.in_features, train_kv, train_q_out,
                   out_bias=attn.to_out[0].bias is not None)
        with torch.no_grad():
            if train_kv:
                proc.to_k_custom_diffusion.weight.copy_(attn.to_k.weight)
                proc.to_v_custom_diffusion.weight.copy_(attn.to_v.weight)
            if train_q_out:
                proc.to_q_custom_diffusion.weight.copy_(attn.to_q.weight)
                proc.to_out_custom_diffusion[0].load_state_dict(attn.to_out[0].state_dict())
        return proc.to(attn.to_q.weight.device, attn.to_q.weight.dtype)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        four_d = hidden_states.ndim == 4
        if four_d:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)  # (B, HW, C)
        batch, _, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        to_q = self.to_q_custom_diffusion if self.train_q_out else attn.to_q
        query = to_q(hidden_states)                                          # (B, N, C)
        cross = encoder_hidden_states is not None
        if not cross:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        to_k = self.to_k_custom_diffusion if self.train_kv else attn.to_k
        to_v = self.to_v_custom_diffusion if self.train_kv else attn.to_v
        key, value = to_k(encoder_hidden_states), to_v(encoder_hidden_states)  # (B, T, C)
        if cross:
            key, value = _detach_position_zero(key), _detach_position_zero(value)

        heads = attn.heads
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key.shape[1], batch)
            attention_mask = attention_mask.view(batch, heads, -1, attention_mask.shape[-1])
        split = lambda t: t.view(batch, -1, heads, t.shape[-1] // heads).transpose(1, 2)
        q, k, v = split(query), split(key), split(value)                     # (B, heads, *, d)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=attn.scale)
        out = out.transpose(1, 2).reshape(batch, -1, heads * out.shape[-1])  # (B, N, C)

        to_out = self.to_out_custom_diffusion if self.train_q_out else attn.to_out
        out = to_out[1](to_out[0](out))
        if four_d:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def cross_attention_names(unet: nn.Module) -> list[str]:
    """Processor names (``...attn2.processor``) of the UNet's cross-attention layers."""
    from diffusers.models.attention_processor import Attention

    names = []
    for name, module in unet.named_modules():
        if isinstance(module, Attention) and module.is_cross_attention:
            names.append(name + ".processor")
    return names


def install(unet: nn.Module, freeze_model: str = "crossattn_kv") -> dict[str, CustomDiffusionAttnProcessor]:
    """Put a Custom Diffusion processor on every cross-attention layer of ``unet``.

    Returns {processor name: processor}; the names are diffusers' (``unet.attn_processors``
    keys), which prefix the keys of ``pytorch_custom_diffusion_weights``. Self-attention layers
    keep their processors. ``freeze_model="none"`` (token-only training) and ``"unet"`` (the
    whole UNet trains in place) install nothing.
    """
    if freeze_model not in FREEZE_MODELS:
        raise ValueError(f"--freeze_model {freeze_model!r}: use one of {', '.join(FREEZE_MODELS)}")
    if freeze_model in ("none", "unet"):
        return {}
    names = cross_attention_names(unet)
    if not names:
        raise ValueError("the UNet has no cross-attention layers; Custom Diffusion needs a "
                         "text-conditioned UNet (UNet2DConditionModel with CrossAttn blocks)")
    modules = dict(unet.named_modules())
    procs = {}
    for name in names:
        attn = modules[name.removesuffix(".processor")]
        proc = CustomDiffusionAttnProcessor.from_attention(
            attn, train_kv=True, train_q_out=freeze_model == "crossattn")
        attn.set_processor(proc)
        procs[name] = proc
    return procs


def installed(unet: nn.Module) -> dict[str, CustomDiffusionAttnProcessor]:
    """The Custom Diffusion processors currently on ``unet``, by diffusers processor name."""
    return {n: p for n, p in unet.attn_processors.items()
            if isinstance(p, CustomDiffusionAttnProcessor)}


class CustomDiffusionLayers(nn.Module):
    """The trained processors as one module (what snapshots and optimisers see).

    ``processors`` is keyed by the diffusers processor name with '.' -> '__' (ModuleDict keys
    cannot hold dots); ``diffusers_state_dict`` gives the file's key names."""

    def __init__(self, procs: dict[str, CustomDiffusionAttnProcessor]):
        super().__init__()
        self.names = list(procs)
        self.processors = nn.ModuleDict({n.replace(".", "__"): p for n, p in procs.items()})

    def by_name(self) -> dict[str, CustomDiffusionAttnProcessor]:
        return {n: self.processors[n.replace(".", "__")] for n in self.names}

    def diffusers_state_dict(self) -> dict[str, torch.Tensor]:
        """{``<processor name>.to_k_custom_diffusion.weight``: tensor, ...} (diffusers' keys)."""
        return {f"{name}.{k}": v for name, proc in self.by_name().items()
                for k, v in proc.state_dict().items()}


def trainable_parameter_names(unet: nn.Module, freeze_model: str) -> list[str]:
    """Names in ``unet.named_parameters()`` that ``freeze_model`` trains (selection by name)."""
    wanted = {"crossattn_kv": ("to_k_custom_diffusion", "to_v_custom_diffusion"),
              "crossattn": ("to_k_custom_diffusion", "to_v_custom_diffusion",
                            "to_q_custom_diffusion", "to_out_custom_diffusion"),
              "none": (), "unet": ()}[freeze_model]
    return [n for n, _ in unet.named_parameters()
            if ".processor." in n and any(w + "." in n for w in wanted)]
