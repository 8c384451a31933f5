"""DALL·E's transformer-training crop (paper App. A.2; REFERENCE §4), for the image-codes sidecar.

For an image of short side s and long side l: a square s×s crop at an offset drawn uniformly
between 3/8 and 5/8 of the spare length l - s (the centre region, so objects are rarely cut),
resized to a random side t in [R, 9/8·R], then a random R×R crop. No flip (captions say left and
right). Archives built by langfree are already square, so there the first step is the identity
and the augmentation is the random zoom (up to 12.5 %) plus random translation.

Where it belongs: the transformer trains on VQGAN codes, so an augmented crop is only useful
through ITS codes — the augmentation must run before the VQGAN encoder, not on the codes. Two
options: encode each crop on the fly (one VQGAN encoder pass per training image per step), or
store K augmented code sets per image in the sidecar and pick one per step. Measured here
(shapes32 presets, batch 32, 2 shared threads): VQGAN encode 1.8 s vs transformer step 5.4 s,
i.e. on the fly costs +33 % per step for ever, while K = 4 sets cost 4 encoder passes per image
once (the sidecar is reused by every run on the archive). So: K sets in the sidecar
(``DalleConfig.augment_sets``; set 0 is the un-augmented image, the shape the VQGAN was trained
on), the loss picks one set per sample from the loop's RNG. K sets see fewer distinct crops than
on-the-fly encoding; at K = 4 on 32 px shapes that is 4 of the ~5×5×5 distinct (t, x, y) crops.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F


def image_seed(image: torch.Tensor) -> int:
    """A seed from an image's pixels: the crops of an image do not depend on which chunk or
    batch of the sidecar it was encoded in (the producer sees pixels, not indices)."""
    return int.from_bytes(hashlib.sha256(image.contiguous().numpy().tobytes()).digest()[:8], "little")


def paper_crop(image: torch.Tensor, R: int, g: torch.Generator) -> torch.Tensor:
    """image [3, H, W] float (any range) -> [3, R, R] (same range), the paper's random crop."""
    _, H, W = image.shape
    s = min(H, W)
    spare = max(H, W) - s
    lo, hi = (3 * spare) // 8, (5 * spare) // 8
    off = int(torch.randint(lo, hi + 1, (), generator=g))
    top, left = (off, 0) if H > W else (0, off)
    square = image[:, top:top + s, left:left + s]
    t = int(torch.randint(R, (9 * R) // 8 + 1, (), generator=g))
    resized = F.interpolate(square[None], size=(t, t), mode="bilinear", antialias=s > t,
                            align_corners=False)[0]  # (3, t, t)
    y, x = (int(torch.randint(0, t - R + 1, (), generator=g)) for _ in range(2))
    return resized[:, y:y + R, x:x + R]


def augmented_views(images: torch.Tensor, R: int, k: int) -> torch.Tensor:
    """uint8 images [B, 3, H, W] -> float [B, max(k, 1), 3, R, R] in [-1, 1]: view 0 the plain
    image (resized to R if needed), views 1..k-1 paper crops seeded by the image's pixels."""
    x = images.float() / 127.5 - 1
    if x.shape[-2:] != (R, R):  # plain view: centre square, resized (no randomness)
        s = min(x.shape[-2:])
        top, left = (x.shape[-2] - s) // 2, (x.shape[-1] - s) // 2
        x0 = x[..., top:top + s, left:left + s]
        base = F.interpolate(x0, size=(R, R), mode="bilinear", antialias=s > R)
    else:
        base = x
    seeds = [image_seed(raw) for raw in images]
    views = [base]
    for v in range(1, max(k, 1)):
        views.append(torch.stack([paper_crop(im, R, torch.Generator().manual_seed((s + v) % 2**63))
                                  for im, s in zip(x, seeds)]))
    return torch.stack(views, 1)
