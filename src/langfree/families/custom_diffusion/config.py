"""CustomDiffusionConfig: one Custom Diffusion run; its fields ARE the official script's options.

Every option of seed 004 is a field of the same name, so ``--instance_prompt X`` sets
``instance_prompt`` and the resolved config.json reads like the official command line.
Derived (resolved once, stored, so a snapshot never re-reads the inputs):
  concepts          from --instance_data_dir/--instance_prompt/--class_* or --concepts_list
  modifier_tokens   "<new1>+<new2>" -> ("<new1>", "<new2>")   (property)
  initializer_tokens "ktn+pll+ucd" -> ("ktn", "pll", "ucd")    (property)
Options that cannot work here fail at construction with one line: --push_to_hub and
--report_to wandb (need a network). Defaults are the official script's (REFERENCE §5), except
``resolution`` (None = the base pipeline's own size; the official 512 is SD-1.x's) and
``max_train_steps`` (250, the README's single-concept run).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from langfree.families.custom_diffusion.concepts import (
    FREEZE_MODELS,
    Concept,
    parse_modifier_tokens,
    read_concepts_list,
)


@dataclass(frozen=True)
class CustomDiffusionConfig:
    pretrained_model_name_or_path: str = ""
    instance_data_dir: str | None = None
    instance_prompt: str | None = None
    class_data_dir: str | None = None
    class_prompt: str | None = None
    concepts_list: str | None = None   # JSON file of concepts (read once, into ``concepts``)
    concepts: tuple[Concept, ...] = ()
    # --- prior preservation
    with_prior_preservation: bool = False
    real_prior: bool = False
    prior_loss_weight: float = 1.0
    num_class_images: int = 200
    class_generation_steps: int = 50   # sampler steps for generated class images (langfree)
    # --- data
    resolution: int | None = None      # None: the base VAE's sample_size
    hflip: bool = False
    noaug: bool = False
    # --- what is trained
    modifier_token: str | None = None   # "<new1>" or "<new1>+<new2>"
    initializer_token: str = "ktn+pll+ucd"
    freeze_model: str = "crossattn_kv"  # crossattn_kv | crossattn | none (token only) | unet (all)
    # --- optimisation (AdamW as the official script)
    train_batch_size: int = 4
    learning_rate: float = 1e-5
    scale_lr: bool = False
    gradient_accumulation_steps: int = 1
    num_processes: int = 1             # for scale_lr; the train command fills the world size
    lr_warmup_steps: int = 500
    max_train_steps: int = 250
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    set_grads_to_none: bool = False
    mask_per_element: bool = False     # False: the official mask normalisation (see loss.py)
    # --- run bookkeeping
    validation_prompt: str | None = None
    checkpointing_steps: int = 250
    output_dir: str = "custom-diffusion-model"
    seed: int = 42
    # --- accepted for the seed's command lines; what cannot run here fails in __post_init__
    push_to_hub: bool = False
    report_to: str = "tensorboard"
    enable_xformers_memory_efficient_attention: bool = False  # SDPA runs either way

    def __post_init__(self) -> None:
        if self.push_to_hub:
            raise ValueError("--push_to_hub needs a network connection to the Hugging Face Hub, "
                             "which this machine has not; drop it (the files are in --output_dir)")
        if self.report_to in ("wandb", "comet_ml", "all"):
            raise ValueError(f"--report_to {self.report_to} needs a network connection, which "
                             "this machine has not; drop it (langfree writes stats.jsonl and "
                             "TensorBoard logs in the run directory)")
        if not self.concepts:
            object.__setattr__(self, "concepts", self._read_concepts())
        parse_modifier_tokens(self.modifier_token)  # refuses repeats early
        if self.freeze_model not in FREEZE_MODELS:
            raise ValueError(f"--freeze_model {self.freeze_model!r}: use one of "
                             f"{', '.join(FREEZE_MODELS)}")
        if self.freeze_model == "none" and not self.modifier_tokens:
            raise ValueError("--freeze_model none trains only the modifier tokens: pass "
                             "--modifier_token '<new1>'")
        if self.with_prior_preservation:
            for c in self.concepts:
                if not c.class_data_dir or (not c.class_prompt and not self.real_prior):
                    raise ValueError("--with_prior_preservation needs --class_data_dir and "
                                     "--class_prompt (or both keys in every --concepts_list entry)")
        for name in ("train_batch_size", "max_train_steps", "gradient_accumulation_steps",
                     "num_processes", "checkpointing_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.resolution is not None and self.resolution < 8:
            raise ValueError(f"--resolution {self.resolution}: must be >= 8")

    def _read_concepts(self) -> tuple[Concept, ...]:
        if self.concepts_list:
            if self.instance_data_dir or self.instance_prompt:
                raise ValueError("pass either --concepts_list or --instance_data_dir and "
                                 "--instance_prompt, not both")
            return read_concepts_list(self.concepts_list)
        if self.instance_data_dir and self.instance_prompt:
            return (Concept(self.instance_prompt, self.instance_data_dir, self.class_prompt,
                            self.class_data_dir),)
        if self.instance_data_dir or self.instance_prompt:
            raise ValueError("pass both --instance_data_dir DIR and --instance_prompt TEXT "
                             "(or --concepts_list FILE.json)")
        return ()

    @property
    def modifier_tokens(self) -> tuple[str, ...]:
        return tuple(parse_modifier_tokens(self.modifier_token))

    @property
    def initializer_tokens(self) -> tuple[str, ...]:
        return tuple(parse_modifier_tokens(self.initializer_token)) or ("ktn",)

    @property
    def effective_learning_rate(self) -> float:
        """--scale_lr: lr × accumulation × batch × processes, ×2 with prior (official)."""
        lr = self.learning_rate
        if self.scale_lr:
            lr *= self.gradient_accumulation_steps * self.train_batch_size * self.num_processes
            if self.with_prior_preservation:
                lr *= 2.0
        return lr


@dataclass(frozen=True)
class CustomDiffusionSampleOptions:
    """Sampling options; defaults are the seed's inference call (100 steps, 6.0, η = 1)."""

    num_inference_steps: int = field(default=100, metadata={
        "min": 1, "max": 1000, "help": "denoising steps (seed: 100)"})
    guidance_scale: float = field(default=6.0, metadata={
        "min": 0.0, "max": 50.0, "help": "classifier-free guidance weight (seed: 6.0; 1 = off)"})
    eta: float = field(default=1.0, metadata={
        "min": 0.0, "max": 1.0, "help": "DDIM eta (seed: 1.0; 0 = deterministic)"})
    scheduler: str = field(default="ddim", metadata={
        "choices": ["ddim", "pndm", "ddpm"], "help": "sampler (diffusers scheduler class)"})


PRESETS: dict[str, CustomDiffusionConfig] = {
    "official": CustomDiffusionConfig(),
    # the quickstart scale: 32 px base, 5 instance images, CPU minutes
    "tiny": CustomDiffusionConfig(train_batch_size=2, learning_rate=1e-4, lr_warmup_steps=0,
                                  max_train_steps=200, num_class_images=40,
                                  class_generation_steps=25, hflip=True),
}


def replace(cfg: CustomDiffusionConfig, **changes) -> CustomDiffusionConfig:
    return dataclasses.replace(cfg, **changes)
