"""Small-CLIP training: a few steps on a tiny shapes archive write a loadable encoder and metrics."""

import json

import pytest
import torch
from typer.testing import CliRunner

from langfree.data.archive import ArchiveWriter
from langfree.data.shapes import write_shapes
from langfree.encoders import load_encoder, small_clip_config, train_small_clip
from langfree.encoders.small_clip import retrieval_metrics

TINY = small_clip_config(embed_dim=16, width=32, vision_layers=1, text_layers=1, patch_size=8,
                         context_length=16)


@pytest.fixture(scope="module")
def shapes_zip(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp("shapes") / "shapes.zip", count=160, resolution=32, seed=5)


def test_tiny_training_run_writes_encoder_and_metrics(shapes_zip, tmp_path):
    out = tmp_path / "clip"
    metrics = train_small_clip(shapes_zip, out, steps=3, batch=16, seed=1, holdout=60,
                               model_cfg=TINY, progress=False)
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == metrics
    assert saved["eval_pairs"] == 60 and saved["steps"] == 3
    for key in ("retrieval_top1", "retrieval_top1_exact", "image_to_text_top1"):
        assert 0.0 <= saved[key] <= 1.0
    # the lenient rule (same attributes) can only add hits to the exact rule
    assert saved["retrieval_top1"] >= saved["retrieval_top1_exact"]
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["format"] == "langfree-encoder" and meta["model_cfg"] == TINY
    assert meta["context_length"] == 16 and meta["image_size"] == 32
    enc = load_encoder(str(out))
    assert enc.embed_dim == 16
    assert not list(out.glob("*.tmp-*"))  # atomic writes leave no temp files


def test_training_is_seeded(shapes_zip, tmp_path):
    a = train_small_clip(shapes_zip, tmp_path / "a", steps=2, batch=8, seed=4, holdout=60,
                         model_cfg=TINY, progress=False)
    b = train_small_clip(shapes_zip, tmp_path / "b", steps=2, batch=8, seed=4, holdout=60,
                         model_cfg=TINY, progress=False)
    assert a["final_loss"] == b["final_loss"]
    assert (tmp_path / "a" / "encoder.safetensors").read_bytes() == (tmp_path / "b" / "encoder.safetensors").read_bytes()


class _Oracle:
    """A fake encoder that embeds images and captions by a key of their ground-truth attributes."""

    image_size, spec = 32, "oracle"

    def __init__(self, archive, indices, key):
        keys = {i: key(archive.attributes(i)) for i in indices}
        ids = {k: j for j, k in enumerate(dict.fromkeys(keys.values()))}
        self.embed_dim = len(ids)
        self.by_text = {c: ids[keys[i]] for i in indices for c in archive.captions(i)}
        self.by_image = {archive.image(i).tobytes(): ids[keys[i]] for i in indices}

    def _onehot(self, ids):
        return torch.nn.functional.one_hot(torch.tensor(ids), self.embed_dim).float()

    def encode_text(self, texts):
        return self._onehot([self.by_text[t] for t in texts])

    def encode_image(self, images):
        pixels = ((images + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)  # [B, H, W, 3]
        return self._onehot([self.by_image[p.numpy().tobytes()] for p in pixels])


def test_retrieval_hit_rule_counts_identical_main_attributes(shapes_zip):
    from langfree.data.archive import ImageArchive

    archive = ImageArchive(shapes_zip)
    indices = list(range(60))
    main = lambda a: (a["shape"], a["color"], a["size"], a["position"])
    m = retrieval_metrics(_Oracle(archive, indices, main), archive, indices)
    assert m["eval_pairs"] == 60
    assert m["retrieval_top1"] == 1.0 and m["image_to_text_top1"] == 1.0
    # one-hot oracle: a caption's feature IS its image's; different keys are orthogonal
    assert m["paired_cosine"] == pytest.approx(1.0)
    same = sum(main(archive.attributes(i)) == main(archive.attributes(j))
               for i in indices for j in indices if i != j)
    assert m["unpaired_cosine"] == pytest.approx(same / (60 * 59))
    # colour alone does not identify shape, size and position: those misses must count
    m = retrieval_metrics(_Oracle(archive, indices, lambda a: a["color"]), archive, indices)
    assert m["retrieval_top1"] < 1.0 and m["retrieval_top1_exact"] < 1.0


def test_archive_without_captions_is_refused(tmp_path):
    import numpy as np

    dest = tmp_path / "plain.zip"
    with ArchiveWriter(dest, resolution=32) as w:
        for i in range(10):
            w.add(np.full((32, 32, 3), i, np.uint8))
    with pytest.raises(ValueError, match="no caption"):
        train_small_clip(dest, tmp_path / "out", steps=1, batch=4, holdout=2, model_cfg=TINY, progress=False)


def test_cli_encoder_train(shapes_zip, tmp_path):
    from langfree.cli import app

    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["encoder", "train", str(shapes_zip), "--outdir", str(out),
                                      "--steps", "1", "--batch", "8", "--holdout", "50",
                                      "--embed-dim", "32"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["eval_pairs"] == 50
    assert load_encoder(str(out)).embed_dim == 32
    bad = CliRunner().invoke(app, ["encoder", "train", str(tmp_path / "missing.zip"), "--outdir", str(out)])
    assert bad.exit_code == 2 and "missing.zip" in bad.output


def test_archive_subset_follows_the_key_contract(shapes_zip):
    from langfree.data.archive import ImageArchive
    from langfree.encoders.small_clip import ArchiveSubset

    archive = ImageArchive(shapes_zip)
    sub = ArchiveSubset(archive, [7, 3, 11])
    assert len(sub) == 3 and sub.path == archive.path
    assert sub.captions(1) == archive.captions(3) and sub.attributes(2) == archive.attributes(11)
    item = sub[3 * 5 + 1]  # epoch 5, image 1
    assert item["index"] == 1
    assert torch.equal(item["image"], archive[3]["image"])
    assert torch.equal(sub.images([2, 0]), archive.images([11, 7]))


def test_small_clip_trains_through_the_generic_train_command(shapes_zip, tmp_path):
    from langfree.checkpoint import resolve_snapshot
    from langfree.families.registry import family_names
    from langfree.training.options import TrainOptions
    from langfree.training.run import TrainRequest, train

    assert "small-clip" in family_names()
    tiny = ["width=32", "vision_layers=1", "text_layers=1", "context_length=16", "embed_dim=16"]
    run = train(TrainRequest("small-clip", data=shapes_zip, overrides=tiny,
                             options=TrainOptions(outdir=str(tmp_path), kimg=0.032, batch=16,
                                                  tick_kimg=0.016, snap=0)))
    snap = resolve_snapshot(run)
    enc = load_encoder(str(snap / "export"))
    assert enc.embed_dim == 16
    assert json.loads((snap / "export" / "encoder.json").read_text())["model_cfg"] == TINY
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert stats and "Loss/main/loss" in stats[-1] and "Loss/main/logit_scale" in stats[-1]
