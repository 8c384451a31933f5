"""Features sidecar: contents, reuse, resume after interruption, staleness, ConditionedDataset."""

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import langfree.data.features as F
from langfree.data.archive import ArchiveWriter, ImageArchive
from langfree.data.features import (
    ConditionedDataset,
    caption_choice,
    encode_archive,
    encoder_fingerprint,
    load_features,
)
from langfree.data.shapes import write_shapes
from langfree.encoders import load_encoder, save_random_small_clip


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return load_encoder(str(save_random_small_clip(tmp_path_factory.mktemp("enc") / "tiny", seed=1)))


@pytest.fixture
def shapes_zip(tmp_path):
    return write_shapes(tmp_path / "shapes.zip", count=40, resolution=32, seed=2)


@pytest.fixture
def counter(monkeypatch):
    """Counts encoder chunks actually computed (the reuse tests' witness)."""
    calls = []
    real = F._encode_chunk

    def counting(archive, encoder, start, stop, *args):
        calls.append((start, stop))
        return real(archive, encoder, start, stop, *args)

    monkeypatch.setattr(F, "_encode_chunk", counting)
    return calls


def test_features_match_the_encoder(shapes_zip, encoder):
    feats = load_features(shapes_zip, encoder, batch_size=16, progress=False)
    archive = ImageArchive(shapes_zip)
    assert feats.image_emb.shape == (40, encoder.embed_dim)
    counts = [len(archive.captions(i)) for i in range(40)]
    assert feats.caption_offsets.tolist() == np.cumsum([0] + counts).tolist()
    assert feats.caption_emb.shape == (sum(counts), encoder.embed_dim)
    images = archive.images([0, 7]).float() / 127.5 - 1
    torch.testing.assert_close(feats.image_emb[[0, 7]], encoder.encode_image(images))
    torch.testing.assert_close(feats.captions_of(7), encoder.encode_text(archive.captions(7)))
    assert feats.fingerprint == encoder_fingerprint(encoder) and feats.spec == encoder.spec
    assert feats.path.parent == shapes_zip.parent and feats.fingerprint in feats.path.name


def test_sidecar_is_reused(shapes_zip, encoder, counter):
    path = encode_archive(shapes_zip, encoder, chunk_images=16, progress=False)
    assert len(counter) == 3  # 40 images in chunks of 16
    mtime = path.stat().st_mtime_ns
    again = load_features(shapes_zip, encoder, progress=False)
    assert len(counter) == 3 and again.path == path and path.stat().st_mtime_ns == mtime
    assert not list(shapes_zip.parent.glob("*.partial")) and not list(shapes_zip.parent.glob("*.tmp-*"))


def test_interrupted_run_resumes_from_finished_chunks(shapes_zip, encoder, counter, monkeypatch):
    real = F._encode_chunk  # the counting wrapper

    def dies_on_third(archive, enc, start, stop, *args):
        if start == 32:
            raise KeyboardInterrupt
        return real(archive, enc, start, stop, *args)

    monkeypatch.setattr(F, "_encode_chunk", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        encode_archive(shapes_zip, encoder, chunk_images=16, progress=False)
    assert not F.sidecar_path(shapes_zip, encoder).exists()  # no partial sidecar, ever
    monkeypatch.setattr(F, "_encode_chunk", real)
    counter.clear()
    encode_archive(shapes_zip, encoder, batch_size=16, chunk_images=16, progress=False)
    resumed = load_features(shapes_zip, encoder, progress=False)
    assert counter == [(32, 40)]  # only the unfinished chunk was computed
    fresh = encoder.encode_image(ImageArchive(shapes_zip).images(range(40)).float() / 127.5 - 1)
    torch.testing.assert_close(resumed.image_emb, fresh)


def test_rebuilt_archive_invalidates_the_sidecar(shapes_zip, encoder, counter):
    first = load_features(shapes_zip, encoder, progress=False)
    write_shapes(shapes_zip, count=40, resolution=32, seed=3)  # same name, other images
    second = load_features(shapes_zip, encoder, progress=False)
    assert second.path == first.path and len(counter) == 2
    assert not torch.equal(first.image_emb, second.image_emb)


def test_other_weights_give_another_fingerprint(encoder, tmp_path):
    other = load_encoder(str(save_random_small_clip(tmp_path / "other", seed=2)))
    same = load_encoder(encoder.spec)
    assert encoder_fingerprint(other) != encoder_fingerprint(encoder)
    assert encoder_fingerprint(same) == encoder_fingerprint(encoder)


def test_conditioned_dataset_is_deterministic(shapes_zip, encoder):
    feats = load_features(shapes_zip, encoder, progress=False)
    archive = ImageArchive(shapes_zip)
    ds, twin, other = (ConditionedDataset(archive, feats, seed=s) for s in (0, 0, 1))
    n = len(ds)
    item = ds[3 * n + 5]
    assert item["index"] == 5 and item["has_caption"] is True
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 32, 32)
    assert torch.equal(item["image_emb"], feats.image_emb[5])
    assert any(torch.equal(item["text_emb"], row) for row in feats.captions_of(5))
    keys = range(0, 6 * n, 7)
    texts = torch.stack([ds[k]["text_emb"] for k in keys])
    assert torch.equal(texts, torch.stack([twin[k]["text_emb"] for k in keys]))
    assert not torch.equal(texts, torch.stack([other[k]["text_emb"] for k in keys]))
    # epochs pick different phrasings of the same image
    picks = {caption_choice(0, epoch, 5, len(archive.captions(5))) for epoch in range(20)}
    assert len(picks) > 1


def test_archive_without_captions(tmp_path, encoder):
    dest = tmp_path / "plain.zip"
    with ArchiveWriter(dest, resolution=32) as w:
        for i in range(6):
            w.add(np.full((32, 32, 3), 40 * i, np.uint8))
    feats = load_features(dest, encoder, progress=False)
    assert feats.caption_emb.shape == (0, encoder.embed_dim)
    assert feats.caption_offsets.tolist() == [0] * 7
    item = ConditionedDataset(dest, feats)[8]
    assert item["has_caption"] is False and item["index"] == 2
    assert torch.equal(item["text_emb"], torch.zeros(encoder.embed_dim))


def test_features_of_another_archive_are_refused(shapes_zip, tmp_path, encoder):
    small = write_shapes(tmp_path / "small.zip", count=10, resolution=32, seed=2)
    feats = load_features(shapes_zip, encoder, progress=False)
    with pytest.raises(ValueError, match="langfree encode"):
        ConditionedDataset(small, feats)


def test_cli_encode(shapes_zip, encoder):
    from langfree.cli import app

    result = CliRunner().invoke(app, ["encode", str(shapes_zip), "--encoder", encoder.spec, "--batch", "8"])
    assert result.exit_code == 0, result.output
    assert F.sidecar_path(shapes_zip, encoder).is_file()
    bad = CliRunner().invoke(app, ["encode", str(shapes_zip), "--encoder", "open_clip:ViT-B-32"])
    assert bad.exit_code == 2 and "names no weights" in bad.output
