"""Dataset tool: every bad input is skipped with a reason or converted correctly; output atomic."""

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from langfree.cli import app
from langfree.data import archive as archive_module
from langfree.data.archive import ImageArchive
from langfree.data.tool import DatasetError, build_dataset

R = 16


def _rgb(color, size=(40, 30)):
    return Image.new("RGB", size, color)


def _build(src, tmp_path, **kwargs):
    dest = tmp_path / "out.zip"
    report = build_dataset(src, dest, kwargs.pop("resolution", R), workers=1, **kwargs)
    return report, ImageArchive(dest)


def _by_source(archive):
    return {archive.source(i): i for i in range(len(archive))}


def _skip_reasons(report):
    return {source: reason for source, reason in report.skipped}


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    _rgb((200, 30, 30)).save(folder / "good.jpg", quality=95)
    return folder


def test_good_folder_with_captions(src, tmp_path):
    (src / "good.txt").write_text("a red thing\n\n  red again  \n", encoding="utf-8")
    (src / "nested" / "deeper").mkdir(parents=True)
    _rgb((20, 200, 20)).save(src / "nested" / "deeper" / "g.png")
    report, a = _build(src, tmp_path)
    assert report.written == 2 and not report.skipped and len(a) == 2 and a.resolution == R
    idx = _by_source(a)
    assert a.captions(idx["good.jpg"]) == ["a red thing", "red again"]
    assert a.captions(idx["nested/deeper/g.png"]) == []
    np.testing.assert_allclose(a.image(idx["nested/deeper/g.png"]).reshape(-1, 3).mean(0), (20, 200, 20), atol=1)
    meta = json.loads(zipfile.ZipFile(tmp_path / "out.zip").read("dataset.json"))
    assert meta["source"] == str(src.resolve())


def test_zero_byte_file_skipped(src, tmp_path):
    (src / "empty.jpg").write_bytes(b"")
    report, a = _build(src, tmp_path)
    assert len(a) == 1 and _skip_reasons(report) == {"empty.jpg": "empty file"}
    assert report.skip_counts == {"empty file": 1}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_skipped(src, tmp_path, fmt):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(buf, fmt)
    (src / f"cut.{fmt.lower()}").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    report, a = _build(src, tmp_path)
    assert len(a) == 1
    assert _skip_reasons(report)[f"cut.{fmt.lower()}"].startswith("corrupt or truncated image")


def test_corrupt_and_non_image_files_skipped(src, tmp_path):
    (src / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    (src / "readme.md").write_text("not a picture")
    (src / "data.bin").write_bytes(np.random.default_rng(1).bytes(500))
    report, a = _build(src, tmp_path)
    reasons = _skip_reasons(report)
    assert len(a) == 1 and set(reasons) == {"garbage.jpg", "readme.md", "data.bin"}
    assert reasons["readme.md"].startswith("not an image")
    assert reasons["data.bin"].startswith("not an image")
    summary = report.summary()
    assert all(name in summary for name in reasons) and "skipped 3 files" in summary


def test_grayscale_and_bilevel(src, tmp_path):
    Image.new("L", (30, 30), 77).save(src / "gray.png")
    Image.new("1", (30, 30), 1).save(src / "bits.png")
    _, a = _build(src, tmp_path)
    idx = _by_source(a)
    assert (a.image(idx["gray.png"]) == 77).all()
    assert (a.image(idx["bits.png"]) == 255).all()


def test_cmyk_converted(src, tmp_path):
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(src / "cmyk.jpg", quality=95)  # red
    Image.new("CMYK", (30, 30), (255, 0, 255, 0)).save(src / "cmyk.tif")  # green
    _, a = _build(src, tmp_path)
    idx = _by_source(a)
    red = a.image(idx["cmyk.jpg"]).reshape(-1, 3).mean(0)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    np.testing.assert_allclose(a.image(idx["cmyk.tif"]).reshape(-1, 3).mean(0), (0, 255, 0), atol=1)


def test_palette_with_transparency_on_white(src, tmp_path):
    pal = Image.new("P", (30, 30), 0)
    pal.putpalette([0, 0, 255] + [255, 0, 0] * 255)  # index 0 blue, others red
    pal.paste(1, (15, 0, 30, 30))  # right half index 1 (red), left half index 0
    pal.save(src / "pal.png", transparency=0)  # index 0 transparent
    Image.new("P", (30, 30), 0).save(src / "plain_pal.gif")
    _, a = _build(src, tmp_path, transform="stretch")
    image = a.image(_by_source(a)["pal.png"]).astype(int)
    assert (image[:, :4] >= 253).all()  # transparent -> white, not the palette's blue
    assert (np.abs(image[:, -4:] - [255, 0, 0]) <= 2).all()
    assert len(a) == 3


def test_rgba_composited_on_white(src, tmp_path):
    rgba = np.zeros((30, 30, 4), np.uint8)
    rgba[:, :15] = (0, 0, 255, 255)      # opaque blue
    rgba[:, 15:] = (0, 0, 0, 0)          # fully transparent black
    Image.fromarray(rgba, "RGBA").save(src / "alpha.png")
    Image.fromarray(np.full((30, 30, 4), (0, 0, 0, 128), np.uint8), "RGBA").save(src / "half.png")
    la = Image.new("LA", (30, 30), (0, 0))
    la.save(src / "la.png")
    _, a = _build(src, tmp_path, transform="stretch")
    idx = _by_source(a)
    image = a.image(idx["alpha.png"]).astype(int)
    assert (np.abs(image[:, :4] - [0, 0, 255]) <= 2).all()
    assert (image[:, -4:] >= 253).all()
    assert abs(int(a.image(idx["half.png"]).mean()) - 127) <= 2
    assert (a.image(idx["la.png"]) == 255).all()


def test_16bit_grayscale_scaled_not_clipped(src, tmp_path):
    Image.fromarray(np.full((30, 30), 32896, np.uint16)).save(src / "deep.png")
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (32, 1))
    Image.fromarray(ramp).save(src / "ramp.png")
    _, a = _build(src, tmp_path, resolution=32, transform="stretch")
    idx = _by_source(a)
    assert (a.image(idx["deep.png"]) == 128).all()
    row = a.image(idx["ramp.png"])[0, :, 0].astype(int)
    assert row[0] <= 2 and row[-1] >= 253 and (np.diff(row) >= 0).all()


def test_exif_rotation_applied(src, tmp_path):
    im = np.zeros((32, 64, 3), np.uint8)
    im[:, :32] = (255, 0, 0)   # stored: left red, right blue
    im[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored left becomes displayed top
    Image.fromarray(im).save(src / "rotated.jpg", exif=exif.tobytes(), quality=95)
    _, a = _build(src, tmp_path, transform="stretch")
    out = a.image(_by_source(a)["rotated.jpg"]).astype(int)
    top, bottom = out[: R // 4].reshape(-1, 3).mean(0), out[-R // 4:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_decompression_bomb_skipped(src, tmp_path, monkeypatch):
    _rgb((0, 0, 0), size=(60, 60)).save(src / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 60x60 > 2x the limit: refused
    report, a = _build(src, tmp_path)
    assert len(a) == 1 and _skip_reasons(report)["bomb.png"].startswith("too large")


def test_small_images_upscaled_by_default_or_skipped(src, tmp_path):
    _rgb((10, 10, 240), size=(8, 6)).save(src / "tiny.png")
    report, a = _build(src, tmp_path)
    assert len(a) == 2 and report.upscaled == 1 and "upscaled 1" in report.summary()
    np.testing.assert_allclose(a.image(_by_source(a)["tiny.png"]).reshape(-1, 3).mean(0), (10, 10, 240), atol=1)
    report, a = _build(src, tmp_path, min_size=20)
    assert len(a) == 1 and _skip_reasons(report)["tiny.png"].startswith("smaller than --min-size")


def test_non_utf8_captions_kept_with_warning(src, tmp_path):
    (src / "good.txt").write_bytes("caf\xe9 au lait\nna\xefve".encode("latin-1"))
    _rgb((1, 2, 3)).save(src / "bom.png")
    (src / "bom.txt").write_bytes("\ufeffdéjà vu\n".encode())
    report, a = _build(src, tmp_path)
    idx = _by_source(a)
    assert a.captions(idx["good.jpg"]) == ["café au lait", "naïve"]
    assert a.captions(idx["bom.png"]) == ["déjà vu"]
    assert report.warnings == [("good.jpg", "captions are not UTF-8; decoded as Latin-1")]
    assert "warning: good.jpg" in report.summary()


def test_transforms(src, tmp_path):
    im = np.zeros((100, 200, 3), np.uint8)
    im[:, :50], im[:, 50:150], im[:, 150:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    for f in src.iterdir():
        f.unlink()
    Image.fromarray(im).save(src / "bands.png")
    _, crop = _build(src, tmp_path, transform="center-crop")
    # LANCZOS reads a little past the crop box (correct filtering), hence the inner columns
    assert (np.abs(crop.image(0)[:, 1:-1].astype(int) - [0, 255, 0]) <= 2).all()
    _, stretch = _build(src, tmp_path, transform="stretch")
    s = stretch.image(0).astype(int)
    assert s[:, 0, 0].min() > 250 and s[:, -1, 2].min() > 250
    _, wide = _build(src, tmp_path, transform="center-crop-wide")
    w = wide.image(0).astype(int)
    assert (w[: R // 4] == 0).all() and (w[-R // 4:] == 0).all()  # black bands above and below
    assert w[R // 2, 0, 0] > 250 and w[R // 2, -1, 2] > 250
    with pytest.raises(DatasetError, match="transform"):
        build_dataset(src, tmp_path / "x.zip", R, transform="squash")


def test_large_jpeg_uses_reduced_decode_correctly(src, tmp_path):
    big = np.zeros((900, 1200, 3), np.uint8)
    big[:450] = (250, 250, 0)
    Image.fromarray(big).save(src / "big.jpg", quality=95)
    _, a = _build(src, tmp_path, transform="stretch")
    out = a.image(_by_source(a)["big.jpg"]).astype(int)
    assert (np.abs(out[: R // 2 - 1] - [250, 250, 0]) <= 6).all() and (out[R // 2 + 1:] <= 6).all()


def test_coco_layout(tmp_path):
    root = tmp_path / "coco"
    for split in ("train2014", "val2014"):
        (root / split).mkdir(parents=True)
    (root / "annotations").mkdir()
    _rgb((255, 0, 0)).save(root / "train2014" / "COCO_train2014_000000000009.jpg")
    _rgb((0, 255, 0)).save(root / "train2014" / "COCO_train2014_000000000025.jpg")
    _rgb((0, 0, 255)).save(root / "val2014" / "COCO_val2014_000000000042.jpg")
    train = {"images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg"},
                        {"id": 25, "file_name": "COCO_train2014_000000000025.jpg"},
                        {"id": 30, "file_name": "COCO_train2014_000000000030.jpg"}],  # missing
             "annotations": [{"image_id": 9, "id": 1, "caption": "A red wall. "},
                             {"image_id": 9, "id": 2, "caption": "red"},
                             {"image_id": 25, "id": 3, "caption": "grass"}]}
    val = {"images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}],
           "annotations": [{"image_id": 42, "id": 4, "caption": "the sky"}]}
    (root / "annotations" / "captions_train2014.json").write_text(json.dumps(train))
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps(val))
    (root / "annotations" / "instances_train2014.json").write_text("{}")
    report, a = _build(root, tmp_path)
    assert len(a) == 3 and a.has_captions and not report.skipped
    idx = _by_source(a)
    assert a.captions(idx["train2014/COCO_train2014_000000000009.jpg"]) == ["A red wall.", "red"]
    assert a.captions(idx["val2014/COCO_val2014_000000000042.jpg"]) == ["the sky"]
    assert any("missing" in message for _, message in report.warnings)


def test_zip_source(tmp_path):
    src = tmp_path / "src.zip"
    with zipfile.ZipFile(src, "w") as z:
        for name, color in (("imgs/a.png", (255, 0, 0)), ("imgs/sub/b.jpg", (0, 0, 255))):
            buf = io.BytesIO()
            _rgb(color).save(buf, name.rsplit(".", 1)[1].replace("jpg", "jpeg").upper())
            z.writestr(name, buf.getvalue())
        z.writestr("imgs/a.txt", "apple\nred fruit\n")
        z.writestr("imgs/empty.png", b"")
        z.writestr("__MACOSX/imgs/._a.png", b"junk")
    report, a = _build(src, tmp_path)
    idx = _by_source(a)
    assert set(idx) == {"imgs/a.png", "imgs/sub/b.jpg"}
    assert a.captions(idx["imgs/a.png"]) == ["apple", "red fruit"]
    assert _skip_reasons(report) == {"imgs/empty.png": "empty file"}


def test_zip_source_with_workers(tmp_path):
    src = tmp_path / "many.zip"
    rng = np.random.default_rng(3)
    with zipfile.ZipFile(src, "w") as z:
        for i in range(20):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), np.uint8)).save(buf, "PNG")
            z.writestr(f"d/{i:02d}.png", buf.getvalue())
            z.writestr(f"d/{i:02d}.txt", f"caption {i}")
    build_dataset(src, tmp_path / "one.zip", R, workers=1)
    build_dataset(src, tmp_path / "two.zip", R, workers=2)
    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two.zip").read_bytes()
    assert ImageArchive(tmp_path / "two.zip").captions(19) == ["caption 19"]


def test_workers_give_identical_archive(src, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 256, (24, 36, 3), np.uint8)).save(src / f"r{i:02d}.png")
    (src / "bad.jpg").write_bytes(b"nope")
    one = build_dataset(src, tmp_path / "one.zip", R, workers=1)
    two = build_dataset(src, tmp_path / "two.zip", R, workers=2)
    assert one.written == two.written == 21 and one.skipped == two.skipped
    assert (tmp_path / "one.zip").read_bytes() == (tmp_path / "two.zip").read_bytes()
    first = build_dataset(src, tmp_path / "few.zip", R, workers=2, max_images=4)  # early stop
    assert first.written == 4 and len(ImageArchive(tmp_path / "few.zip")) == 4


def test_max_images_counts_good_images(src, tmp_path):
    (src / "0_bad.jpg").write_bytes(b"")
    for i in range(5):
        _rgb((i, i, i)).save(src / f"img{i}.png")
    report, a = _build(src, tmp_path, max_images=3)
    assert len(a) == 3 and report.written == 3
    assert [a.source(i) for i in range(3)] == ["0_bad.jpg", "good.jpg", "img0.png"][1:] + ["img1.png"]


def test_failure_mid_write_keeps_existing_dest(src, tmp_path, monkeypatch):
    for i in range(5):
        _rgb((i, 0, 0)).save(src / f"img{i}.png")
    dest = tmp_path / "out.zip"
    build_dataset(src, dest, R, workers=1)
    before = dest.read_bytes()
    calls = []
    real_add = archive_module.ArchiveWriter.add

    def failing_add(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(archive_module.ArchiveWriter, "add", failing_add)
    with pytest.raises(OSError, match="disk full"):
        build_dataset(src, dest, 2 * R, workers=1)
    assert dest.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zip", "src"]
    with pytest.raises(OSError, match="disk full"):
        calls.clear()
        build_dataset(src, tmp_path / "new.zip", R, workers=1)
    assert not (tmp_path / "new.zip").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zip", "src"]


def test_empty_and_all_bad_sources_write_nothing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        build_dataset(empty, tmp_path / "o.zip", R)
    (empty / "x.jpg").write_bytes(b"")
    (empty / "y.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="no usable image.*1 empty file"):
        build_dataset(empty, tmp_path / "o.zip", R)
    with pytest.raises(DatasetError, match="does not exist"):
        build_dataset(tmp_path / "nothing", tmp_path / "o.zip", R)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_dest_inside_source_is_not_read_back(src):
    (src / ".git").mkdir()
    (src / ".git" / "index").write_bytes(b"not data")
    (src / "out.zip.tmp-99999").write_bytes(b"left by a killed run")
    first = build_dataset(src, src / "out.zip", R, workers=1)
    second = build_dataset(src, src / "out.zip", R, workers=1)
    assert first.written == second.written == 1 and not first.skipped and not second.skipped


def test_cli(src, tmp_path):
    runner = CliRunner()
    (src / "bad.png").write_bytes(b"")
    result = runner.invoke(app, ["dataset", str(src), str(tmp_path / "c.zip"), "--resolution", "8",
                                 "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "wrote 1 images" in result.output and "bad.png: empty file" in result.output
    assert ImageArchive(tmp_path / "c.zip").resolution == 8
    empty = tmp_path / "none"
    empty.mkdir()
    result = runner.invoke(app, ["dataset", str(empty), str(tmp_path / "e.zip"), "-r", "8"])
    assert result.exit_code == 2 and not (tmp_path / "e.zip").exists()
    assert len(result.stderr.strip().splitlines()) == 1 and "no image files" in result.stderr
