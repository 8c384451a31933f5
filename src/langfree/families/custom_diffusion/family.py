"""CustomDiffusionFamily: personalise a frozen SD-layout base pipeline (Kumari et al. 2023).

Modules (names the loop sees):
  layers        CustomDiffusionLayers  trained: cross-attention K/V (+ Q/out) copies
  tokens        ModifierEmbedding      trained: one embedding row per modifier token
  unet, text_encoder, vae              the frozen base, *references* (spec + digest), never
                                       copied into snapshots; ``layers``/``tokens`` are
                                       installed inside them, so the loop must move them in
                                       place (``.to``), never copy them. With
                                       ``freeze_model="unet"`` (the full fine-tune baseline)
                                       the UNet itself trains and is saved, not referenced.
Data is family-owned: ``dataset()`` gives the instance (and class) images as a torch Dataset
under the loop's key contract (``data.ConceptImages``); the train command hands it to the loop
instead of an archive (``needs`` is empty), with the loop's batch = ``train_batch_size``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from langfree.families.base import LossOutput, Phase, Reference, adam
from langfree.families.custom_diffusion.attention import CustomDiffusionLayers, install
from langfree.families.custom_diffusion.config import (
    CustomDiffusionConfig,
    CustomDiffusionSampleOptions,
)
from langfree.families.custom_diffusion.loss import custom_diffusion_loss, noisy_latents
from langfree.families.custom_diffusion.tokens import install_modifier_tokens
from langfree.families.custom_diffusion.weights import save_custom_diffusion

BASE_MODULES = ("unet", "text_encoder", "vae")
BASE_RECORD = "custom_diffusion_base.json"


class CustomDiffusionFamily:
    name = "custom-diffusion"
    Config = CustomDiffusionConfig
    SampleOptions = CustomDiffusionSampleOptions
    uses_negative_prompt = True  # classifier-free guidance against the negative prompt
    needs = frozenset()

    def __init__(self, config: CustomDiffusionConfig, encoder=None):
        self.config, self.encoder = config, encoder
        self.parts = None       # SDComponents of the base, attached by ``attach_base``
        self.layers: CustomDiffusionLayers | None = None
        self.tokens = None
        self.data = None
        self._digests: dict[str, str] = {}
        self._optimizers = None

    # ------------------------------------------------------------------ base pipeline
    def attach_base(self, parts=None) -> None:
        """Load (or take) the base pipeline, record its digests, install the trainable parts."""
        if self.parts is not None:
            return
        from langfree.families.sd.pipeline import load_pipeline_dir, state_digest

        parts = parts or load_pipeline_dir(self.config.pretrained_model_name_or_path)
        self._digests = {n: state_digest(getattr(parts, n)) for n in BASE_MODULES}
        if self.config.freeze_model == "unet":
            parts.unet.requires_grad_(True)
        with torch.random.fork_rng():  # installation draws nothing, but keep the RNG pristine
            procs = install(parts.unet, self.config.freeze_model)
        self.layers = CustomDiffusionLayers(procs)
        if self.config.modifier_tokens:
            self.tokens = install_modifier_tokens(parts.tokenizer, parts.text_encoder,
                                                  list(self.config.modifier_tokens),
                                                  list(self.config.initializer_tokens))
        self.parts = parts

    @property
    def resolution(self) -> int:
        self.attach_base()
        return self.config.resolution or int(self.parts.vae.config.sample_size)

    # ------------------------------------------------------------------ engine contract
    def modules(self) -> dict[str, nn.Module]:
        self.attach_base()
        out = {n: getattr(self.parts, n) for n in BASE_MODULES}
        if sum(p.numel() for p in self.layers.parameters()):
            out["layers"] = self.layers
        if self.tokens is not None:
            out["tokens"] = self.tokens
        return out

    def trained(self) -> tuple[str, ...]:
        whole = ("unet",) if self.config.freeze_model == "unet" else ()
        return whole + tuple(n for n in ("layers", "tokens") if n in self.modules())

    def snapshot_modules(self) -> tuple[str, ...]:
        return self.trained()

    def references(self) -> dict[str, Reference]:
        self.attach_base()
        spec = str(self.config.pretrained_model_name_or_path)
        return {n: Reference(f"{spec}#{n}", self._digests[n]) for n in BASE_MODULES
                if n not in self.trained()}

    def ema_pairs(self) -> list[tuple[str, str]]:
        return []  # the official script keeps no EMA

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        if self._optimizers is None:
            c = self.config
            params = [p for n in self.trained() for p in self.modules()[n].parameters()]
            self._optimizers = {"main": adam(
                params, c.effective_learning_rate, (c.adam_beta1, c.adam_beta2),
                eps=c.adam_epsilon, weight_decay=c.adam_weight_decay)}
        return self._optimizers

    def phases(self) -> list[Phase]:
        return [Phase("main", self.trained(), "main", clip_grad_norm=self.config.max_grad_norm)]

    def lr_schedule(self):
        from langfree.families.base import LRSchedule

        # warm-up of lr_warmup_steps steps, in images (the loop's unit)
        per_step = self.config.train_batch_size * (2 if self.config.with_prior_preservation else 1)
        return LRSchedule(warmup_kimg=self.config.lr_warmup_steps * per_step / 1000)

    def prepare_data(self) -> None:
        """Read instance (and class) images; generate missing class images from the base."""
        if self.data is not None:
            return
        from langfree.families.custom_diffusion.data import ConceptImages, ensure_class_images

        c = self.config
        self.attach_base()
        if c.with_prior_preservation and not c.real_prior:
            for concept in c.concepts:
                ensure_class_images(self._base_sampler(c.class_generation_steps),
                                    concept.class_prompt, concept.class_data_dir,
                                    c.num_class_images, seed=c.seed)
        latent = self.resolution // self.parts.vae_scale_factor
        self.data = ConceptImages(c.concepts, self.resolution, latent, c.with_prior_preservation,
                                  c.real_prior, c.num_class_images, c.hflip, not c.noaug, c.seed)

    def dataset(self):
        """The training data (a torch Dataset of ``ConceptImages`` items) for the loop."""
        self.prepare_data()
        return self.data

    def _base_sampler(self, steps: int):
        """Class-image sampler: the base pipeline as it is before any training step (the
        processors start equal to the base projections; class prompts hold no new token)."""
        def fn(prompts, seeds):
            from langfree.families.sd.sampler import sample

            return sample(self.parts, prompts, seeds, self.resolution, num_inference_steps=steps,
                          guidance_scale=6.0, eta=1.0)
        return fn

    def loss(self, phase, nets, batch, progress) -> LossOutput:
        """``batch``: collated ``dataset()`` items (image, mask, prompt[, class_*])."""
        from langfree.families.custom_diffusion.data import training_batch

        if "mask" not in batch or "prompt" not in batch:
            raise ValueError("custom-diffusion trains on its own dataset (family.dataset()), "
                             f"got a batch with keys {sorted(batch)}")
        for name in self.trained():
            if nets[name] is not self.modules()[name]:
                raise RuntimeError("custom-diffusion: the loop handed copies of the modules; its "
                                   "trained layers live inside the base UNet, so they must be "
                                   "moved in place")
        c = self.config
        unet, text_encoder, vae = nets["unet"], nets["text_encoder"], nets["vae"]
        device = next(unet.parameters()).device
        data = training_batch(batch)
        with torch.no_grad():
            posterior = vae.encode(data["image"].to(device)).latent_dist
            latents = posterior.sample() * vae.config.scaling_factor              # (B, C, h, w)
        ids = self.parts.tokenizer(data["prompt"], padding="max_length", truncation=True,
                                   max_length=self.parts.tokenizer.model_max_length,
                                   return_tensors="pt").input_ids.to(device)
        hidden = text_encoder(ids)[0]                                            # (B, 77, D)
        x_t, t, target = noisy_latents(self.parts.scheduler, latents)
        pred = unet(x_t, t, encoder_hidden_states=hidden).sample                 # (B, C, h, w)
        loss, stats = custom_diffusion_loss(pred, target, data["mask"].to(device),
                                            data["is_prior"].to(device), c.prior_loss_weight,
                                            c.mask_per_element)
        return LossOutput(loss, stats)

    @torch.no_grad()
    def sample(self, conditions, seeds, options=None) -> torch.Tensor:
        from langfree.families.sd.sampler import sample

        o = options or CustomDiffusionSampleOptions()
        prompts = conditions.require_prompts(self.name)
        return sample(self._attached(), prompts, list(seeds),
                      self.resolution, o.num_inference_steps, o.guidance_scale, o.eta,
                      o.scheduler, conditions.negative_prompts)

    def _attached(self):
        self.attach_base()
        return self.parts

    # ------------------------------------------------------------------ files
    def token_rows(self) -> dict[str, torch.Tensor]:
        if self.tokens is None:
            return {}
        return {t: self.tokens.rows[i].detach() for i, t in enumerate(self.config.modifier_tokens)}

    def preview_prompts(self) -> list[str]:
        """Rows of the preview grid: --validation_prompt, else each concept's instance prompt."""
        c = self.config
        return [c.validation_prompt] if c.validation_prompt else [k.instance_prompt for k in c.concepts]

    def export(self, dirpath: Path) -> None:
        """The official output files: pytorch_custom_diffusion_weights.safetensors and one
        <token>.safetensors per modifier token (diffusers' keys and formats)."""
        self.attach_base()
        save_custom_diffusion(dirpath, self.layers, self.token_rows())
        if self.config.freeze_model == "unet":  # the full fine-tune: the whole UNet (diffusers)
            self.parts.unet.save_pretrained(Path(dirpath) / "unet", safe_serialization=True)
        # which base the files personalise (the official output dir does not record it)
        (Path(dirpath) / BASE_RECORD).write_text(json.dumps({
            "pretrained_model_name_or_path": str(self.config.pretrained_model_name_or_path),
            "digests": self._digests, "resolution": self.resolution,
            "modifier_tokens": list(self.config.modifier_tokens)}, indent=2))


def load_output_dir(output_dir: str | Path, base: str | Path | None = None):
    """A Custom Diffusion output dir (the official file names) -> SD components with the
    processors and tokens installed, ready for ``sd.sampler.sample``. ``base``: the base
    pipeline dir (default: the one recorded in ``custom_diffusion_base.json``); a base whose
    digests differ from the recorded ones is refused."""
    from langfree.families.custom_diffusion.weights import load_into
    from langfree.families.sd.pipeline import load_pipeline_dir, state_digest

    output_dir = Path(output_dir)
    record_path = output_dir / BASE_RECORD
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    spec = base or record.get("pretrained_model_name_or_path")
    if not spec:
        raise ValueError(f"{output_dir} records no base pipeline ({BASE_RECORD} is missing): "
                         "pass the base pipeline directory the weights were trained on")
    parts = load_pipeline_dir(spec)
    for name, digest in record.get("digests", {}).items():
        if state_digest(getattr(parts, name)) != digest:
            raise ValueError(f"{spec}: its {name} differs from the one {output_dir} was trained "
                             "on; pass the same base pipeline directory")
    load_into(parts, output_dir)
    return parts, int(record.get("resolution") or parts.vae.config.sample_size)


def configure(data: dict, ctx) -> dict:
    """Fill the world size for --scale_lr (TrainSpec.configure)."""
    world = getattr(getattr(ctx, "request", None), "num_processes", None)
    if world and "num_processes" not in data:
        data["num_processes"] = int(world)
    return data


def prepare(family: CustomDiffusionFamily, ctx=None) -> None:
    """Load the base pipeline and the images (TrainSpec.prepare); fails fast on bad paths."""
    family.attach_base()
    family.prepare_data()


def train_options(config, options, given):
    """The seed's step-based options as loop options (TrainSpec.train_options): batch =
    --train_batch_size, length = --max_train_steps, a snapshot + state every
    --checkpointing_steps, unless the common options were given."""
    import dataclasses

    batch = options.batch if "batch" in given else config.train_batch_size
    changes = {"batch": batch}
    if "kimg" not in given:
        changes["kimg"] = config.max_train_steps * batch / 1000
    if "tick_kimg" not in given:
        every = min(config.checkpointing_steps, config.max_train_steps)
        changes["tick_kimg"] = max(every, 1) * batch / 1000
    if "snap" not in given:
        changes["snap"] = 1
    return dataclasses.replace(options, **changes)


def finish(family, run_dir, request) -> None:
    """Copy the final snapshot's diffusers-format files into --output_dir (TrainSpec.finish)."""
    import shutil

    from langfree.checkpoint import list_snapshots

    snaps = list_snapshots(run_dir)
    if not snaps or not (snaps[-1] / "export").is_dir():
        return
    out = Path(family.config.output_dir)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(snaps[-1] / "export", tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"custom diffusion weights: {out} (from {snaps[-1]})")
