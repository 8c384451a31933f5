"""The official script's command line (seed 004) -> ``CustomDiffusionConfig``.

``resolve(argv)`` parses the seed's option names and returns (config, notes). Options that need
a network fail with one line saying so; ``--enable_xformers_memory_efficient_attention`` is
accepted with a note naming what runs instead when xformers is absent. The generic
``langfree train custom-diffusion`` command uses ``config_from_options`` on the same names.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

from langfree.families.custom_diffusion.config import CustomDiffusionConfig


class OptionError(ValueError):
    """A command-line option this machine cannot honour; the message is one line."""


# (name, type or "flag", default): the seed's options (diffusers examples/custom_diffusion)
_OPTIONS = (
    ("instance_data_dir", str, None), ("instance_prompt", str, None),
    ("class_data_dir", str, None), ("class_prompt", str, None), ("concepts_list", str, None),
    ("with_prior_preservation", "flag", False), ("real_prior", "flag", False),
    ("prior_loss_weight", float, 1.0), ("num_class_images", int, 200),
    ("resolution", int, None), ("train_batch_size", int, 4), ("learning_rate", float, 1e-5),
    ("scale_lr", "flag", False), ("gradient_accumulation_steps", int, 1),
    ("lr_warmup_steps", int, 500), ("max_train_steps", int, 250),
    ("hflip", "flag", False), ("noaug", "flag", False),
    ("modifier_token", str, None), ("initializer_token", str, "ktn+pll+ucd"),
    ("validation_prompt", str, None), ("checkpointing_steps", int, 250),
    ("set_grads_to_none", "flag", False), ("output_dir", str, "custom-diffusion-model"),
    ("seed", int, 42), ("adam_beta1", float, 0.9), ("adam_beta2", float, 0.999),
    ("adam_weight_decay", float, 1e-2), ("adam_epsilon", float, 1e-8),
    ("max_grad_norm", float, 1.0),
    # accepted so the seed's command lines parse; refused or noted when they cannot apply
    ("push_to_hub", "flag", False), ("report_to", str, "tensorboard"),
    ("enable_xformers_memory_efficient_attention", "flag", False),
    ("mixed_precision", str, None), ("no_safe_serialization", "flag", False),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="langfree train custom-diffusion",
                                description="Custom Diffusion (the diffusers example's options)")
    p.add_argument("--pretrained_model_name_or_path", required=True,
                   help="local SD pipeline directory")
    p.add_argument("--freeze_model", default="crossattn_kv",
                   choices=["crossattn_kv", "crossattn", "none", "unet"])
    for name, kind, default in _OPTIONS:
        if kind == "flag":
            p.add_argument(f"--{name}", action="store_true")
        else:
            p.add_argument(f"--{name}", type=kind, default=default)
    return p


def check_environment_options(opts: dict[str, Any]) -> list[str]:
    """Refuse what needs a GPU or a pickle (one line each); return notes for the log.
    (--push_to_hub / --report_to wandb are refused by the config itself.)"""
    if opts.get("mixed_precision") in ("fp16", "bf16"):
        raise OptionError(f"--mixed_precision {opts['mixed_precision']}: this CPU trains in fp32 "
                          "(fp16 is ~100x slower here); drop it or pass 'no'")
    if opts.get("no_safe_serialization"):
        raise OptionError("--no_safe_serialization: langfree writes no pickles; the "
                          ".safetensors files load in diffusers and in langfree; drop it")
    return xformers_notes(bool(opts.get("enable_xformers_memory_efficient_attention")))


def xformers_notes(asked: bool) -> list[str]:
    """What runs when --enable_xformers_memory_efficient_attention is given."""
    if not asked:
        return []
    if importlib.util.find_spec("xformers") is None:
        return ["--enable_xformers_memory_efficient_attention: xformers is not installed; using "
                "torch.nn.functional.scaled_dot_product_attention (PyTorch's fused attention), "
                "which the Custom Diffusion processors always use"]
    return ["--enable_xformers_memory_efficient_attention: the processors use torch's "
            "scaled_dot_product_attention (it picks a fused kernel itself)"]


def config_from_options(opts: dict[str, Any]) -> tuple[CustomDiffusionConfig, list[str]]:
    """Option values by the seed's names (argparse's dict) -> (config, notes)."""
    notes = check_environment_options(opts)
    data = {k: v for k, v in opts.items() if v is not None
            and k not in ("mixed_precision", "no_safe_serialization")}
    cfg = CustomDiffusionConfig(**data)
    for t in cfg.modifier_tokens:
        if not any(t in c.instance_prompt for c in cfg.concepts):
            notes.append(f"modifier token {t} appears in no instance prompt")
    return cfg, notes


def resolve(argv: list[str]) -> tuple[CustomDiffusionConfig, list[str]]:
    """The official command line (without ``accelerate launch train_custom_diffusion.py``) ->
    (config, notes). Errors are OptionError/ValueError with a one-line message."""
    opts = vars(build_parser().parse_args(argv))
    return config_from_options(opts)
