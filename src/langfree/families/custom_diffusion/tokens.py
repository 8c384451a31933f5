"""Modifier tokens (``<new1>``): one new, trainable embedding row each (paper §3.1, "Text
encoding"), initialised from a rare word's embedding.

The new rows are their own parameter (``ModifierEmbedding.rows``), not rows of the resized
table: AdamW's decoupled weight decay shrinks every row of a parameter it steps, so training the
whole table with the other rows' gradients masked (the official example) still drifts them. Here
the 49 408 base rows are never in the optimiser and stay bit-identical.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from langfree.families.custom_diffusion.concepts import parse_modifier_tokens  # noqa: F401


def initializer_id(tokenizer, word: str) -> int:
    """The vocabulary id of ``word`` (as the official script: a vocabulary entry, looked up with
    ``convert_tokens_to_ids``; its whole-word form ``word</w>`` is tried next). A word that is
    no single vocabulary entry is refused, naming what it tokenises to."""
    unk = tokenizer.unk_token_id
    for token in (word, word + "</w>"):
        i = tokenizer.convert_tokens_to_ids(token)
        if isinstance(i, int) and i != unk and i < len(tokenizer):
            return i
    pieces = tokenizer.tokenize(word)
    raise ValueError(f"--initializer_token {word!r} is not one token of the vocabulary (it "
                     f"tokenises to {len(pieces)}: {pieces}); pass a single-token word such as "
                     "'ktn', 'sks' or 'cat'")


def add_modifier_tokens(tokenizer, tokens: list[str]) -> list[int]:
    """Add ``tokens`` to ``tokenizer`` (each must be new) and return their ids, in order."""
    for t in tokens:
        if tokenizer.convert_tokens_to_ids(t) not in (None, tokenizer.unk_token_id):
            raise ValueError(f"--modifier_token {t!r} is already in the tokenizer; pick a new "
                             "string such as '<new1>'")
    before = len(tokenizer)
    added = tokenizer.add_tokens(tokens)
    if added != len(tokens):
        raise ValueError(f"the tokenizer added {added} of the modifier tokens {tokens}")
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if ids != list(range(before, before + len(tokens))):
        raise RuntimeError(f"modifier tokens got ids {ids}, expected {before}..")
    return ids


class ModifierEmbedding(nn.Module):
    """A token embedding = the frozen base table [V, D] + trainable ``rows`` [n, D] for ids >= V.

    The base table is held without registering it (``_base``), so this module's state dict is
    just ``rows``: snapshots hold n·D numbers, not the 49 408-row table."""

    def __init__(self, base: nn.Embedding, rows: torch.Tensor):
        super().__init__()
        object.__setattr__(self, "_base", base)  # not a submodule: frozen, owned by the encoder
        self.rows = nn.Parameter(rows.detach().clone().to(base.weight))  # [n, D]

    @property
    def base(self) -> nn.Embedding:
        return self._base

    def _apply(self, fn, recurse=True):
        """``.to(device)`` / ``.float()`` also reach the unregistered base table."""
        self._base._apply(fn, recurse)
        return super()._apply(fn, recurse)

    @property
    def num_embeddings(self) -> int:
        return self.base.num_embeddings + len(self.rows)

    @property
    def weight(self) -> torch.Tensor:
        """The full table [V + n, D] (for tools that read ``get_input_embeddings().weight``)."""
        return torch.cat([self.base.weight, self.rows])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        v = self.base.num_embeddings
        out = self.base(ids.clamp(max=v - 1))                                # (B, T, D)
        is_new = (ids >= v)[..., None]                                       # (B, T, 1)
        new = F.embedding((ids - v).clamp(min=0, max=len(self.rows) - 1), self.rows)
        return torch.where(is_new, new, out)


def install_modifier_tokens(tokenizer, text_encoder: nn.Module, tokens: list[str],
                            initializers: list[str]) -> ModifierEmbedding:
    """Add ``tokens`` to the tokenizer and a ``ModifierEmbedding`` to the text encoder, each new
    row initialised from its initializer word's row (``initializers`` is cycled, as the
    official script pads a short list with 'ktn')."""
    base = text_encoder.get_input_embeddings()
    if isinstance(base, ModifierEmbedding):
        raise ValueError("modifier tokens are already installed on this text encoder")
    if len(tokenizer) != base.num_embeddings:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, text encoder "
                         f"{base.num_embeddings} rows; they must match before adding tokens")
    init_ids = [initializer_id(tokenizer, initializers[i % len(initializers)])
                for i in range(len(tokens))]
    add_modifier_tokens(tokenizer, tokens)
    module = ModifierEmbedding(base, base.weight[init_ids])
    base.requires_grad_(False)
    text_encoder.set_input_embeddings(module)
    return module
