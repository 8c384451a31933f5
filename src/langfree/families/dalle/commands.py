"""The DALL·E family's command: ``langfree tokenizer train`` (for the lead to register)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def tokenizer_train(
    data: Annotated[Path, typer.Argument(help="Archive (.zip) whose captions to train on.")],
    vocab: Annotated[int, typer.Option("--vocab", help="BPE vocabulary size (paper 16384).")
                     ] = 16384,
    out: Annotated[Path, typer.Option("--out", help="tokenizer.json to write.")
                   ] = Path("tokenizer.json"),
) -> None:
    """Train the caption BPE (HF tokenizers, byte-level) on an archive's captions; pass the
    file to ``langfree train dalle --tokenizer``. BPE dropout is applied at training time by
    the family, never stored in the file."""
    from langfree.data.archive import ArchiveError
    from langfree.families.dalle.bpe import CaptionTokenizer, TokenizerError, train_tokenizer

    try:
        path = train_tokenizer(data, vocab, out)
    except (TokenizerError, ArchiveError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {path} ({CaptionTokenizer.from_file(path).vocab_size} tokens)")
