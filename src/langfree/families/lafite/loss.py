"""LAFITE losses (paper §3.3, official training/loss.py): one function per phase.

  G:    softplus(-D(G(z, h), h)) + itc·C(CLIP(view(G(z, h))), h) + itd·C(f_s(G(z, h)), h)
        [+ ms·mode_seeking_loss(G(z, h), G(z', h)), MSGAN, when mode_seeking_weight > 0]
  Greg: path length (StyleGAN2), weight pl_weight, every g_reg_interval steps
  D:    softplus(D(G(z, h), h)) + softplus(-D(x, h)) + itd·C(f_s(x), h)
  Dreg: R1 γ/2·|∇_x D(x, h)|², every d_reg_interval steps
C is a contrastive loss over the batch (``contrastive_loss``); h is the condition from
conditioning.py. Lazy regularisers are multiplied by their interval here (the loop expects the
gain already applied).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from langfree.families.lafite.config import LafiteConfig

CLIP_FULL_SIZE = 224  # the official crop/pad recipe targets 224-px CLIP towers


def contrastive_loss(a: torch.Tensor, b: torch.Tensor, temperature: float,
                     form: str = "infonce", lam: float = 0.5,
                     negatives: torch.Tensor | None = None) -> torch.Tensor:
    """Contrastive loss between paired rows of a [B, Da] and b [B, Db] (Da = Db); scalar.

    infonce (correct, default): logits_ij = cos(a_i, b_j) / τ;
        loss = lam·CE(rows → diagonal) + (1 - lam)·CE(columns → diagonal).
    official_exp_cos: logits_ij = exp(cos(a_i, b_j) / τ) fed to the same softmax — what the
        official code computes (its author notes it is incorrect but tuned the published
        hyper-parameters on it). Its extra ``·τ`` inside the log is a constant and is omitted.
    negatives [K, Db] (optional, no gradient): extra candidates for the rows direction, so each
        a_i picks b_i among B + K conditions (a MoCo-style queue; see ``ConditionBank``).
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"contrastive_loss: expected two [B, D] tensors, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    sim = a @ b.t()                                                     # [B, B] cosines
    if negatives is not None and len(negatives):
        extra = a @ F.normalize(negatives.detach(), dim=-1).t()         # [B, K]
        row_sim = torch.cat([sim, extra], dim=1)                        # [B, B + K]
    else:
        row_sim = sim
    scale = (lambda s: s / temperature) if form == "infonce" else (lambda s: torch.exp(s / temperature))
    target = torch.arange(a.shape[0], device=a.device)
    rows = F.cross_entropy(scale(row_sim), target)   # each a_i picks its b_i among all b (+ bank)
    cols = F.cross_entropy(scale(sim).t(), target)   # each b_j picks its a_j among all a
    return lam * rows + (1 - lam) * cols


class ConditionBank(nn.Module):
    """FIFO queue of recent conditions h, the extra negatives of the contrastive losses.

    Why: within a batch of 32 shapes images, colour and position alone tell almost every pair
    apart (7 colours x 9 positions), so in-batch InfoNCE never asks G or D for shape or size.
    Among K queued conditions many share colour and position and differ only in those, so the
    contrastive terms must use them. A buffer (saved with snapshots and resumable state); empty
    slots are not used until filled. Under several processes every rank pushes the whole global
    batch (all-gathered), so all ranks hold the same queue: the loop's per-tick buffer averaging
    leaves it unchanged and the saved queue is every rank's.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("bank", torch.zeros(size, dim))
        self.register_buffer("filled", torch.zeros([], dtype=torch.long))
        self.register_buffer("head", torch.zeros([], dtype=torch.long))

    def negatives(self) -> torch.Tensor:
        return self.bank[: int(self.filled)]                            # [K', D]

    @torch.no_grad()
    def push(self, h: torch.Tensor) -> None:
        size = self.bank.shape[0]
        h = _from_all_ranks(h.detach())[-size:]
        idx = (int(self.head) + torch.arange(len(h), device=h.device)) % size
        self.bank[idx] = h.to(self.bank.dtype)
        self.head.fill_((int(self.head) + len(h)) % size)
        self.filled.fill_(min(size, int(self.filled) + len(h)))


def _from_all_ranks(x: torch.Tensor) -> torch.Tensor:
    """[B, ...] on each rank -> [world·B, ...] in rank order (x itself in one process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def clip_view(img: torch.Tensor, image_size: int, mode: str = "auto") -> torch.Tensor:
    """What the CLIP image tower sees of a generated image [B, 3, R, R] in [-1, 1].

    auto, 224-px CLIPs (official recipe): R < 224 → pad with white at a random offset to 224;
    R >= 224 → random square crop of 0.5–1 of the side, resized to 224 (bicubic).
    Smaller CLIPs (e.g. langfree's 32-px small CLIP) and mode "none": the image unchanged (the
    encoder resizes); a crop would cut away the position the caption names.
    """
    if mode == "none" or image_size < CLIP_FULL_SIZE:
        return img
    R = img.shape[-1]
    if R < CLIP_FULL_SIZE:
        left = int(torch.randint(0, CLIP_FULL_SIZE - R + 1, ()))
        top = int(torch.randint(0, CLIP_FULL_SIZE - R + 1, ()))
        pad = (left, CLIP_FULL_SIZE - R - left, top, CLIP_FULL_SIZE - R - top)
        return F.pad(img, pad, value=1.0)                               # [B, 3, 224, 224]
    cut = int(torch.randint(R // 2, R + 1, ()))
    left = int(torch.randint(0, R - cut + 1, ()))
    top = int(torch.randint(0, R - cut + 1, ()))
    crop = img[:, :, top:top + cut, left:left + cut]
    return F.interpolate(crop, size=(CLIP_FULL_SIZE, CLIP_FULL_SIZE), mode="bicubic",
                         align_corners=False)                           # [B, 3, 224, 224]


def _generate(config: LafiteConfig, G: nn.Module, z: torch.Tensor, h: torch.Tensor,
              ramp: float = 1.0) -> torch.Tensor:
    """G(z, ramp·gain·h) with style mixing and random noise (training). -> [B, 3, R, R]"""
    return G(z, h * (config.g_condition_gain * ramp), noise_mode="random",
             style_mix_prob=config.style_mixing)


def condition_ramp(config: LafiteConfig, nimg: int) -> float:
    """Transitional conditioning (Shahbazi et al. 2022, "Collapse by Conditioning"): the
    strength of the condition in G's input, D's projection and the contrastive terms, rising
    linearly from 0 to 1 over the first ``condition_rampup_kimg`` (0 = conditioned from the
    start, the paper's LAFITE). G first learns to draw from z alone, so z keeps the variation
    no condition names once the condition comes in."""
    if config.condition_rampup_kimg <= 0:
        return 1.0
    return min(1.0, nimg / (config.condition_rampup_kimg * 1000.0))


def _contrastive(config: LafiteConfig, a: torch.Tensor, h: torch.Tensor,
                 negatives: torch.Tensor | None = None) -> torch.Tensor:
    return contrastive_loss(a, h, config.temperature, config.contrastive_form,
                            config.contrastive_lambda, negatives)


MEAN_ABS_GAUSSIAN_DIFF = 2 / math.sqrt(math.pi)  # E|z - z'| per component, z, z' ~ N(0, 1)


def mode_seeking_loss(img_a: torch.Tensor, img_b: torch.Tensor, z_a: torch.Tensor,
                      z_b: torch.Tensor, target: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Hinged MSGAN term for pairs that share a condition: img [M, 3, R, R] in [-1, 1], z [M, Z].

    ratio = d_img / (d_z / E[d_z]), d_img = mean |img_a - img_b| / 2 (pixels in [0, 1] units),
    d_z = mean |z_a - z_b|. Returns (loss = -min(ratio, target), ratio detached): the gradient
    is constant while two seeds differ less than ``target``, zero once they differ as much."""
    d_img = (img_a - img_b).abs().mean() / 2
    d_z = (z_a - z_b).abs().mean() / MEAN_ABS_GAUSSIAN_DIFF
    ratio = d_img / d_z.clamp(min=1e-8)
    return -ratio.clamp(max=target), ratio.detach()


def generator_loss(config: LafiteConfig, G: nn.Module, D: nn.Module, encoder, h: torch.Tensor,
                   negatives: torch.Tensor | None = None, ramp: float = 1.0,
                   ) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Phase G. h [B, D] unit conditions; ``ramp`` from ``condition_ramp``. Returns (loss,
    stats, the fakes detached)."""
    z = torch.randn(h.shape[0], config.z_dim, device=h.device)          # [B, z]
    fake = _generate(config, G, z, h, ramp)                              # [B, 3, R, R]
    logits, f_s = D(fake, h * ramp)                                      # [B], [B, c]
    adv = F.softplus(-logits).mean()
    loss = adv
    stats = {"G/adv": adv.detach(), "scores/fake": logits.detach().mean()}
    if config.clip_contrastive_weight > 0 and ramp > 0:
        if encoder is None:
            raise ValueError("clip_contrastive_weight (--itc) > 0 needs an encoder; pass "
                             "--encoder or set --itc 0")
        clip_emb = encoder.encode_image(clip_view(fake, encoder.image_size, config.clip_view))
        itc = _contrastive(config, clip_emb, h, negatives)
        loss = loss + config.clip_contrastive_weight * ramp * itc
        stats["G/itc"] = itc.detach()
        stats["G/clip_cos"] = (F.normalize(clip_emb, dim=-1) * h).sum(-1).mean().detach()
    if config.d_contrastive_weight > 0 and ramp > 0:
        itd = _contrastive(config, f_s, h, negatives)
        loss = loss + config.d_contrastive_weight * ramp * itd
        stats["G/itd"] = itd.detach()
    if config.mode_seeking_weight > 0:
        M = min(config.mode_seeking_batch, h.shape[0])
        z2 = torch.randn(M, config.z_dim, device=h.device)                  # [M, z]
        fake2 = _generate(config, G, z2, h[:M], ramp)                               # [M, 3, R, R]
        ms, ratio = mode_seeking_loss(fake[:M], fake2, z[:M], z2, config.mode_seeking_target)
        loss = loss + config.mode_seeking_weight * ms
        stats["G/seed_distance"] = ratio
    return loss, stats, fake.detach()


def path_length_loss(config: LafiteConfig, G: nn.Module, h: torch.Tensor, pl_mean: torch.Tensor,
                     ramp: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Phase Greg (StyleGAN2 path length). Updates ``pl_mean`` (0-d buffer) in place."""
    B = max(1, h.shape[0] // config.pl_batch_shrink)
    h = h[:B]
    z = torch.randn(B, config.z_dim, device=h.device)
    ws = G.mapping(z, 1.0)                                              # [B, num_ws, w]
    img = G.synthesis(ws, h * (config.g_condition_gain * ramp), noise_mode="random")  # [B, 3, R, R]
    R = img.shape[-1]
    pl_noise = torch.randn_like(img) / math.sqrt(R * R)
    (grads,) = torch.autograd.grad((img * pl_noise).sum(), ws, create_graph=True)
    lengths = grads.square().sum(2).mean(1).sqrt()                      # [B]
    mean = pl_mean.lerp(lengths.mean().detach(), config.pl_decay)
    pl_mean.copy_(mean)
    penalty = (lengths - mean).square().mean()
    # `img[:, 0, 0, 0] * 0` keeps every synthesis parameter in the graph (zero gradient) as
    # the official code does, so gradient all-reduce sees the same tensors on every process.
    loss = (penalty * config.pl_weight + img[:, 0, 0, 0].sum() * 0) * config.g_reg_interval
    return loss, {"G/pl_penalty": penalty.detach(), "G/pl_mean": mean.detach()}


def discriminator_loss(config: LafiteConfig, G: nn.Module, D: nn.Module, real: torch.Tensor,
                       h: torch.Tensor, negatives: torch.Tensor | None = None,
                       fake: torch.Tensor | None = None, ramp: float = 1.0,
                       ) -> tuple[torch.Tensor, dict]:
    """Phase D. real [B, 3, R, R] in [-1, 1], h [B, D]. G runs without gradients, unless
    ``fake`` [B, 3, R, R] (made from h, e.g. by this step's G phase) is given."""
    if fake is None:
        with torch.no_grad():
            z = torch.randn(h.shape[0], config.z_dim, device=h.device)
            fake = _generate(config, G, z, h, ramp)                      # [B, 3, R, R]
    fake_logits, _ = D(fake, h * ramp)                                  # [B]
    real_logits, f_s = D(real, h * ramp)                                # [B], [B, c]
    loss_fake = F.softplus(fake_logits).mean()
    loss_real = F.softplus(-real_logits).mean()
    loss = loss_fake + loss_real
    stats = {"D/fake": loss_fake.detach(), "D/real": loss_real.detach(),
             "scores/real": real_logits.detach().mean(),
             "scores/fake_d": fake_logits.detach().mean()}
    if config.d_contrastive_weight > 0 and ramp > 0:
        itd = _contrastive(config, f_s, h, negatives)
        loss = loss + config.d_contrastive_weight * ramp * itd
        stats["D/itd"] = itd.detach()
    return loss, stats


def r1_loss(config: LafiteConfig, D: nn.Module, real: torch.Tensor, h: torch.Tensor,
            ramp: float = 1.0) -> tuple[torch.Tensor, dict]:
    """Phase Dreg: lazy R1, γ/2·|∇_x D(x, ramp·h)|² times the interval."""
    real = real.detach().requires_grad_(True)
    logits, _ = D(real, h * ramp)                                              # [B]
    (grads,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    penalty = grads.square().sum([1, 2, 3]).mean()
    loss = (penalty * (config.r1_gamma / 2) + logits.sum() * 0) * config.d_reg_interval
    return loss, {"D/r1_penalty": penalty.detach()}
