"""DALL·E family config and sampling options.

Legend (paper / DALLE-pytorch → field): 16 384 BPE vocab → ``text_vocab`` (the trained
tokenizer's size; filled from it); 256 text tokens → ``text_len``; 8 192 codes → ``image_vocab``
and 32×32 → ``image_grid`` (both filled from the VQGAN); ``null_cond_prob`` → caption dropout to
the null (all-pad) text for classifier-free guidance; ``filter_thres`` → top-k keeping the
``(1 - filter_thres)`` share of the image vocabulary; ``cond_scale`` → ``guidance_scale``.

Conditioning (``condition``): "text" is the paper's [BOS, text tokens, image tokens]; "clip" is
language-free (CLIP-GEN, Wang et al. 2022, on VQGAN + GPT; LAFITE's pseudo text features): the
prefix is ``prefix_tokens`` tokens linearly projected from an L2-normalised CLIP embedding h
(``clip_dim`` = the encoder's width), trained on the image's own embedding perturbed as
LAFITE-G does, h̃ = normalize(î + ξ·ε̂) with ξ = ``clip_noise`` (ε̂ a random unit direction),
and sampled from the prompt's text embedding t̂. The null condition for guidance is the zero
embedding (its prefix is the projection's bias). No captions, no tokenizer, no text loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

CONDITIONS = ("text", "clip")


@dataclass(frozen=True)
class DalleConfig:
    # inputs: a tokenizer.json (None: trained on the archive's captions by ``configure``) and a
    # VQGAN run/snapshot (``langfree train vqgan`` or ``langfree convert taming-ckpt``)
    tokenizer: str | None = None
    vqgan: str | None = None
    # "text": BPE caption tokens; "clip": language-free CLIP-embedding prefix (module docstring)
    condition: str = "text"
    # clip mode: K prefix tokens from the embedding; clip_dim is filled from the encoder;
    # clip_noise ξ: official LAFITE-G 0.75/0.25 = 3 (cos(h̃, î) ≈ 0.32, pretrained CLIP's gap);
    # a small CLIP with cos(t̂, î) = c wants ξ = sqrt(1/c² - 1) (lafite noise_for_cosine(c, 1))
    prefix_tokens: int = 4
    clip_dim: int = 512
    clip_noise: float = 3.0
    # tokens (text_vocab / image_vocab / image_grid are filled from the tokenizer and VQGAN)
    text_vocab: int = 16384
    text_len: int = 256
    image_vocab: int = 8192
    image_grid: int = 32
    # transformer
    dim: int = 512
    depth: int = 8
    heads: int = 8
    ff_mult: int = 4
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    # objective: (CE_text + image_loss_weight·CE_image) / (1 + image_loss_weight), paper 7
    image_loss_weight: float = 7.0
    bpe_dropout: float = 0.1  # training only, never at generation
    null_cond_prob: float = 0.1  # caption (clip: embedding) dropout for classifier-free guidance
    # code sets per image in the sidecar: the plain image + (augment_sets - 1) paper crops
    # (augment.py; 0 or 1 = the plain image only)
    augment_sets: int = 4
    # optimiser: AdamW, linear warm-up then cosine to lr_min_ratio·lr, clip 1.0
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.96)
    warmup_kimg: float = 2.0
    lr_min_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # the EMA's half-life is capped at ema_rampup · images seen (StyleGAN's 0.05; None = the
    # plain decay): a 0.999 EMA alone still holds 78 % of the random initial weights after 250
    # steps, so a short run's snapshots would sample from mostly untrained weights
    ema_rampup: float | None = 0.05

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {', '.join(CONDITIONS)}, got "
                             f"{self.condition!r}")
        if self.clip_noise < 0:
            raise ValueError(f"clip_noise must be >= 0, got {self.clip_noise}")
        for name in ("text_vocab", "text_len", "image_vocab", "image_grid", "depth",
                     "prefix_tokens", "clip_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.bpe_dropout < 1.0 or not 0.0 <= self.null_cond_prob <= 1.0:
            raise ValueError("bpe_dropout must be in [0, 1) and null_cond_prob in [0, 1]")

    @property
    def image_tokens(self) -> int:
        return self.image_grid ** 2

    @property
    def prefix_len(self) -> int:
        """Positions before the first image token: [BOS, text] or the K embedding tokens."""
        return self.text_len + 1 if self.condition == "text" else self.prefix_tokens

    @property
    def seq_len(self) -> int:
        """Positions the transformer runs over: the prefix + all image tokens but the last."""
        return self.prefix_len + self.image_tokens - 1


PRESETS: dict[str, DalleConfig] = {
    "paper": DalleConfig(dim=3968, depth=64, heads=62),  # 12 B: the paper's geometry, for scale
    "base": DalleConfig(),
    # CPU: 32 px shapes, 8×8 codes, captions of ≤ 12 BPE tokens
    "shapes32": DalleConfig(text_vocab=512, text_len=16, image_vocab=512, image_grid=8,
                            dim=256, depth=4, heads=4, lr=1e-3, warmup_kimg=1.0),
    # The quickstart's: a quarter of shapes32's width (a step 0.5 s instead of 2.4 s at one
    # thread), so its 1 250 steps fit the CPU's minutes
    "shapes32-quick": DalleConfig(text_vocab=512, text_len=16, image_vocab=512, image_grid=8,
                                  dim=128, depth=4, heads=4, lr=1e-3, warmup_kimg=1.0),
    # tests
    "tiny": DalleConfig(text_vocab=300, text_len=6, image_vocab=16, image_grid=3, dim=32,
                        depth=2, heads=2, ff_mult=2, augment_sets=0, warmup_kimg=0.0),
}


def preset(name: str, **overrides) -> DalleConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown DALL·E preset {name!r}; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


@dataclass(frozen=True)
class DalleSampleOptions:
    """Sampling options (UI/CLI ranges in the field metadata)."""

    filter_thres: float = field(default=0.9, metadata={
        "min": 0.0, "max": 0.999, "help": "top-k: keep the (1 - filter_thres) share of the image "
        "vocabulary with the highest logits (0.9: the top 10 %)"})
    temperature: float = field(default=1.0, metadata={
        "min": 0.05, "max": 3.0, "help": "softmax temperature of the image tokens"})
    guidance_scale: float = field(default=3.0, metadata={
        "min": 0.0, "max": 20.0, "help": "classifier-free guidance: null + s·(cond - null); 1 = "
        "unguided (the null rows are then not computed)"})
    rerank: int = field(default=1, metadata={
        "min": 1, "max": 64, "help": "draw this many candidates per prompt and keep the one the "
        "encoder scores highest (text-image cosine); 1 = off"})

    def __post_init__(self) -> None:
        if not 0.0 <= self.filter_thres < 1.0:
            raise ValueError(f"filter_thres must be in [0, 1), got {self.filter_thres}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.rerank < 1:
            raise ValueError(f"rerank must be >= 1, got {self.rerank}")
