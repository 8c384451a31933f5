"""langfree: text-to-image generation that needs no captions to train."""

__version__ = "0.1.0"
