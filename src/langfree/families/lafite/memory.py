"""LAFITE's activation memory per training image, for the engine's memory check
(training/memory.py, issue 10).

Floats alive per feature-map element (channels x pixels, summed over resolutions) for one image
in one LAFITE training step (G forward + D on fakes and reals + R1 + the encoder on fakes):
measured 12.2 as the peak-RSS slope over the micro-batch on CPU (256 px, channel_base 2048,
channel_max 32: 1426 MB at 2 images, 1706 MB at 8). 10 keeps the estimate a lower bound.
LAFITE's defaults at 512 px then need >= 1.3 GB per image, 41 GB for a batch of 32.
"""

from __future__ import annotations

from typing import Any

ACTIVATION_FLOATS = 10


def feature_map_elements(config: Any) -> int:
    """Channels x pixels summed over the resolutions 4 .. R of a StyleGAN-rule config
    (``min(channel_base // r, channel_max)`` channels at resolution r; 0 when the config has no
    such geometry)."""
    fields = ("resolution", "channel_base", "channel_max")
    if not all(isinstance(getattr(config, f, None), int) for f in fields):
        return 0
    total, r = 0, 4
    while r <= config.resolution:
        total += r * r * min(config.channel_base // r, config.channel_max)
        r *= 2
    return total


def activation_bytes_per_image(config: Any) -> int:
    """fp32 bytes kept for the backward pass per image of a micro-batch (a lower bound)."""
    return 4 * ACTIVATION_FLOATS * feature_map_elements(config)
