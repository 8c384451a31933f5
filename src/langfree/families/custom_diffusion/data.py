"""Instance and class images of Custom Diffusion, and the paper's augmentation (§3.2, "Training
details": random rescale with a masked loss and a prompt prefix naming the scale).

Images are few (a concept has ~5, a class ~200), so they are held in memory as float tensors
[3, S, S] in [-1, 1], S = ceil(1.4·resolution) (the largest zoom-in scale, so zooming in keeps
the source's detail). Every random choice of item ``key`` comes from a generator seeded by
(seed, key), the loop's key contract: a resumed run draws the same batches.

Augmentation (unless ``--noaug``), per instance image:
  - hflip with p 0.5 when ``--hflip``;
  - scale s: with p 0.66 uniform in [res/3, res] (zoom out: the image shrinks onto a zero canvas
    at a random place; the loss mask covers it, shrunk by one latent cell per side as officially);
    else uniform in [1.2·res, 1.4·res] (zoom in: a random res×res crop, mask all ones);
  - prompt prefix: "a far away " / "very small " when s < 0.6·res, "zoomed in " / "close up "
    when s > res.
Deviation: at s = res (always so under ``--noaug``) the official code still shrinks the mask by
a cell per side although the image fills the canvas; here the mask is then all ones (at 4x4
latents the official mask would drop 12 of 16 cells from the loss).
Guard: at tiny resolutions the shrunk mask can be empty (a 10 px image at 4 px per latent cell),
which makes the masked loss 0/0 = NaN; the mask then falls back to the cells the image covers,
and to at least the one cell at its centre.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from langfree.families.custom_diffusion.concepts import Concept

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
FAR_PREFIXES = ("a far away ", "very small ")
NEAR_PREFIXES = ("zoomed in ", "close up ")


def image_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such image folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_square(path: str | Path, size: int) -> torch.Tensor:
    """An image file -> [3, size, size] float in [-1, 1]: centre square crop, bicubic resize."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        img = img.resize((size, size), Image.BICUBIC)
        pixels = torch.from_numpy(np.asarray(img).copy())
    return pixels.permute(2, 0, 1).float() / 127.5 - 1


def class_images(concept: Concept, real_prior: bool) -> tuple[list[Path], list[str]]:
    """Class image paths and one prompt each. With ``--real_prior`` the official retrieval layout
    (``images.txt`` + ``caption.txt`` beside ``images/``) gives per-image captions when present;
    otherwise every image of the folder gets ``class_prompt``."""
    folder = Path(concept.class_data_dir)
    listed, captions = folder / "images.txt", folder / "caption.txt"
    if real_prior and listed.is_file() and captions.is_file():
        paths = [Path(x.strip()) for x in listed.read_text().splitlines() if x.strip()]
        paths = [p if p.is_absolute() else folder / p for p in paths]
        prompts = [x.strip() for x in captions.read_text().splitlines()][: len(paths)]
        return paths, prompts
    paths = image_files(folder / "images" if (folder / "images").is_dir() else folder)
    return paths, [concept.class_prompt or ""] * len(paths)


class ConceptImages(torch.utils.data.Dataset):
    """Instance (and class) images with their prompts; item ``key`` is one augmented instance
    sample (+ one class sample with prior preservation).

    A torch Dataset under the loop's key contract (``key % N`` picks the image, ``key`` as a
    whole seeds the augmentation), so every draw is a pure function of (seed, key): exact on
    resume and the same with DataLoader workers. resolution: training image side; latent_size:
    the UNet input side (mask resolution)."""

    def __init__(self, concepts: tuple[Concept, ...], resolution: int, latent_size: int,
                 with_prior: bool = False, real_prior: bool = False, num_class_images: int = 200,
                 hflip: bool = False, aug: bool = True, seed: int = 0):
        self.resolution, self.latent_size, self.seed = resolution, latent_size, seed
        self.hflip, self.aug, self.with_prior = hflip, aug, with_prior
        self.store = math.ceil(1.4 * resolution)
        inst, cls = [], []
        for c in concepts:
            files = image_files(c.instance_data_dir)
            if not files:
                raise ValueError(f"instance_data_dir {c.instance_data_dir}: no images "
                                 f"({', '.join(IMAGE_SUFFIXES)})")
            inst += [(load_square(f, self.store), c.instance_prompt) for f in files]
            if with_prior:
                paths, prompts = class_images(c, real_prior)
                if not paths:
                    raise ValueError(f"class_data_dir {c.class_data_dir}: no class images; "
                                     "generate them (without --real_prior) or pass a folder")
                cls += [(load_square(p, resolution), t)
                        for p, t in list(zip(paths, prompts))[:num_class_images]]
        self.instance = torch.stack([x for x, _ in inst])                # [N, 3, S, S]
        self.instance_prompts = [t for _, t in inst]
        self.classes = torch.stack([x for x, _ in cls]) if cls else None  # [M, 3, R, R]
        self.class_prompts = [t for _, t in cls]

    def __len__(self) -> int:
        return len(self.instance)

    def __getitem__(self, key: int) -> dict:
        """{"image" [3, R, R] in [-1, 1], "mask" [1, h, h], "prompt" str} (+ "class_image",
        "class_prompt" with prior preservation)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(key))
        i = int(key) % len(self.instance)
        image, mask, prompt = self.augment(self.instance[i], self.instance_prompts[i], g)
        item = {"image": image, "mask": mask, "prompt": prompt}
        if self.with_prior:
            j = int(torch.randint(len(self.classes), (), generator=g))
            cimg = self.classes[j]
            if self.hflip and torch.rand((), generator=g) < 0.5:
                cimg = cimg.flip(-1)
            item.update(class_image=cimg, class_prompt=self.class_prompts[j])
        return item

    def augment(self, image: torch.Tensor, prompt: str, g: torch.Generator):
        """One instance image [3, S, S] -> ([3, R, R] in [-1, 1], mask [1, h, h], prompt)."""
        r, h = self.resolution, self.latent_size
        if self.hflip and torch.rand((), generator=g) < 0.5:
            image = image.flip(-1)
        scale = r
        if self.aug:
            if torch.rand((), generator=g) < 0.66:
                scale = int(torch.randint(r // 3, r + 1, (), generator=g))
            else:
                scale = int(torch.randint(int(1.2 * r), int(1.4 * r) + 1, (), generator=g))
        out, mask = rescale(image, scale, r, h, g)
        if scale < 0.6 * r:
            prompt = FAR_PREFIXES[int(torch.randint(2, (), generator=g))] + prompt
        elif scale > r:
            prompt = NEAR_PREFIXES[int(torch.randint(2, (), generator=g))] + prompt
        return out, mask, prompt


def training_batch(batch: dict) -> dict:
    """A collated batch of ``ConceptImages`` items -> the rows the loss sees: instance rows,
    then class rows. {"image" [B', 3, R, R], "mask" [B', 1, h, h], "prompt" list[str],
    "is_prior" [B'] bool}, B' = B (2B with prior preservation)."""
    image, mask, prompt = batch["image"], batch["mask"], list(batch["prompt"])
    is_prior = torch.zeros(len(image), dtype=torch.bool, device=image.device)
    if "class_image" in batch:
        n = len(batch["class_image"])
        image = torch.cat([image, batch["class_image"]])
        mask = torch.cat([mask, torch.ones_like(mask[:1]).expand(n, -1, -1, -1)])
        prompt += list(batch["class_prompt"])
        is_prior = torch.cat([is_prior, torch.ones(n, dtype=torch.bool, device=image.device)])
    return {"image": image, "mask": mask, "prompt": prompt, "is_prior": is_prior}


def collate(items: list[dict]) -> dict:
    return torch.utils.data.default_collate(items)


def rescale(image: torch.Tensor, scale: int, r: int, h: int,
            g: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """[3, S, S] -> ([3, r, r], mask [1, h, h]) at ``scale`` px (see the module docstring)."""
    resized = F.interpolate(image[None], size=(scale, scale), mode="bilinear",
                            antialias=True, align_corners=False)[0]           # [3, s, s]
    outer, inner = (scale, r) if scale > r else (r, scale)
    top, left = (int(v) for v in torch.randint(0, outer - inner + 1, (2,), generator=g))
    if scale >= r:  # zoom in (a crop) or no rescale: the image fills the canvas
        return resized[:, top:top + r, left:left + r], torch.ones(1, h, h)
    canvas = torch.zeros(3, r, r)
    canvas[:, top:top + scale, left:left + scale] = resized
    return canvas, placed_mask(top, left, scale, r, h)


def placed_mask(top: int, left: int, scale: int, r: int, h: int) -> torch.Tensor:
    """Latent-cell mask [1, h, h] of an image of ``scale`` px placed at (top, left) on an r-px
    canvas: the covered cells shrunk by one per side (official), never empty (the NaN guard)."""
    f = r // h  # pixels per latent cell
    mask = torch.zeros(1, h, h)
    mask[:, top // f + 1:(top + scale) // f - 1, left // f + 1:(left + scale) // f - 1] = 1.0
    if mask.sum() == 0:  # shrinking removed everything: keep the covered cells
        mask[:, top // f:math.ceil((top + scale) / f), left // f:math.ceil((left + scale) / f)] = 1.0
    if mask.sum() == 0:
        cy, cx = min((top + scale // 2) // f, h - 1), min((left + scale // 2) // f, h - 1)
        mask[:, cy, cx] = 1.0
    return mask


def save_png(image: torch.Tensor, path: Path) -> None:
    """[3, H, W] in [-1, 1] -> PNG."""
    from PIL import Image

    pixels = ((image.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(path)


def ensure_class_images(sample_fn, class_prompt: str, class_dir: str | Path, num: int,
                        seed: int = 0, batch: int = 4) -> int:
    """Generate class images with ``sample_fn(prompts, seeds) -> [B, 3, H, W]`` until ``class_dir``
    holds ``num`` (the official behaviour without ``--real_prior``). Existing images are reused
    on a rerun. Returns how many were generated."""
    class_dir = Path(class_dir)
    class_dir.mkdir(parents=True, exist_ok=True)
    have = len(image_files(class_dir))
    todo = list(range(have, num))
    for start in range(0, len(todo), batch):
        ids = todo[start:start + batch]
        images = sample_fn([class_prompt] * len(ids), [seed * 1_000_003 + i for i in ids])
        for i, img in zip(ids, images):
            save_png(img, class_dir / f"class_{i:05d}.png")
    return len(todo)
