"""Modifier tokens: initialisation, refusals, and only the new rows change under AdamW."""

import pytest
import torch

from langfree.families.custom_diffusion.tokens import (
    initializer_id,
    install_modifier_tokens,
    parse_modifier_tokens,
)


@pytest.fixture()
def parts(one_thread):
    from langfree.families.sd.config import PRESETS
    from langfree.families.sd.pipeline import build_components

    return build_components(PRESETS["test"])


def test_parse_and_initialise(parts):
    assert parse_modifier_tokens("<new1>+<new2>") == ["<new1>", "<new2>"]
    with pytest.raises(ValueError, match="repeated"):
        parse_modifier_tokens("<new1>+<new1>")
    base = parts.text_encoder.get_input_embeddings().weight.detach().clone()
    emb = install_modifier_tokens(parts.tokenizer, parts.text_encoder, ["<new1>", "<new2>"],
                                  ["ktn", "cat"])
    ids = parts.tokenizer("a <new1> and a <new2>", add_special_tokens=False).input_ids
    assert 49408 in ids and 49409 in ids and len(parts.tokenizer) == 49410
    ktn, cat = parts.tokenizer.convert_tokens_to_ids("ktn"), initializer_id(parts.tokenizer, "cat")
    assert torch.equal(emb.rows[0], base[ktn]) and torch.equal(emb.rows[1], base[cat])


def test_multi_token_initializer_is_refused(parts):
    with pytest.raises(ValueError, match="not one token of the vocabulary"):
        initializer_id(parts.tokenizer, "ktnxqzw")


def test_existing_token_is_refused(parts):
    with pytest.raises(ValueError, match="already in the tokenizer"):
        install_modifier_tokens(parts.tokenizer, parts.text_encoder, ["cat"], ["ktn"])


def test_only_modifier_rows_change_after_a_step(parts):
    emb = install_modifier_tokens(parts.tokenizer, parts.text_encoder, ["<new1>"], ["ktn"])
    base = emb.base.weight.detach().clone()
    rows = emb.rows.detach().clone()
    opt = torch.optim.AdamW([emb.rows], lr=1e-2, weight_decay=1e-2)  # the official wd
    ids = parts.tokenizer(["a photo of a <new1> cat"], padding="max_length", max_length=77,
                          return_tensors="pt").input_ids
    for _ in range(2):
        opt.zero_grad()
        parts.text_encoder(ids)[0].square().mean().backward()
        opt.step()
    assert torch.equal(emb.base.weight, base)                 # all 49 408 rows bit-identical
    assert emb.base.weight.grad is None
    assert not torch.equal(emb.rows, rows)
