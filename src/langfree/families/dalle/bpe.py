"""Caption tokens: a byte-level BPE (HF ``tokenizers``) with BPE dropout, padded per position.

DALL·E (Ramesh et al. 2021, §2.2 and App. A.2): BPE vocabulary 16 384, 10 % BPE dropout while
training the transformer, 256 text tokens, and "a special padding token for each of the 256 text
positions". The tokenizer file (``tokenizer.json``) is a snapshot asset.

Two encode modes:
  - ``dropout=0`` (generation, evaluation): the plain, deterministic BPE of ``tokenizers``.
  - ``dropout=p`` (training): BPE dropout (Provilkov et al. 2020): at every merge step each
    applicable merge is skipped with probability p; the best-ranked surviving merge is applied;
    the word stops merging when none survives. It runs here in Python on the pre-tokenised words
    with a seeded ``random.Random``: ``tokenizers``' own dropout (``models.BPE(dropout=...)``)
    draws from an unseeded Rust RNG, which would make a resumed training run differ from an
    uninterrupted one. The ``dropout`` field of the saved model stays 0 for the same reason
    (an unseeded encode never happens by accident); ``test_dalle_bpe`` checks both paths.
  Captions are a few words: measured on shapes captions here, ~1.4 ms per caption with dropout
  vs ~0.5 ms plain (2 loaded cores), i.e. ~45 ms per batch of 32, small beside a training step.

Id layout (what ``encode`` returns, ``PaddedIds``): BPE ids in [0, V); pad token of position t
is V + t (t < text_len). The transformer adds BOS itself.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path

SPECIAL_TOKENS = ("<|endoftext|>",)  # a reserved id 0 (unused by the padding scheme)


class TokenizerError(ValueError):
    """A missing or malformed tokenizer file; the message says what to pass."""


def _tokenizers():
    try:
        import tokenizers
    except ImportError as e:  # pragma: no cover - a hard dependency of langfree
        raise TokenizerError("the HF 'tokenizers' package is required: pip install tokenizers") from e
    return tokenizers


def train_bpe(captions: Iterable[str], vocab_size: int = 16384, min_frequency: int = 2
              ) -> CaptionTokenizer:
    """Train a byte-level BPE on ``captions`` (lower-cased, NFKC). ``vocab_size`` includes the
    256 byte symbols and the special token; a small corpus yields fewer merges (the vocab then
    ends up smaller; ``CaptionTokenizer.vocab_size`` is the truth)."""
    tk = _tokenizers()
    if vocab_size < 257 + len(SPECIAL_TOKENS):
        raise TokenizerError(f"vocab_size {vocab_size} is below the 256 byte symbols + specials")
    tok = tk.Tokenizer(tk.models.BPE())
    tok.normalizer = tk.normalizers.Sequence([tk.normalizers.NFKC(), tk.normalizers.Lowercase()])
    tok.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
    )
    tok.train_from_iterator((c for c in captions), trainer=trainer)
    return CaptionTokenizer(tok.to_str().encode())


def train_tokenizer(archive_path: str | Path, vocab: int = 16384, out: str | Path = "tokenizer.json"
                    ) -> Path:
    """``langfree tokenizer train DATA.zip --vocab N --out tokenizer.json``: BPE on every caption
    of an archive, written atomically."""
    from langfree.data.archive import ImageArchive

    archive = ImageArchive(archive_path)
    captions = [c for i in range(len(archive)) for c in archive.captions(i)]
    if not captions:
        raise TokenizerError(f"{archive_path} has no captions; a BPE needs captions to train on")
    tokenizer = train_bpe(captions, vocab)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(tokenizer.to_bytes())
    tmp.replace(out)
    return out


class CaptionTokenizer:
    """A trained BPE: ``encode(texts, text_len, dropout, seed) -> [B, text_len]`` int64 ids."""

    def __init__(self, data: bytes) -> None:
        tk = _tokenizers()
        try:
            spec = json.loads(data)
            model = spec["model"]
            if model.get("type") != "BPE":
                raise TokenizerError(f"tokenizer.json holds a {model.get('type')} model, not BPE")
            model["dropout"] = None  # see the module docstring: dropout is ours, seeded
            self._data = json.dumps(spec, ensure_ascii=False).encode()
            self._tok = tk.Tokenizer.from_str(self._data.decode())
        except (json.JSONDecodeError, KeyError, Exception) as e:
            if isinstance(e, TokenizerError):
                raise
            raise TokenizerError(f"not a valid HF tokenizer.json ({e})") from e
        self._vocab: dict[str, int] = model["vocab"]
        merges = model["merges"]
        pairs = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]
        self._ranks: dict[tuple[str, str], int] = {p: r for r, p in enumerate(pairs)}
        self.vocab_size = self._tok.get_vocab_size()

    @classmethod
    def from_file(cls, path: str | Path) -> CaptionTokenizer:
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"tokenizer file {path} not found; train one with "
                                 "`langfree tokenizer train DATA.zip --vocab 16384`")
        return cls(path.read_bytes())

    def to_bytes(self) -> bytes:
        return self._data

    # -- encoding ---------------------------------------------------------------------------
    def _words(self, text: str) -> list[str]:
        """Normalised, byte-level pre-tokenised words (each char one byte symbol)."""
        norm = self._tok.normalizer.normalize_str(text)
        return [w for w, _ in self._tok.pre_tokenizer.pre_tokenize_str(norm)]

    def _merge(self, word: str, dropout: float, rng: random.Random) -> list[int]:
        """BPE (with dropout) of one pre-tokenised word -> ids. Leftmost best-ranked merge first,
        the order ``tokenizers`` uses, so dropout 0 reproduces its ids exactly (tested)."""
        symbols = list(word)
        while len(symbols) > 1:
            best, best_rank = -1, None
            for i in range(len(symbols) - 1):
                rank = self._ranks.get((symbols[i], symbols[i + 1]))
                if rank is None or (dropout > 0 and rng.random() < dropout):
                    continue
                if best_rank is None or rank < best_rank:
                    best, best_rank = i, rank
            if best < 0:
                break
            symbols[best:best + 2] = [symbols[best] + symbols[best + 1]]
        return [self._vocab[s] for s in symbols]

    def encode_ids(self, text: str, dropout: float = 0.0, rng: random.Random | None = None
                   ) -> list[int]:
        """Unpadded BPE ids of one text. dropout 0 -> ``tokenizers``' own encoder."""
        if dropout <= 0:
            return self._tok.encode(text, add_special_tokens=False).ids
        if rng is None:
            raise ValueError("BPE dropout needs a seeded random.Random (rng=...)")
        return [i for w in self._words(text) for i in self._merge(w, dropout, rng)]

    def encode(self, texts: Sequence[str], text_len: int, dropout: float = 0.0,
               seed: int | None = None):
        """[B, text_len] int64: BPE ids truncated to ``text_len``, then the pad token of each
        remaining position (V + t). ``dropout > 0`` needs ``seed`` (training draws it from the
        loop's torch RNG, so resume is exact)."""
        import torch

        rng = random.Random(seed) if dropout > 0 else None
        out = torch.empty(len(texts), text_len, dtype=torch.int64)
        pads = torch.arange(text_len) + self.vocab_size
        for b, text in enumerate(texts):
            ids = self.encode_ids(text, dropout, rng)[:text_len]
            out[b] = pads
            out[b, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return out

    def decode(self, ids) -> str:
        """Inverse of ``encode`` (pad ids dropped)."""
        ids = [int(i) for i in ids if int(i) < self.vocab_size]
        return self._tok.decode(ids)
