"""LAFITE's part of ``langfree train lafite``: the seed's flag names, and two hooks.

    langfree train lafite --data train.zip --test-data val.zip --temp 0.5 --itd 10 --itc 10 \
        --gamma 10 --mixing_prob 1.0 --mirror 1 --kimg 100 --batch 32 --workers 4 \
        --metrics fid10k_full --snap 2 --outdir runs --encoder open_clip:ViT-B-32/openai

Light on purpose (no torch at import): the CLI reads it to build ``--help``.
"""

from __future__ import annotations

from typing import Any

from langfree.families.spec import Flag, TrainSpec, check_caption_mixing, fit_resolution


def perturb_option(value: str) -> dict:
    """``--perturb DIR``: a trained LAFITE-NN perturbation (a run of ``langfree train
    lafite-perturb`` or its snapshot); sets learned conditioning and the recorded MLP widths."""
    from langfree.families.lafite.perturb import find_perturbation

    folder, meta = find_perturbation(value)
    return {"conditioning": "learned", "perturb_path": str(folder),
            "perturb_hidden": meta["hidden"], "perturb_layers": meta["layers"]}


def configure(data: dict, ctx: Any) -> dict:
    """The archive's resolution (a preset at another resolution is refused) and the encoder's
    embedding width."""
    data = fit_resolution(data, ctx)
    if ctx.encoder is not None:
        data["c_dim"] = ctx.encoder.embed_dim
    return data


def prepare(family: Any, ctx: Any) -> None:
    """Captions where the config trains on them; LAFITE-NN weights where it uses them."""
    config = family.config
    check_caption_mixing(config.mixing_prob, ctx.archive)
    if config.conditioning == "learned":
        if not config.perturb_path:
            raise ValueError("--conditioning learned needs --perturb DIR (train one with "
                             "`langfree train lafite-perturb --data CAPTIONED.zip --encoder ...`)")
        family.load_perturbation(config.perturb_path)


SPEC = TrainSpec(
    name="lafite",
    family="langfree.families.lafite.family:LafiteFamily",
    config="langfree.families.lafite.config:LafiteConfig",
    presets="langfree.families.lafite.config:PRESETS",
    help="LAFITE (StyleGAN2 conditioned on CLIP features), language-free (--mixing_prob 1, the "
         "default) or on captions (0).",
    flags=(
        Flag(("--temp",), "temperature", float, "Contrastive temperature τ."),
        Flag(("--itd",), "d_contrastive_weight", float,
             "Weight of the D-feature contrastive loss (d_contrastive_weight)."),
        Flag(("--itc",), "clip_contrastive_weight", float,
             "Weight of the CLIP contrastive loss on fakes (clip_contrastive_weight)."),
        Flag(("--gamma",), "r1_gamma", float, "R1 weight γ."),
        Flag(("--mixing_prob", "--mixing-prob"), "mixing_prob", float,
             "P(pseudo text feature) per sample: 1 = language-free (no captions needed), "
             "0 = standard."),
        Flag(("--mirror",), "mirror", bool, "1: x-flip reals (features not flipped)."),
        Flag(("--conditioning",), "conditioning", str, "gaussian | learned | none."),
        Flag(("--perturb",), "perturb_path", str,
             "Learned perturbation (a `langfree train lafite-perturb` run or snapshot); "
             "implies --conditioning learned.", convert=perturb_option),
    ),
    configure=configure,
    prepare=prepare,
    encoder="required",
    default_encoder="open_clip:ViT-B-32/openai",
    converters={"lafite-pkl": "langfree.families.lafite.commands:lafite_pkl"},
)


def configure_perturb(data: dict, ctx: Any) -> dict:
    if ctx.encoder is not None:
        data["dim"] = ctx.encoder.embed_dim
        data["hidden"] = min(1024, 2 * ctx.encoder.embed_dim)  # --hidden overrides it
    return data


PERTURB_SPEC = TrainSpec(
    name="lafite-perturb",
    family="langfree.families.lafite.perturb:PerturbFamily",
    config="langfree.families.lafite.perturb:PerturbConfig",
    help="LAFITE-NN's learned perturbation (image feature -> pseudo text feature), trained on a "
         "CAPTIONED archive; pass the run to `langfree train lafite --perturb RUN`.",
    flags=(
        Flag(("--hidden",), "hidden", int, "MLP width (default 2 x feature dim, max 1024)."),
        Flag(("--layers",), "layers", int, "MLP depth."),
        Flag(("--lr",), "lr", float, "Adam learning rate."),
        Flag(("--temp",), "temperature", float, "InfoNCE temperature."),
        Flag(("--kl",), "kl_weight", float, "Weight of the noise-scale KL term."),
        Flag(("--align",), "align_weight", float, "Weight of the 1 - cos(h, t) term."),
    ),
    configure=configure_perturb,
    encoder="required",
    default_encoder="open_clip:ViT-B-32/openai",
)
