"""DALL·E transformer: KV cache, guidance, loss weighting, per-seed sampling, tiny overfit."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from langfree.families.dalle.config import PRESETS, DalleSampleOptions
from langfree.families.dalle.loss import dalle_loss
from langfree.families.dalle.sampler import candidate_seed, sample_codes
from langfree.families.dalle.transformer import DalleTransformer, KVCache

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = PRESETS["tiny"]  # V 64, L 6, K 16, 3×3 grid


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    net = DalleTransformer(replace(CFG, **kw)).eval()
    # larger random weights than the 0.02 init, so logits differ clearly between rows/steps
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return net


def _text(B, seed=1):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, CFG.text_vocab, (B, CFG.text_len), generator=g)
    t[:, 4:] = CFG.text_vocab + torch.arange(4, CFG.text_len)  # per-position pads
    return t


NULL = CFG.text_vocab + torch.arange(CFG.text_len)


def test_cached_logits_equal_uncached():
    net, text = _net(), _text(3)
    codes = torch.randint(0, CFG.image_vocab, (3, CFG.image_tokens))
    _, full = net(text, codes)  # (B, N, K) teacher-forced, no cache
    cache = KVCache(3, net.config, "cpu")
    h = net.run(net.embed_prefix(text), cache)[:, -1]
    steps = [net.to_image(h)]
    for j in range(CFG.image_tokens - 1):
        h = net.run(net.embed_image(codes[:, j:j + 1], j), cache)[:, -1]
        steps.append(net.to_image(h))
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_cached_and_uncached_generation_same_tokens(scale):
    net, text = _net(), _text(2)
    opts = DalleSampleOptions(filter_thres=0.5, guidance_scale=scale)
    a = sample_codes(net, text, NULL, [5, 6], opts, use_cache=True)
    b = sample_codes(net, text, NULL, [5, 6], opts, use_cache=False)
    assert torch.equal(a, b)


def test_guidance_never_mutates_and_scale_one_is_unguided():
    net, text = _net(), _text(2)
    before, null_before = text.clone(), NULL.clone()
    guided = sample_codes(net, text, NULL, [1, 2], DalleSampleOptions(guidance_scale=4.0))
    assert torch.equal(text, before) and torch.equal(NULL, null_before)
    one = sample_codes(net, text, NULL, [1, 2], DalleSampleOptions(guidance_scale=1.0))
    # scale 1 = unguided: identical to a model call that never sees the null rows
    opts = DalleSampleOptions(guidance_scale=1.0)
    assert torch.equal(one, sample_codes(net, text, NULL * 0, [1, 2], opts))
    assert not torch.equal(one, guided)  # guidance does something at scale 4


def test_guided_logits_formula():
    """The guided distribution is u + s(c - u) of the cond and null rows' logits."""
    net, text = _net(), _text(1)
    rows = torch.cat([text, NULL[None]])
    h = net.run(net.embed_prefix(rows))[:, -1]
    c, u = net.to_image(h)
    # greedy (top-1) sampling must pick argmax of the guided logits
    got = sample_codes(net, text, NULL, [0], DalleSampleOptions(filter_thres=0.999,
                                                                  guidance_scale=2.5))
    assert got[0, 0].item() == (u + 2.5 * (c - u)).argmax().item()


def test_sampling_per_seed_and_independent_of_batch():
    net = _net()
    text = _text(3)
    opts = DalleSampleOptions(filter_thres=0.0, guidance_scale=2.0)
    full = sample_codes(net, text, NULL, [10, 11, 12], opts)
    assert torch.equal(full, sample_codes(net, text, NULL, [10, 11, 12], opts))
    alone = sample_codes(net, text[1:2], NULL, [11], opts)
    assert torch.equal(full[1:2], alone)
    swapped = sample_codes(net, text[[2, 0]], NULL, [12, 10], opts)
    assert torch.equal(swapped, full[[2, 0]])
    other_seed = sample_codes(net, text[1:2], NULL, [99], opts)
    assert not torch.equal(other_seed, alone)
    # the global RNG is never touched
    state = torch.get_rng_state()
    sample_codes(net, text, NULL, [1, 2, 3], opts)
    assert torch.equal(state, torch.get_rng_state())
    assert candidate_seed(7, 0) == 7 and candidate_seed(7, 1) != candidate_seed(8, 1)
    # distinct where torch's generator looks (its low 32 bits), so the candidates differ
    low = {candidate_seed(7, c) % 2**32 for c in range(8)}
    assert len(low) == 8
    one = _text(1).repeat(2, 1)  # the same condition twice
    a, b = sample_codes(net, one, NULL, [candidate_seed(7, 1), candidate_seed(7, 2)], opts)
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="one seed per row"):
        sample_codes(net, text, NULL, [1], opts)


def test_top_k_one_is_greedy_and_codes_in_image_vocab():
    net, text = _net(), _text(2)
    opts = DalleSampleOptions(filter_thres=0.99, guidance_scale=1.0)  # k = 1
    a = sample_codes(net, text, NULL, [1, 2], opts)
    b = sample_codes(net, text, NULL, [3, 4], opts)
    assert torch.equal(a, b)  # greedy: seeds do not matter
    assert int(a.max()) < CFG.image_vocab and a.shape == (2, CFG.image_tokens)


def test_loss_weighting_one_text_seven_image():
    net, text = _net(), _text(2)
    codes = torch.randint(0, CFG.image_vocab, (2, CFG.image_tokens))
    loss, stats = dalle_loss(net, text, codes, 7.0)
    tl, il = net(text, codes)
    ce_t = F.cross_entropy(tl.reshape(-1, tl.shape[-1]), text.reshape(-1))
    ce_i = F.cross_entropy(il.reshape(-1, il.shape[-1]), codes.reshape(-1))
    assert loss.item() == pytest.approx((ce_t.item() + 7 * ce_i.item()) / 8, rel=1e-6)
    assert stats["ce_text"].item() == pytest.approx(ce_t.item(), rel=1e-6)
    assert tl.shape == (2, CFG.text_len, CFG.text_vocab + CFG.text_len)
    assert il.shape == (2, CFG.image_tokens, CFG.image_vocab)


def test_causality_text_logits_ignore_the_image():
    net, text = _net(), _text(1)
    a = torch.zeros(1, CFG.image_tokens, dtype=torch.long)
    b = a.clone()
    b[0, 5] = 3
    ta, ia = net(text, a)
    tb, ib = net(text, b)
    assert torch.equal(ta, tb)
    torch.testing.assert_close(ia[:, :6], ib[:, :6])  # image logit j sees codes < j only
    assert not torch.allclose(ia[:, 6:], ib[:, 6:])


def test_tiny_overfit_then_sample_the_memorised_codes():
    """A handful of (text, codes) pairs: the loss falls and greedy sampling returns them."""
    torch.manual_seed(0)
    net = DalleTransformer(replace(CFG, dim=64))
    text = _text(4, seed=3)
    codes = torch.randint(0, CFG.image_vocab, (4, CFG.image_tokens),
                          generator=torch.Generator().manual_seed(4))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    first = None
    for _ in range(120):
        loss, _ = dalle_loss(net, text, codes)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    net.eval()
    greedy = DalleSampleOptions(filter_thres=0.99, guidance_scale=1.0)
    assert torch.equal(sample_codes(net, text, NULL, [0, 1, 2, 3], greedy), codes)
