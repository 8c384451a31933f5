"""The paper's evaluation of a personalised model (Kumari et al. 2023, §4 "Evaluation metrics"),
with any langfree ``TextImageEncoder`` in place of OpenAI's CLIP ViT-B/32:

  text alignment   mean cos(E_img(x), E_txt(prompt)) over generated images x, the prompt read
                   with the concept's plain word in place of the modifier token (the encoder has
                   never seen ``<new1>``); the paper's CLIPScore is 2.5 · max(cos, 0) of the same
  image alignment  mean cos(E_img(x), E_img(y)) over generated x and held-out images y of the
                   concept (images not used for training)

Concept data on shapes: a concept is one attribute value (e.g. shape = star) that the base's
training split withholds (``shapes.draw_one(withhold=...)``); its images are shapes images whose
main object has it, drawn from a seed of their own.
"""

from __future__ import annotations

from pathlib import Path

import torch

from langfree.data.shapes import ATTRIBUTES, caption, draw_one


def concept_images(seed: int, count: int, resolution: int, attribute: str, value: str,
                   skip: int = 0) -> list[tuple[object, dict]]:
    """The ``count`` shapes images (uint8 [R, R, 3], attributes) of set ``seed`` whose main
    object has ``attribute == value`` and no second object, after the first ``skip`` of them."""
    out, i = [], 0
    while len(out) < skip + count:
        image, _, attrs = draw_one(seed, i, resolution)
        if attrs[attribute] == value:
            out.append((image, attrs))
        i += 1
        if i > 1000 * (skip + count):
            raise ValueError(f"no shapes image with {attribute} = {value!r} in set {seed}")
    return out[skip:]


def write_concept_images(dest: str | Path, images: list[tuple[object, dict]]) -> Path:
    """PNGs (``img_00.png`` ...) of ``concept_images`` into ``dest`` (written once: a complete
    folder is reused; the folder appears atomically)."""
    import os
    import shutil

    from PIL import Image

    dest = Path(dest)
    if dest.is_dir():
        return dest
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for i, (image, _) in enumerate(images):
        Image.fromarray(image).save(tmp / f"img_{i:02d}.png")
    os.replace(tmp, dest)
    return dest


def concept_prompts(n: int, token: str, word: str, attribute: str = "shape"
                    ) -> list[dict]:
    """``n`` canonical prompts putting the concept under new colours, sizes and positions:
    [{"prompt": "a large red <new1> at the top left", "plain": "... red star ...", "attrs": {...}}].
    The other attributes cycle with co-prime periods (as ``shapes.prompt_grid``), so any 7
    consecutive prompts cover every colour and any 9 every position."""
    out = []
    for i in range(n):
        attrs = {"shape": ATTRIBUTES["shape"][i % 5], "color": ATTRIBUTES["color"][i % 7],
                 "size": ATTRIBUTES["size"][(i // 9 + i) % 3],
                 "position": ATTRIBUTES["position"][i % 9]}
        attrs[attribute] = word
        with_token = dict(attrs, **{attribute: token})
        out.append({"prompt": caption(with_token, 0), "plain": caption(attrs, 0), "attrs": attrs})
    return out


@torch.no_grad()
def alignment(encoder, images: torch.Tensor, texts: list[str], targets: torch.Tensor) -> dict:
    """images [N, 3, H, W] and targets [M, 3, H, W] in [-1, 1], ``texts`` one per image ->
    {"text_alignment", "image_alignment"} (mean cosines, see the module docstring)."""
    if len(texts) != len(images):
        raise ValueError(f"{len(images)} images but {len(texts)} texts")
    img = encoder.encode_image(images)                                   # (N, D) unit norm
    txt = encoder.encode_text(list(texts))                               # (N, D)
    tgt = encoder.encode_image(targets)                                  # (M, D)
    return {"text_alignment": round(float((img * txt).sum(1).mean()), 4),
            "image_alignment": round(float((img @ tgt.T).mean()), 4)}


@torch.no_grad()
def self_similarity(encoder, images: torch.Tensor) -> float:
    """Mean cos(E_img(y_i), E_img(y_j)) over pairs i != j of ``images`` [M, 3, H, W] (M >= 2):
    the image alignment real images of the concept reach against each other."""
    e = encoder.encode_image(images)                                     # (M, D)
    m = len(e)
    if m < 2:
        raise ValueError("self_similarity needs at least 2 images")
    sims = e @ e.T                                                       # (M, M)
    return round(float((sims.sum() - sims.diagonal().sum()) / (m * (m - 1))), 4)


def attribute_scores(evaluator, images: torch.Tensor, wanted: list[dict]) -> dict:
    """The shapes evaluator on generated images: per attribute the share drawn as ``wanted``
    says (for the concept's attribute: the share drawn as the concept), and ``overall``."""
    from langfree.metrics.attributes import to_uint8

    pred = evaluator.predict(to_uint8(images))
    right = {}
    for key, names in evaluator.attributes.items():
        if key not in wanted[0]:
            continue
        want = torch.tensor([names.index(w[key]) for w in wanted])
        right[key] = pred[key] == want
    out = {k: round(float(v.float().mean()), 4) for k, v in right.items()}
    out["overall"] = round(float(torch.stack(list(right.values())).all(0).float().mean()), 4)
    return out
