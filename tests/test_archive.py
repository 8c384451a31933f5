"""Image archive: writer layout and atomicity, reader API, errors, official zips."""

import io
import json
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from langfree.data.archive import (
    ArchiveError,
    ArchiveWriter,
    ImageArchive,
    archive_name,
)


def _images(n, res=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, res, res, 3), dtype=np.uint8)


def _write(path, images, captions=None, attributes=None):
    with ArchiveWriter(path, images.shape[1], source="test") as w:
        for i, im in enumerate(images):
            w.add(im, captions=captions[i] if captions else [], source=f"src/{i}.jpg",
                  attributes=attributes[i] if attributes else None)
    return path


def _png(image):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def test_roundtrip_and_layout(tmp_path):
    images = _images(1003)
    caps = [[f"cap {i}", "other"] for i in range(1003)]
    path = _write(tmp_path / "a.zip", images, caps)
    with zipfile.ZipFile(path) as z:
        infos = {i.filename: i for i in z.infolist()}
        meta = json.loads(z.read("dataset.json"))
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos.values())
    assert "00000/img00000999.png" in infos and "00001/img00001000.png" in infos
    assert meta["format"] == "langfree-archive" and meta["version"] == 1
    assert meta["count"] == 1003 and meta["resolution"] == 8 and meta["labels"] is None
    assert meta["images"][7] == {"file": archive_name(7), "source": "src/7.jpg", "captions": caps[7]}

    a = ImageArchive(path)
    assert len(a) == 1003 and a.resolution == 8 and a.has_captions and a.path == path
    np.testing.assert_array_equal(a.image(1001), images[1001])
    assert a.captions(3) == caps[3] and a.attributes(3) is None


def test_item_keys_wrap_and_batches(tmp_path):
    images = _images(5)
    a = ImageArchive(_write(tmp_path / "a.zip", images))
    item = a[12]
    assert item["index"] == 2 and item["image"].dtype == torch.uint8
    assert item["image"].shape == (3, 8, 8)
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), images[2])
    batch = a.images([4, 0, 4])
    assert batch.shape == (3, 3, 8, 8) and batch.dtype == torch.uint8
    np.testing.assert_array_equal(batch[1].permute(1, 2, 0).numpy(), images[0])
    assert not a.has_captions


def test_preload_matches_lazy(tmp_path):
    images = _images(7)
    path = _write(tmp_path / "a.zip", images, attributes=[{"shape": "circle", "i": i} for i in range(7)])
    lazy, eager = ImageArchive(path), ImageArchive(path, preload=True)
    assert torch.equal(lazy.images(range(7)), eager.images(range(7)))
    assert torch.equal(lazy[3]["image"], eager[3]["image"])
    assert eager.attributes(4) == {"shape": "circle", "i": 4}


def test_has_captions_false_when_one_image_lacks_them(tmp_path):
    caps = [["x"], [], ["y"]]
    assert not ImageArchive(_write(tmp_path / "a.zip", _images(3), caps)).has_captions


def test_dataloader_workers_and_pickle(tmp_path):
    images = _images(6)
    a = ImageArchive(_write(tmp_path / "a.zip", images))
    a.image(0)  # opens the zip handle in this process; it must not travel to workers
    b = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(b.image(5), images[5])
    loader = torch.utils.data.DataLoader(a, batch_size=3, num_workers=2)
    got = torch.cat([batch["image"] for batch in loader])
    np.testing.assert_array_equal(got.permute(0, 2, 3, 1).numpy(), images)


def test_writer_failure_leaves_no_file(tmp_path):
    dest = tmp_path / "a.zip"
    with pytest.raises(RuntimeError, match="boom"), ArchiveWriter(dest, 8) as w:
        w.add(_images(1)[0])
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_failure_preserves_existing_archive(tmp_path):
    dest = _write(tmp_path / "a.zip", _images(4))
    before = dest.read_bytes()
    with pytest.raises(ValueError, match="expected uint8"), ArchiveWriter(dest, 8) as w:
        w.add(_images(1)[0])
        w.add(_images(1, res=9)[0])  # wrong size
    assert dest.read_bytes() == before and list(tmp_path.iterdir()) == [dest]


def test_writer_accepts_png_bytes(tmp_path):
    images = _images(2)
    with ArchiveWriter(tmp_path / "a.zip", 8) as w:
        for im in images:
            w.add(_png(im), captions=["c"])
    np.testing.assert_array_equal(ImageArchive(tmp_path / "a.zip").image(1), images[1])


def test_missing_archive(tmp_path):
    with pytest.raises(ArchiveError, match="nope.zip.*langfree dataset"):
        ImageArchive(tmp_path / "nope.zip")


def test_not_a_zip(tmp_path):
    path = tmp_path / "bad.zip"
    path.write_bytes(b"this is not a zip file at all")
    with pytest.raises(ArchiveError, match="bad.zip"):
        ImageArchive(path)


def test_truncated_zip(tmp_path):
    path = _write(tmp_path / "a.zip", _images(20))
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ArchiveError, match="a.zip"):
        ImageArchive(path)


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_corrupt_metadata_and_missing_member(tmp_path):
    bad_json = _zip(tmp_path / "j.zip", {"dataset.json": "{not json", "00000/img00000000.png": b""})
    with pytest.raises(ArchiveError, match="dataset.json is corrupt"):
        ImageArchive(bad_json)
    meta = {"format": "langfree-archive", "version": 1, "resolution": 8, "count": 1,
            "images": [{"file": "00000/img00000000.png", "source": "", "captions": []}]}
    missing = _zip(tmp_path / "m.zip", {"dataset.json": json.dumps(meta)})
    with pytest.raises(ArchiveError, match="incomplete"):
        ImageArchive(missing)
    future = _zip(tmp_path / "v.zip", {"dataset.json": json.dumps({**meta, "version": 99})})
    with pytest.raises(ArchiveError, match="version 99"):
        ImageArchive(future)


def test_corrupt_image_named(tmp_path):
    meta = {"format": "langfree-archive", "version": 1, "resolution": 8, "count": 1,
            "images": [{"file": "00000/img00000000.png", "source": "", "captions": []}]}
    path = _zip(tmp_path / "c.zip", {"dataset.json": json.dumps(meta),
                                     "00000/img00000000.png": b"\x89PNG garbage"})
    a = ImageArchive(path)
    with pytest.raises(ArchiveError, match="img00000000.png"):
        a.image(0)


def test_official_lafite_zip_reads_image_only(tmp_path):
    images = _images(3, res=16)
    members = {f"00000/img{i:08d}.png": _png(im) for i, im in enumerate(images)}
    official = {"labels": None, "clip_img_features": [[0.1] * 4] * 3,
                "clip_txt_features": [[[0.2] * 4]] * 3}
    a = ImageArchive(_zip(tmp_path / "o.zip", {**members, "dataset.json": json.dumps(official)}))
    assert len(a) == 3 and a.resolution == 16 and not a.has_captions
    assert a.captions(1) == [] and a.attributes(1) is None
    np.testing.assert_array_equal(a.image(2), images[2])
    bare = ImageArchive(_zip(tmp_path / "b.zip", members))  # StyleGAN2-ADA zip without metadata
    assert len(bare) == 3 and bare[4]["index"] == 1


def test_official_zip_without_images(tmp_path):
    with pytest.raises(ArchiveError, match="no images"):
        ImageArchive(_zip(tmp_path / "e.zip", {"dataset.json": json.dumps({"labels": None})}))
