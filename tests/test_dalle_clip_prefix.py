"""DALL·E language-free mode (``condition="clip"``): a CLIP-embedding prefix trained on an
archive without captions (LAFITE-G pseudo text features of the image embedding), sampled from
prompt embeddings through the sampling contract; KV cache, guidance, snapshots and resume."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from langfree.families.dalle.config import PRESETS, DalleConfig, DalleSampleOptions
from langfree.families.dalle.loss import clip_condition, dalle_loss
from langfree.families.dalle.sampler import sample_codes
from langfree.families.dalle.transformer import DalleTransformer, KVCache
from langfree.sampling.conditions import Conditions, build_conditions
from langfree.training.options import TrainOptions
from langfree.training.run import TrainRequest, train
from test_lafite_family_helpers import tiny_small_clip

pytestmark = pytest.mark.usefixtures("one_thread")

CLIP = replace(PRESETS["tiny"], condition="clip", clip_dim=16, prefix_tokens=3)
PROMPTS = ["a large red circle at the top left", "a small blue square at the bottom right"]


def _write_uncaptioned(dest, count, resolution, seed=0):
    """Shapes images and their ground truth, no captions (what the quickstart's generator
    split holds)."""
    from langfree.data.archive import ArchiveWriter
    from langfree.data.shapes import draw_one

    with ArchiveWriter(dest, resolution) as w:
        for i in range(count):
            image, _, attrs = draw_one(seed, i, resolution)
            w.add(image, captions=(), source=f"shapes/{i}", attributes=attrs)
    return dest


def _opts(outdir, **kw):
    return TrainOptions(**{"outdir": str(outdir), "kimg": 0.032, "batch": 8,
                           "tick_kimg": 0.016, "snap": 1, **kw})


def _clip_request(files, outdir, **kw):
    return TrainRequest(family="dalle", data=str(files["bare"]), encoder=str(files["clip"]),
                        preset="tiny", family_options={"vqgan": str(files["vqgan"]),
                                                       "condition": "clip", "prefix_tokens": 3},
                        options=_opts(outdir, **kw))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """An image-only shapes archive at 16 px, a random small CLIP, a tiny VQGAN run on the
    archive, and a tiny clip-mode DALL·E run on both."""
    root = tmp_path_factory.mktemp("dalle_clip")
    bare = _write_uncaptioned(root / "bare.zip", 24, 16)
    clip = tiny_small_clip(root / "clip", embed_dim=16, image_size=16)
    vqgan = train(TrainRequest(family="vqgan", data=str(bare), preset="tiny",
                               options=_opts(root / "runs")))
    files = {"root": root, "bare": bare, "clip": clip, "vqgan": vqgan}
    files["run"] = train(_clip_request(files, root / "runs"))
    return files


def _latest(run):
    from langfree.checkpoint import resolve_snapshot

    return resolve_snapshot(run)


def _net(cfg=CLIP, seed=0):
    torch.manual_seed(seed)
    net = DalleTransformer(cfg).eval()
    with torch.no_grad():  # larger than the 0.02 init: logits differ clearly between rows
        for p in net.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
    return net


def _emb(B, seed=1):
    return F.normalize(torch.randn(B, CLIP.clip_dim, generator=torch.Generator().manual_seed(seed)),
                       dim=1)


NULL = torch.zeros(CLIP.clip_dim)


# ---------------------------------------------------------------------- training, data
def test_clip_mode_trains_on_an_archive_without_captions(files):
    run = files["run"]
    record = json.loads((run / "config.json").read_text())
    cfg = record["config"]
    assert cfg["condition"] == "clip" and cfg["clip_dim"] == 16 and cfg["tokenizer"] is None
    assert (cfg["image_vocab"], cfg["image_grid"]) == (64, 8)  # from the VQGAN
    snap = _latest(run)
    manifest = json.loads((snap / "manifest.json").read_text())
    assert manifest["modules"] == ["transformer_ema"] and manifest["assets"] == []
    assert "vqgan" in manifest["references"] and (snap / "grid.png").is_file()  # previews
    root = files["root"]
    assert not list(root.glob("bare.tokenizer-*"))  # no BPE, no captions read
    assert len(list(root.glob("bare.features-*.safetensors"))) == 1  # the encoder's sidecar
    assert len(list(root.glob("bare.image_codes-*.safetensors"))) == 1
    stats = [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]
    assert all("Loss/main/ce_image" in s and "Loss/main/ce_text" not in s for s in stats)
    assert all(np.isfinite(s["Loss/main/ce_image"]) for s in stats)
    from langfree.checkpoint import load_snapshot

    fam = load_snapshot(snap, encoder=None)
    names = {n for n, _ in fam.transformer_ema.named_parameters()}
    assert "cond_proj.weight" in names and not any(n.startswith(("text_", "to_text"))
                                                   for n in names)


def test_clip_condition_is_lafite_g_with_zero_null():
    from langfree.families.lafite import conditioning

    img = _emb(6, seed=3)
    torch.manual_seed(0)
    h = clip_condition(img, replace(CLIP, null_cond_prob=0.0, clip_noise=0.5))
    torch.manual_seed(0)
    eps = conditioning.random_directions(img.shape, img.device)
    torch.testing.assert_close(h, conditioning.gaussian_pseudo_text(img, eps, 1.0, 0.5))
    assert torch.allclose(h.norm(dim=1), torch.ones(6)) and (h * img).sum(1).min() < 0.999
    assert torch.equal(clip_condition(img, replace(CLIP, null_cond_prob=1.0)), torch.zeros(6, 16))
    h0 = clip_condition(img, replace(CLIP, null_cond_prob=0.0, clip_noise=0.0))
    torch.testing.assert_close(h0, img)  # ξ = 0: the image feature itself
    torch.manual_seed(1)
    mixed = clip_condition(img.repeat(50, 1), replace(CLIP, null_cond_prob=0.5))
    dropped = (mixed.abs().sum(1) == 0).float().mean().item()
    assert 0.3 < dropped < 0.7


def test_clip_loss_is_image_cross_entropy_only():
    net, emb = _net(), _emb(2)
    codes = torch.randint(0, CLIP.image_vocab, (2, CLIP.image_tokens))
    loss, stats = dalle_loss(net, emb, codes, 7.0)
    text_logits, image_logits = net(emb, codes)
    assert text_logits is None and image_logits.shape == (2, CLIP.image_tokens, CLIP.image_vocab)
    ce = F.cross_entropy(image_logits.flatten(0, 1), codes.flatten())
    assert loss.item() == pytest.approx(ce.item(), rel=1e-6) and set(stats) == {"ce_image"}
    with pytest.raises(ValueError, match="float embeddings"):
        net(codes[:, :4], codes)  # token ids are not a clip condition


def test_text_mode_on_an_uncaptioned_archive_fails_clearly(files, tmp_path):
    req = TrainRequest(family="dalle", data=str(files["bare"]), preset="tiny",
                       family_options={"vqgan": str(files["vqgan"])}, options=_opts(tmp_path))
    with pytest.raises(ValueError, match="--condition clip"):
        train(req)
    # with a tokenizer given, the data pipeline still refuses an archive without captions
    from langfree.data.pipeline import NeedError
    from langfree.data.shapes import write_shapes
    from langfree.families.dalle.bpe import train_tokenizer

    tok = train_tokenizer(write_shapes(tmp_path / "cap.zip", 8, 16, seed=1), 300,
                          tmp_path / "tok.json")
    req.family_options["tokenizer"] = str(tok)
    with pytest.raises(NeedError, match="trains on captions"):
        train(req)
    assert not list(tmp_path.glob("*/state"))  # refused before any step


def test_clip_mode_without_an_encoder_says_what_to_pass(files, tmp_path):
    req = _clip_request(files, tmp_path)
    req.encoder = None
    with pytest.raises(ValueError, match="--encoder"):
        train(req)


# ---------------------------------------------------------------------- sampling
def test_cached_and_uncached_generation_same_tokens():
    net, emb = _net(), _emb(2)
    for scale in (1.0, 3.0):
        opts = DalleSampleOptions(filter_thres=0.5, guidance_scale=scale)
        a = sample_codes(net, emb, NULL, [5, 6], opts, use_cache=True)
        b = sample_codes(net, emb, NULL, [5, 6], opts, use_cache=False)
        assert torch.equal(a, b)
    # the cache's logits are the teacher-forced ones, position by position
    codes = torch.randint(0, CLIP.image_vocab, (2, CLIP.image_tokens))
    _, full = net(emb, codes)
    cache = KVCache(2, net.config, "cpu")
    h = net.run(net.embed_prefix(emb), cache)[:, -1]
    steps = [net.to_image(h)]
    for j in range(CLIP.image_tokens - 1):
        h = net.run(net.embed_image(codes[:, j:j + 1], j), cache)[:, -1]
        steps.append(net.to_image(h))
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=0)
    assert cache.length == CLIP.seq_len == CLIP.prefix_tokens + CLIP.image_tokens - 1


def test_guidance_one_is_unguided_and_inputs_untouched():
    net, emb = _net(), _emb(2)
    before, null = emb.clone(), NULL.clone()
    guided = sample_codes(net, emb, null, [1, 2], DalleSampleOptions(guidance_scale=4.0))
    assert torch.equal(emb, before) and torch.equal(null, NULL)
    one = DalleSampleOptions(guidance_scale=1.0)
    # scale 1 never computes the null rows: any null gives the same tokens
    unguided = sample_codes(net, emb, null, [1, 2], one)
    assert torch.equal(unguided, sample_codes(net, emb, _emb(1, seed=9)[0], [1, 2], one))
    assert not torch.equal(unguided, guided)
    # guided logits are u + s(c - u) of the embedding row and the zero-embedding row
    h = net.run(net.embed_prefix(torch.cat([emb[:1], NULL[None]])))[:, -1]
    c, u = net.to_image(h)
    top1 = sample_codes(net, emb[:1], NULL, [0], DalleSampleOptions(filter_thres=0.999,
                                                                    guidance_scale=2.5))
    assert top1[0, 0].item() == (u + 2.5 * (c - u)).argmax().item()


def test_generation_from_prompt_embeddings(files):
    from langfree.checkpoint import load_snapshot
    from langfree.encoders import load_encoder

    snap = _latest(files["run"])
    fam = load_snapshot(snap)  # encoder "auto": the one the run recorded
    assert fam.encoder is not None
    cond = build_conditions(fam.encoder, PROMPTS)
    opts = DalleSampleOptions(guidance_scale=2.0)
    a = fam.sample(cond, [0, 1], opts)
    assert a.shape == (2, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    again = load_snapshot(snap, encoder=load_encoder(str(files["clip"]))).sample(cond, [0, 1], opts)
    assert torch.equal(a, again)  # save/load round trip
    assert torch.equal(fam.sample(cond.select([1]), [1], opts)[0], a[1])  # row + seed only
    # an embedding row without a prompt (image variation) conditions the same way
    bare = Conditions(prompts=[None], embeddings=cond.embeddings[1:])
    assert torch.equal(fam.sample(bare, [1], opts)[0], a[1])
    rr = fam.sample(cond, [0, 1], replace(opts, rerank=2))  # reranked by the same encoder
    assert rr.shape == a.shape
    with pytest.raises(ValueError, match="--encoder"):
        fam.sample(Conditions(prompts=PROMPTS), [0, 1], opts)  # no embeddings given
    wrong = Conditions(prompts=[None], embeddings=torch.ones(1, 8) / 8 ** 0.5)
    with pytest.raises(ValueError, match="16-d"):
        fam.sample(wrong, [0], opts)


def test_generate_and_eval_commands_on_a_clip_snapshot(files, tmp_path):
    from langfree.cli import app
    from langfree.data.shapes import write_shapes

    snap = _latest(files["run"])
    runner = CliRunner()
    args = ["generate", str(snap), "--prompt", PROMPTS[0], "--seeds", "0-1",
            "--sample", "guidance_scale=2"]
    first = runner.invoke(app, args + ["--outdir", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, args + ["--outdir", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    for name in ("row00-seed0000.png", "row00-seed0001.png"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / name)),
                              np.asarray(Image.open(tmp_path / "b" / name)))
    from langfree.sampling.generate import read_parameters

    params = read_parameters(tmp_path / "a" / "row00-seed0000.png")
    assert (params.family, params.seed, params.prompt) == ("dalle", 0, PROMPTS[0])
    assert params.options["guidance_scale"] == 2.0
    ref = write_shapes(tmp_path / "ref.zip", 8, 16, seed=2)
    result = runner.invoke(app, ["eval", str(files["run"]), "--metrics", "clip_score8",
                                 "--data", str(ref), "--sample", "guidance_scale=1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert np.isfinite(report["results"]["clip_score8"]["value"])


# ---------------------------------------------------------------------- resume
def test_resume_is_exact(files, tmp_path):
    """A run stopped after its first tick and resumed ends bit-identical to one that ran
    through: the pseudo-text noise, the null drops and the code-set choice all come from the
    loop's saved RNG."""
    straight = train(_clip_request(files, tmp_path / "a"))
    stopped = train(_clip_request(files, tmp_path / "b", max_ticks=1))
    assert len(list((stopped / "state").iterdir())) == 1
    resumed = train(_clip_request(files, tmp_path / "b", resume=str(stopped)))
    assert resumed == stopped and "resumed from" in (resumed / "log.txt").read_text()

    def final(run):
        snap = max((run / "snapshots").iterdir())
        (state,) = (run / "state").iterdir()
        out = {f"snapshot/{p.name}": p.read_bytes() for p in snap.glob("*.safetensors")}
        out.update({f"state/{p.name}": p.read_bytes() for p in state.glob("*.safetensors")
                    if not p.name.startswith("rng")})
        return out

    a, b = final(straight), final(resumed)
    assert set(a) == set(b) and len(a) >= 3
    for name in a:
        assert a[name] == b[name], f"{name} differs after resume"


def test_config_refuses_unknown_condition():
    with pytest.raises(ValueError, match="condition"):
        DalleConfig(condition="captions")
    assert DalleConfig().prefix_len == 257 and CLIP.prefix_len == 3
