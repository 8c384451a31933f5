"""The CLIP BPE tokenizer (49 408 tokens), built offline from the vocabulary open_clip ships.

Stable Diffusion 1.x uses OpenAI CLIP's tokenizer. Its BPE table ships inside the open_clip wheel
(``bpe_simple_vocab_16e6.txt.gz``), so langfree rebuilds the exact ``vocab.json`` /
``merges.txt`` pair a diffusers pipeline keeps in ``tokenizer/`` without any download.

The vocabulary is built as OpenAI's ``SimpleTokenizer`` builds it: the 256 byte symbols, the
same with the end-of-word mark ``</w>``, one token per merge (48 894 merges), then the two
specials. Ids therefore match open_clip's tokenizer.

Trap (transformers 5, REFERENCE §1): ``CLIPTokenizer(vocab_file=..., merges_file=...)`` ignores
the files (every word becomes id 2) and ``CLIPTokenizer.from_pretrained(hub_id)`` offline gives a
2-token tokenizer. The constructor takes ``vocab=dict, merges=list``; every path here checks
``len(tokenizer) == CLIP_VOCAB_SIZE`` afterwards.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

CLIP_VOCAB_SIZE = 49408
N_MERGES = CLIP_VOCAB_SIZE - 2 * 256 - 2  # 48 894
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CONTEXT_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable unicode symbols (the BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


@lru_cache(maxsize=1)
def clip_bpe() -> tuple[dict[str, int], tuple[str, ...]]:
    """(vocab token -> id, merges as "a b" lines) from open_clip's bundled BPE file."""
    # find the file without importing open_clip (that import pulls torchvision/timm: ~9 s)
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip_torch is not installed; pip install open_clip_torch")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"open_clip's BPE file is missing ({path}); reinstall open_clip_torch")
    lines = gzip.open(path, "rt", encoding="utf-8").read().split("\n")
    merges = tuple(lines[1 : N_MERGES + 1])  # line 0 is a version header
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"open_clip's BPE gave {len(vocab)} tokens, expected {CLIP_VOCAB_SIZE}")
    return vocab, merges


def write_vocab_files(dirpath: str | Path) -> None:
    """Write vocab.json and merges.txt (the diffusers ``tokenizer/`` layout) into ``dirpath``."""
    vocab, merges = clip_bpe()
    dirpath = Path(dirpath)
    dirpath.mkdir(parents=True, exist_ok=True)
    (dirpath / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (dirpath / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def build_clip_tokenizer(model_max_length: int = CONTEXT_LENGTH):
    """A transformers CLIPTokenizer with the full CLIP vocabulary, built offline."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe()
    pairs = [tuple(m.split()) for m in merges]  # the tokenizers BPE wants (a, b) pairs
    tok = CLIPTokenizer(vocab=dict(vocab), merges=pairs, model_max_length=model_max_length)
    check_tokenizer(tok)
    return tok


def check_tokenizer(tokenizer, where: str = "the tokenizer", expected: int | None = None) -> None:
    """Refuse a silently empty tokenizer (transformers 5 returns one instead of failing)."""
    n = len(tokenizer)
    low = CLIP_VOCAB_SIZE if expected is None else expected
    if n < low:
        raise ValueError(
            f"{where} has {n} tokens, expected at least {low}: its vocab.json/merges.txt or "
            "tokenizer.json is missing or was not read. Pass a pipeline directory whose "
            "tokenizer/ holds vocab.json and merges.txt (langfree train sd writes one)."
        )
    ids = tokenizer("a photo of a cat", add_special_tokens=False).input_ids
    if len(set(ids)) < 2 or tokenizer.unk_token_id in ids:
        raise ValueError(f"{where} maps ordinary words to the unknown token; its files were not read")
