"""Custom Diffusion (Kumari et al., CVPR 2023): personalise a Stable-Diffusion-layout pipeline by
training its cross-attention K/V and one token row per new concept word (``<new1>``).

Light on purpose: ``SPEC`` only (no torch import). The option names are the diffusers example's
(seed 004); ``options.resolve(argv)`` parses that command line as the official script does.
"""

from langfree.families.spec import Flag, TrainSpec

_P = "langfree.families.custom_diffusion"


def _flags() -> tuple[Flag, ...]:
    table = [
        ("pretrained_model_name_or_path", str, "the base: a local SD pipeline dir (langfree train sd)"),
        ("instance_data_dir", str, "folder of the concept's images"),
        ("instance_prompt", str, 'prompt of the instance images, e.g. "photo of a <new1> cat"'),
        ("class_data_dir", str, "folder of class images (generated there when too few)"),
        ("class_prompt", str, 'prompt of the class images, e.g. "cat"'),
        ("concepts_list", str, "JSON list of {instance_prompt, instance_data_dir, class_prompt, class_data_dir}"),
        ("with_prior_preservation", bool, "add the prior-preservation loss on class images"),
        ("real_prior", bool, "class images are real (no generation; images.txt/caption.txt read)"),
        ("prior_loss_weight", float, "weight of the prior loss (1.0)"),
        ("num_class_images", int, "class images to use / generate (200)"),
        ("resolution", int, "training resolution (default: the base pipeline's)"),
        ("train_batch_size", int, "instance images per step (4)"),
        ("learning_rate", float, "AdamW learning rate (1e-5)"),
        ("scale_lr", bool, "lr x batch x accumulation x processes (x2 with prior)"),
        ("lr_warmup_steps", int, "linear warm-up steps (500)"),
        ("max_train_steps", int, "optimisation steps (250)"),
        ("hflip", bool, "random horizontal flips"),
        ("noaug", bool, "no random-rescale augmentation"),
        ("modifier_token", str, 'new token(s): "<new1>" or "<new1>+<new2>"'),
        ("initializer_token", str, 'word(s) whose embeddings start the new rows ("ktn+pll+ucd")'),
        ("freeze_model", str, "crossattn_kv (default) | crossattn (also Q/out) | none (token "
                              "only) | unet (the whole UNet: the full fine-tune baseline)"),
        ("validation_prompt", str, 'a prompt drawn in the preview grid, e.g. "<new1> cat sitting in a bucket"'),
        ("checkpointing_steps", int, "save a resumable state every N steps (250)"),
        ("set_grads_to_none", bool, "zero_grad(set_to_none=True) (torch default already)"),
        ("output_dir", str, "where the diffusers-format files go"),
        ("push_to_hub", bool, "refused: needs a network"),
        ("report_to", str, "tensorboard (default); wandb is refused: needs a network"),
        ("enable_xformers_memory_efficient_attention", bool,
         "accepted: torch scaled_dot_product_attention runs instead when xformers is absent"),
    ]
    return tuple(Flag((f"--{name}",), name, tp, help, switch=tp is bool) for name, tp, help in table)


SPEC = TrainSpec(
    name="custom-diffusion",
    family=f"{_P}.family:CustomDiffusionFamily",
    config=f"{_P}.config:CustomDiffusionConfig",
    presets=f"{_P}.config:PRESETS",
    help="Custom Diffusion: personalise a Stable Diffusion pipeline (cross-attention K/V + <new1>).",
    flags=_flags(),
    configure=f"{_P}.family:configure",
    prepare=f"{_P}.family:prepare",
    encoder="none",
    data="own",
    train_options=f"{_P}.family:train_options",
    finish=f"{_P}.family:finish",
    # 50-step guided sampling per preview image: 2 columns (pass --sample num_inference_steps=N)
    preview_seeds=2,
)
