"""Build, save and load Stable-Diffusion-layout pipelines offline.

``build_components(cfg)`` makes the five parts of an SD 1.x pipeline from configs alone (random
weights): UNet, VAE, CLIP text encoder, CLIP tokenizer, DDPM training scheduler.
``save_pipeline`` writes them with ``save_pretrained`` as a diffusers directory that plain
``StableDiffusionPipeline.from_pretrained(dir)`` loads. ``load_pipeline_dir`` is the one way
langfree opens any local SD-style directory: it fails at once, saying what to pass, for a hub id
(this machine is offline) or a missing directory, and refuses a silently empty tokenizer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from langfree.families.sd.config import SCHEDULE, SDConfig
from langfree.families.sd.tokenizer import CLIP_VOCAB_SIZE, CONTEXT_LENGTH, build_clip_tokenizer

SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class SDComponents:
    """The parts of an SD pipeline langfree trains or conditions with (no safety checker)."""

    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: Any
    scheduler: Any  # the training (noise-adding) scheduler

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)


def build_unet(cfg: SDConfig):
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=cfg.latent_resolution,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=tuple(cfg.unet_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * n,   # cross-attention at every level, as SD
        up_block_types=("CrossAttnUpBlock2D",) * n,      # (SD leaves the lowest level plain)
        cross_attention_dim=cfg.text_width,
        attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_groups,
    )


def build_vae(cfg: SDConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels),
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_groups,
        sample_size=cfg.resolution,
        scaling_factor=1.0,  # the SD family measures it after the VAE stage (SD: 0.18215)
    )


def build_text_encoder(cfg: SDConfig):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=cfg.text_width,
        intermediate_size=cfg.text_ff,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=CONTEXT_LENGTH,
        bos_token_id=CLIP_VOCAB_SIZE - 2,
        eos_token_id=CLIP_VOCAB_SIZE - 1,  # pooled output at the first <|endoftext|>
        pad_token_id=CLIP_VOCAB_SIZE - 1,
    )
    return CLIPTextModel(config)


def build_train_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULE, clip_sample=False, prediction_type="epsilon")


def sampling_scheduler(kind: str, train_scheduler_config: dict | None = None):
    """A sampling scheduler with the training schedule's betas (diffusers ``from_config``)."""
    from diffusers import DDIMScheduler, DDPMScheduler, PNDMScheduler

    classes = {"ddim": DDIMScheduler, "pndm": PNDMScheduler, "ddpm": DDPMScheduler}
    if kind not in classes:
        raise ValueError(f"scheduler {kind!r}: use one of {', '.join(classes)}")
    base = dict(train_scheduler_config or {**SCHEDULE, "prediction_type": "epsilon"})
    # diffusers' private keys: "_use_default_values" would make from_config drop our values
    base = {k: v for k, v in base.items() if not k.startswith("_")}
    extra = {"set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False}
    if kind == "pndm":
        extra = {"set_alpha_to_one": False, "steps_offset": 1, "skip_prk_steps": True}
    return classes[kind].from_config({**base, **extra})


def build_components(cfg: SDConfig, seed: int = 0) -> SDComponents:
    """Random-initialised SD parts for ``cfg`` (weights depend only on ``seed``)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet, vae, text_encoder = build_unet(cfg), build_vae(cfg), build_text_encoder(cfg)
    return SDComponents(unet, vae, text_encoder, build_clip_tokenizer(), build_train_scheduler())


def to_pipeline(parts: SDComponents, scheduler: str = "ddim"):
    """A diffusers StableDiffusionPipeline over ``parts`` (no safety checker: offline, tiny)."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer,
        unet=parts.unet, scheduler=sampling_scheduler(scheduler, dict(parts.scheduler.config)),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def save_pipeline(parts: SDComponents, dirpath: str | Path, scheduler: str = "pndm") -> Path:
    """Write ``parts`` as a diffusers directory (safetensors), loadable by plain diffusers.

    ``scheduler/`` holds a sampling scheduler (SD 1.x ships PNDM); the tokenizer directory also
    gets vocab.json/merges.txt, the SD 1.x files, beside transformers' tokenizer.json."""
    from langfree.families.sd.tokenizer import write_vocab_files

    dirpath = Path(dirpath)
    to_pipeline(parts, scheduler).save_pretrained(dirpath, safe_serialization=True)
    write_vocab_files(dirpath / "tokenizer")
    return dirpath


def check_pipeline_dir(spec: str | os.PathLike, option: str = "--pretrained_model_name_or_path") -> Path:
    """``spec`` as an existing local pipeline directory, or a ValueError saying what to pass."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "model_index.json").is_file():
        missing = [s for s in SUBFOLDERS if not (path / s).is_dir()]
        if missing:
            raise ValueError(f"{option} {spec}: the pipeline directory lacks {', '.join(missing)}/; "
                             "pass a Stable Diffusion directory (unet, vae, text_encoder, "
                             "tokenizer, scheduler), e.g. one written by `langfree train sd`")
        return path
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    looks_like_hub = "/" in str(spec) and not path.exists() and not str(spec).startswith((".", "/", "~"))
    if path.is_dir():
        why = "is a directory without model_index.json (not a diffusers pipeline)"
    elif looks_like_hub:
        why = ("looks like a hub id, and this machine has no hub access"
               + (" (HF_HUB_OFFLINE=1)" if offline else ""))
    else:
        why = "does not exist"
    raise ValueError(f"{option} {spec} {why}: pass a local Stable Diffusion pipeline directory "
                     "(model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/), "
                     "e.g. the output of `langfree train sd` or `langfree quickstart --family "
                     "custom-diffusion` (DIR/base)")


def check_tokenizer_against(tokenizer, text_encoder, where: str) -> None:
    """The tokenizer must cover the text encoder's embedding table and read ordinary words."""
    from langfree.families.sd.tokenizer import check_tokenizer

    rows = text_encoder.get_input_embeddings().num_embeddings
    check_tokenizer(tokenizer, where, expected=min(rows, CLIP_VOCAB_SIZE))
    if len(tokenizer) > rows:
        raise ValueError(f"{where} has {len(tokenizer)} tokens but the text encoder only {rows} "
                         "embedding rows; the directory mixes two models")


def load_pipeline_dir(spec: str | os.PathLike, option: str = "--pretrained_model_name_or_path") -> SDComponents:
    """Open a local SD-style pipeline directory (fp32, CPU), checked; see ``check_pipeline_dir``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    path = check_pipeline_dir(spec, option)
    kw = {"local_files_only": True}
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer", **kw)
    text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder", **kw)
    check_tokenizer_against(tokenizer, text_encoder, f"{option} {spec}: tokenizer/")
    unet = UNet2DConditionModel.from_pretrained(path / "unet", **kw)
    vae = AutoencoderKL.from_pretrained(path / "vae", **kw)
    # training always adds noise with DDPM over the pipeline's own betas
    scheduler = DDPMScheduler.from_pretrained(path / "scheduler", **kw)
    for m in (unet, vae, text_encoder):
        m.float().eval().requires_grad_(False)
    return SDComponents(unet, vae, text_encoder, tokenizer, scheduler)


def state_digest(*modules: nn.Module) -> str:
    """A content hash (sha256 over names, shapes and bytes) of modules' state dicts."""
    import hashlib

    h = hashlib.sha256()
    for m in modules:
        for name, t in sorted(m.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
