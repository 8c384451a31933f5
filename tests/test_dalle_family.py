"""VQGAN and DALL·E families on the one loop: tiny end-to-end runs, snapshot round trips,
sidecar codes, sampling through Conditions, reranking, and what a missing input says."""

import json

import pytest
import torch

from langfree.data.shapes import write_shapes
from langfree.families.base import Phase, Progress
from langfree.families.dalle.augment import augmented_views, paper_crop
from langfree.families.dalle.config import DalleSampleOptions
from langfree.sampling.conditions import Conditions
from langfree.training.options import TrainOptions
from langfree.training.run import TrainRequest, train

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = {"vqgan": "langfree.families.vqgan", "dalle": "langfree.families.dalle"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """shapes at 16 px -> a tiny VQGAN run -> a tiny DALL·E run on it."""
    from langfree.families import registry

    mp = pytest.MonkeyPatch()
    for k, v in FAMILIES.items():
        mp.setitem(registry._FAMILIES, k, v)
    root = tmp_path_factory.mktemp("dalle")
    data = write_shapes(root / "shapes.zip", count=24, resolution=16, seed=0)
    opts = {"outdir": str(root / "runs"), "kimg": 0.032, "batch": 8, "tick_kimg": 0.016,
            "snap": 1}
    vq_run = train(TrainRequest(family="vqgan", data=str(data), preset="tiny",
                                options=TrainOptions(**opts)))
    dalle_run = train(TrainRequest(family="dalle", data=str(data), preset="tiny",
                                   family_options={"vqgan": str(vq_run)},
                                   options=TrainOptions(**opts)))
    yield data, vq_run, dalle_run
    mp.undo()


def _latest(run):
    from langfree.checkpoint import resolve_snapshot

    return resolve_snapshot(run)


def test_vqgan_run_logs_codebook_stats_and_snapshot_holds_only_the_vqgan(runs):
    _, vq_run, _ = runs
    snap = _latest(vq_run)
    manifest = json.loads((snap / "manifest.json").read_text())
    assert manifest["family"] == "vqgan" and manifest["modules"] == ["vqgan"]
    stats = [json.loads(line) for line in (vq_run / "stats.jsonl").read_text().splitlines()]
    text = json.dumps(stats)
    for key in ("psnr", "perplexity", "dead_share", "d_hinge"):  # disc on after step 2
        assert key in text, key


def test_dalle_snapshot_references_vqgan_carries_tokenizer_and_samples(runs):
    from langfree.checkpoint import load_snapshot

    _, _, dalle_run = runs
    snap = _latest(dalle_run)
    manifest = json.loads((snap / "manifest.json").read_text())
    assert manifest["modules"] == ["transformer_ema"]
    assert manifest["assets"] == ["tokenizer.json"] and "vqgan" in manifest["references"]
    assert not (snap / "vqgan.safetensors").exists()  # referenced, never copied
    fam = load_snapshot(snap, encoder=None)
    cond = Conditions(prompts=["a red circle", "a blue square"])
    a = fam.sample(cond, [0, 1], DalleSampleOptions(guidance_scale=2.0))
    assert a.shape == (2, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    again = load_snapshot(snap, encoder=None).sample(cond, [0, 1],
                                                     DalleSampleOptions(guidance_scale=2.0))
    assert torch.equal(a, again)  # save/load round trip: identical images
    one = fam.sample(cond.select([1]), [1], DalleSampleOptions(guidance_scale=2.0))
    assert torch.equal(one[0], a[1])  # image i depends only on its row and seed
    with pytest.raises(ValueError, match="rerank"):
        fam.sample(cond, [0, 1], DalleSampleOptions(rerank=2))
    with pytest.raises(ValueError, match="prompt"):
        fam.sample(Conditions(prompts=[None]), [0])


def test_image_codes_sidecar_is_reused_and_holds_k_sets(runs):
    data, _, _ = runs
    files = sorted(data.parent.glob("shapes.image_codes-*.safetensors"))
    assert len(files) == 1
    from safetensors.torch import load_file

    codes = load_file(str(files[0]))["image_codes"]
    assert codes.shape[:2] == (24, 1)  # tiny preset: augment_sets 0 -> the plain view only
    assert list(data.parent.glob("shapes.tokenizer-*.json"))  # cached BPE of the captions


def test_rerank_picks_the_candidate_the_encoder_likes(runs):
    from langfree.checkpoint import load_snapshot

    _, _, dalle_run = runs

    class Bright:  # a stand-in encoder: "image embedding" = mean brightness direction
        spec, embed_dim, image_size = "bright", 2, 16

        def encode_image(self, x):
            m = x.mean(dim=(1, 2, 3))
            return torch.nn.functional.normalize(torch.stack([m, torch.ones_like(m)], 1), dim=1)

        def encode_text(self, texts):
            return torch.nn.functional.normalize(torch.tensor([[1.0, 0.0]] * len(texts)), dim=1)

    fam = load_snapshot(_latest(dalle_run), encoder=None)
    fam.encoder = Bright()
    cond = Conditions(prompts=["a green triangle"])
    best = fam.sample(cond, [3], DalleSampleOptions(rerank=4))
    from langfree.families.dalle.sampler import candidate_seed

    cands = torch.cat([fam.sample(cond, [candidate_seed(3, c)], DalleSampleOptions())
                       for c in range(4)])
    assert len({c.mean().item() for c in cands}) > 1  # the candidates differ, so rerank can choose
    assert torch.equal(best[0], cands[cands.mean(dim=(1, 2, 3)).argmax()])
    assert torch.equal(cands[0], fam.sample(cond, [3], DalleSampleOptions())[0])


def test_paper_crop_ranges_and_determinism():
    img = torch.arange(3 * 20 * 40, dtype=torch.float32).view(3, 20, 40)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        assert paper_crop(img, 16, g).shape == (3, 16, 16)
    u8 = (torch.rand(2, 3, 16, 16) * 255).to(torch.uint8)
    v1, v2 = augmented_views(u8, 16, 3), augmented_views(u8, 16, 3)
    assert v1.shape == (2, 3, 3, 16, 16) and torch.equal(v1, v2)
    torch.testing.assert_close(v1[:, 0], u8.float() / 127.5 - 1)  # view 0: the plain image
    # crops of an image do not depend on its batch mates
    assert torch.equal(augmented_views(u8[1:], 16, 3)[0], v1[1])
    assert any(not torch.equal(v1[:, v], v1[:, 0]) for v in (1, 2))  # t=R, x=y=0: identity


def test_missing_vqgan_says_what_to_pass(runs, tmp_path):
    data, _, _ = runs
    with pytest.raises(Exception, match="--vqgan"):
        train(TrainRequest(family="dalle", data=str(data), preset="tiny",
                           options=TrainOptions(outdir=str(tmp_path), kimg=0.008, batch=4)))


def test_vqgan_disc_phase_zero_before_start():
    from langfree.families.vqgan.config import PRESETS
    from langfree.families.vqgan.family import VQGANFamily

    fam = VQGANFamily(PRESETS["tiny"])
    batch = {"image": torch.rand(2, 3, 16, 16) * 2 - 1}
    disc = Phase("disc", ("discriminator",), "disc")
    out = fam.loss(disc, fam.modules(), batch, Progress(0, 0, 100))
    assert out.loss.item() == 0.0 and not out.stats
    out = fam.loss(disc, fam.modules(), batch, Progress(5, 10, 100))
    assert out.loss.item() > 0
    main = fam.loss(Phase("main", ("vqgan",), "main"), fam.modules(), batch, Progress(5, 10, 100))
    assert "disc_lambda" in main.stats and "perplexity" in main.stats


def test_producer_holds_plain_and_augmented_code_sets(runs):
    from dataclasses import replace

    from langfree.families.dalle.config import PRESETS
    from langfree.families.dalle.family import DalleFamily

    _, vq_run, _ = runs
    fam = DalleFamily(replace(PRESETS["tiny"], image_vocab=64, image_grid=8, augment_sets=3))
    fam.load_vqgan(str(vq_run))
    producer = fam.producers()["image_codes"]
    images = (torch.rand(2, 3, 16, 16) * 255).to(torch.uint8)
    codes = producer.encode(images)["image_codes"]
    assert codes.shape == (2, 3, 64)
    assert torch.equal(codes[:, 0], fam.vqgan.encode(images.float() / 127.5 - 1))  # set 0: plain
    assert producer.fingerprint.endswith("k3")
    # the loss draws one set per sample from the global RNG
    torch.manual_seed(0)
    pick = fam.codes({"image_codes": codes.float()})
    assert pick.dtype == torch.int64 and pick.shape == (2, 64)
    assert all(any(torch.equal(pick[b], codes[b, k]) for k in range(3)) for b in range(2))
