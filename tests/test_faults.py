"""Issue 10, case by case below the CLI: foreign zips, memory, partly captioned archives, disk
faults, sidecar leftovers, Ctrl-C, and the smaller checks (tests/test_bad_input.py walks the same
inputs end to end through the CLI)."""

from __future__ import annotations

import errno
import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import tiny_family
from langfree.data.archive import ArchiveError, ArchiveWriter, ImageArchive


def _png(side: int, value: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _partly_captioned(path, n=12, captioned=4, side=8):
    with ArchiveWriter(path, resolution=side) as w:
        for i in range(n):
            w.add(np.full((side, side, 3), 10 * i % 256, np.uint8),
                  captions=[f"a square of grey {i}"] if i < captioned else [])
    return path


# -- 2: a zip that is not a langfree archive; a configuration larger than the machine ----------
def test_foreign_zip_is_refused_with_the_command_that_converts_it(tmp_path):
    path = tmp_path / "photos.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("holiday/beach.png", _png(512))
    with pytest.raises(ArchiveError) as info:
        ImageArchive(path)
    message = str(info.value)
    assert "photos.zip is not a langfree archive" in message and "beach.png" in message
    assert f"langfree dataset {path}" in message
    # the official StyleGAN2-ADA layout is still read as image-only data
    official = tmp_path / "official.zip"
    with zipfile.ZipFile(official, "w") as z:
        z.writestr("00000/img00000000.png", _png(16))
    assert ImageArchive(official).resolution == 16


def test_memory_estimate_counts_parameters_and_feature_maps():
    from langfree.families.lafite.config import LafiteConfig
    from langfree.families.lafite.family import LafiteFamily
    from langfree.families.lafite.memory import ACTIVATION_FLOATS, feature_map_elements

    config = LafiteConfig(resolution=8, channel_base=64, channel_max=8, c_dim=16, z_dim=8,
                          w_dim=16, mapping_layers=1, change_resolution=8)
    assert feature_map_elements(config) == 4 * 4 * 8 + 8 * 8 * 8  # min(64 // r, 8) channels
    from langfree.training.memory import estimate

    est = estimate(LafiteFamily, config, tiny_family_encoder(), images=4)
    torch.manual_seed(0)
    real = LafiteFamily(config, tiny_family_encoder())
    counted = {id(p): p.numel() for m in real.modules().values() for p in m.parameters()}
    assert est.parameters == sum(counted.values())
    assert est.activation_bytes == 4 * ACTIVATION_FLOATS * feature_map_elements(config) * 4
    assert feature_map_elements(object()) == 0  # no StyleGAN geometry: parameters only


def tiny_family_encoder():
    from test_lafite_family_helpers import ToyEncoder

    return ToyEncoder(dim=16, image_size=8)


def test_memory_check_refuses_before_building(monkeypatch):
    from langfree.families.lafite.config import LafiteConfig
    from langfree.families.lafite.family import LafiteFamily
    from langfree.training import memory
    from langfree.training.options import TrainingError

    monkeypatch.delenv("LANGFREE_SKIP_MEMORY_CHECK", raising=False)
    monkeypatch.setattr(memory, "available_bytes", lambda: (2 * 2**30, "available RAM"))
    config = LafiteConfig(resolution=512, c_dim=16)  # the defaults at 512 px
    with pytest.raises(TrainingError) as info:
        memory.check_memory(LafiteFamily, config, tiny_family_encoder(), images=32)
    message = str(info.value)
    assert "2.0 GB of available RAM" in message and "--batch-gpu" in message and "512 px" in message
    assert memory.check_memory(LafiteFamily, LafiteConfig(resolution=8, channel_base=64,
                                                          channel_max=8, c_dim=16),
                               tiny_family_encoder(), images=4) is not None


# -- 3: partly captioned archives serve where captions are needed ------------------------------
def test_lafite_mixing_uses_pseudo_features_for_uncaptioned_samples():
    from langfree.families.lafite.conditioning import condition_features
    from test_lafite_family_helpers import tiny_config

    config = tiny_config(mixing_prob=0.0, c_dim=4)  # every sample would take its caption
    torch.manual_seed(0)
    batch = {"image_emb": torch.nn.functional.normalize(torch.randn(6, 4), dim=1),
             "text_emb": torch.nn.functional.normalize(torch.randn(6, 4), dim=1),
             "has_caption": torch.tensor([True, False, True, False, False, True])}
    torch.manual_seed(1)
    h = condition_features(config, batch)
    torch.manual_seed(1)
    pseudo = condition_features(tiny_config(mixing_prob=1.0, c_dim=4), batch)
    captioned = batch["has_caption"]
    torch.testing.assert_close(h[~captioned], pseudo[~captioned])
    assert (h[captioned] - pseudo[captioned]).abs().max() > 0.1  # captioned rows: the caption


def test_caption_mixing_check_counts_captions(tmp_path, capsys):
    from langfree.families.spec import check_caption_mixing

    partial = ImageArchive(_partly_captioned(tmp_path / "p.zip"))
    check_caption_mixing(0.5, partial)
    assert "4 of 12 images" in capsys.readouterr().err
    bare = ImageArchive(_partly_captioned(tmp_path / "b.zip", captioned=0))
    with pytest.raises(ValueError, match="none of the 12 images of .*b.zip has one"):
        check_caption_mixing(0.5, bare)
    check_caption_mixing(1.0, bare)  # language-free needs no captions


def test_clip_score_uses_the_captioned_subset(tmp_path):
    from langfree.metrics.registry import compute_metrics

    archive = ImageArchive(_partly_captioned(tmp_path / "p.zip"))
    seen = []

    def generate(conditions, seeds):
        seen.extend(conditions.prompts)
        return torch.zeros(len(seeds), 3, 8, 8)

    result = compute_metrics("clip_score6", generate, tiny_family_encoder(), archive)["clip_score6"]
    assert result["value"] is not None, result
    assert "4 of 12" in result["conditions"]
    assert seen == [f"a square of grey {i % 4}" for i in range(6)]  # the captioned images only
    bare = ImageArchive(_partly_captioned(tmp_path / "b.zip", captioned=0))
    none = compute_metrics("clip_score6", generate, tiny_family_encoder(), bare)["clip_score6"]
    assert none["value"] is None and "no captions (0 of 12 images)" in none["reason"]


def test_lafite_trains_with_mixing_on_a_partly_captioned_archive(tmp_path):
    from typer.testing import CliRunner

    from langfree.cli import app
    from test_lafite_family_helpers import TINY_SETS, tiny_small_clip

    data = _partly_captioned(tmp_path / "p.zip", n=16, captioned=6)
    tiny_small_clip(tmp_path / "clip", embed_dim=16, image_size=8)
    args = ["train", "lafite", "--data", str(data), "--encoder", str(tmp_path / "clip"),
            "--mixing_prob", "0.5", "--kimg", "0.008", "--batch", "8", "--tick", "0.008",
            "--metrics", "none", "--outdir", str(tmp_path / "runs"),
            *[a for s in TINY_SETS for a in ("--set", s)]]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "6 of 16 images" in result.stderr and "the other 10 always train on pseudo" in result.stderr


def test_encoder_train_uses_the_captioned_subset(tmp_path, capsys):
    from langfree.encoders.small_clip import train_small_clip
    from test_encoder_train import TINY

    path = _partly_captioned(tmp_path / "p.zip", n=24, captioned=12)
    metrics = train_small_clip(path, tmp_path / "enc", steps=1, batch=4, holdout=2,
                               model_cfg=TINY, progress=False)
    assert metrics["captioned_images"] == 12 and metrics["train_images"] == 10
    assert metrics["eval_pairs"] == 2
    assert "12 of 24 images that have captions" in capsys.readouterr().err


# -- 4: disk and permission faults ---------------------------------------------------------------
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "/full/disk")


def test_write_outputs_on_a_full_disk_leaves_no_image(tmp_path, monkeypatch):
    from langfree.sampling import generate as gen
    from langfree.sampling.conditions import Conditions

    images = torch.zeros(1, 3, 3, 4, 4)
    conditions = Conditions(prompts=["a"])
    calls = []
    real = gen.save_png

    def filling(array, path, parameters=None):  # the disk fills after two images
        calls.append(path)
        if len(calls) > 2:
            _enospc()
        real(array, path, parameters)

    monkeypatch.setattr(gen, "save_png", filling)
    out = tmp_path / "new" / "out"
    with pytest.raises(OSError, match="No space"):
        gen.write_outputs(images, conditions, [0, 1, 2], out)
    assert not (tmp_path / "new").exists()  # the folders it made are gone too
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "mine.txt").write_text("user file")
    calls.clear()
    with pytest.raises(OSError):
        gen.write_outputs(images, conditions, [0, 1, 2], tmp_path / "kept")
    assert [p.name for p in (tmp_path / "kept").iterdir()] == ["mine.txt"]


def test_a_full_disk_during_training_is_one_line(monkeypatch, capsys):
    import typer

    from langfree.commands.training import run_request

    def full(request):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/00000-x/state/step-8.tmp")

    monkeypatch.setattr("langfree.training.run.train", full)
    with pytest.raises(typer.Exit) as info:
        run_request(object())
    assert info.value.exit_code == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith("error: cannot write runs/00000-x/state/step-8.tmp: No space left on "
                           "device; the run's last complete snapshot and state are kept")


def test_outdir_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    from langfree.io import check_writable

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match="--outdir .*file"):
        check_writable(blocker / "runs", "--outdir")
    check_writable(tmp_path / "a" / "b", "--outdir")
    assert not (tmp_path / "a").exists()  # the check creates nothing

    import pathlib

    def denied(self, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "write_bytes", denied)
    with pytest.raises(PermissionError, match="--outdir .*Permission denied"):
        check_writable(tmp_path, "--outdir")


def test_read_only_outdir_for_real(tmp_path):
    import os

    from langfree.io import check_writable

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        try:
            (ro / "probe").write_bytes(b"")
        except PermissionError:
            pass
        else:
            (ro / "probe").unlink()
            pytest.skip(f"chmod 555 does not stop writes here (uid {os.getuid()}: root ignores "
                        "file modes); the monkeypatched test covers the handling")
        with pytest.raises(PermissionError, match="--outdir"):
            check_writable(ro / "runs", "--outdir")
    finally:
        ro.chmod(0o755)


# -- 5: sidecar leftovers ---------------------------------------------------------------------------
def test_failed_sidecar_builds_do_not_accumulate(tmp_path):
    from langfree.data import sidecar

    path = _partly_captioned(tmp_path / "d.zip", n=6)
    archive = ImageArchive(path)

    def ones(arch, start, stop, bar):
        return {"x": torch.ones(stop - start, 2)}

    def failing(arch, start, stop, bar):
        if start >= 2:
            raise RuntimeError("killed")
        return ones(arch, start, stop, bar)

    def broken(arch, start, stop, bar):
        raise RuntimeError("killed at once")

    # a failure before any chunk: nothing left
    with pytest.raises(RuntimeError):
        sidecar.build(archive, "features", "aaaa", broken, chunk_images=2, progress=False)
    assert not list(tmp_path.glob("*.partial"))
    # a failure after a chunk keeps it for the same fingerprint (resume) ...
    with pytest.raises(RuntimeError):
        sidecar.build(archive, "features", "bbbb", failing, chunk_images=2, progress=False)
    assert [p.name for p in tmp_path.glob("*.partial")] == ["d.features-bbbb.safetensors.partial"]
    # ... and a build with another fingerprint (another encoder) removes it
    with pytest.raises(RuntimeError):
        sidecar.build(archive, "features", "cccc", failing, chunk_images=2, progress=False)
    assert [p.name for p in tmp_path.glob("*.partial")] == ["d.features-cccc.safetensors.partial"]
    done = sidecar.build(archive, "features", "cccc", ones, chunk_images=2, progress=False)
    assert done.is_file() and not list(tmp_path.glob("*.partial"))


def test_sidecar_progress_is_plain_lines_when_redirected(tmp_path, capsys):
    from langfree.data import sidecar

    archive = ImageArchive(_partly_captioned(tmp_path / "d.zip", n=6))
    sidecar.build(archive, "features", "dddd", lambda a, s, e, bar: {"x": torch.ones(e - s, 1)},
                  chunk_images=3, progress=True)
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert "\r" not in err and err.splitlines() == ["features d.zip: 3/6 images",
                                                    "features d.zip: 6/6 images"]


# -- 6: Ctrl-C, options, seeds, resolution ----------------------------------------------------------
def test_sigint_says_what_was_saved_and_how_to_resume(tmp_path, monkeypatch):
    from langfree.training.loop import TrainOptions, train
    from langfree.training.options import TrainingInterrupted

    tiny_family.register(monkeypatch)
    real = tiny_family.TinyDenoiser.loss

    def interrupted(self, phase, nets, batch, progress):
        if progress.step == 9:  # ticks of 4 steps: state saved after steps 4 and 8
            raise KeyboardInterrupt
        return real(self, phase, nets, batch, progress)

    monkeypatch.setattr(tiny_family.TinyDenoiser, "loss", interrupted)
    torch.manual_seed(0)
    family = tiny_family.TinyDenoiser(tiny_family.TinyDenoiser.Config())
    options = TrainOptions(outdir=str(tmp_path / "runs"), kimg=0.16, batch=8, tick_kimg=0.032,
                           snap=1)
    with pytest.raises(TrainingInterrupted) as info:
        train(family, tiny_family.TinyDataset(), options, {})
    (run,) = (tmp_path / "runs").iterdir()
    message = str(info.value)
    assert "interrupted at kimg 0.072 (step 9)" in message and "state/step-" in message
    assert f"--resume {run}" in message and "kimg 0.064" in message
    assert message in (run / "log.txt").read_text()


def test_sigint_before_any_save_says_nothing_was_saved(tmp_path, monkeypatch):
    from langfree.training.loop import TrainOptions, train
    from langfree.training.options import TrainingInterrupted

    tiny_family.register(monkeypatch)

    def interrupted(self, phase, nets, batch, progress):
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny_family.TinyDenoiser, "loss", interrupted)
    family = tiny_family.TinyDenoiser(tiny_family.TinyDenoiser.Config())
    options = TrainOptions(outdir=str(tmp_path / "runs"), kimg=0.16, batch=8, tick_kimg=0.032)
    with pytest.raises(TrainingInterrupted,
                       match=r"kimg 0\.000 \(step 0\); nothing saved yet .*saved every 50 ticks"):
        train(family, tiny_family.TinyDataset(), options, {})


def test_sigint_ends_the_cli_with_one_line_and_exit_130(monkeypatch, capsys):
    import typer

    from langfree.commands.training import run_request
    from langfree.training.options import TrainingInterrupted

    def interrupted(request):
        raise TrainingInterrupted("interrupted at kimg 0.008 (step 1); saved: ...")

    monkeypatch.setattr("langfree.training.run.train", interrupted)
    with pytest.raises(typer.Exit) as info:
        run_request(object())
    assert info.value.exit_code == 130
    assert capsys.readouterr().err.splitlines()[-1] == (
        "stopped: interrupted at kimg 0.008 (step 1); saved: ...")


def test_options_are_named_as_typed_and_checked_first():
    from langfree.training.options import TrainingError, TrainOptions, check_options

    with pytest.raises(TrainingError, match=r"^--tick 0: must be positive"):
        check_options(TrainOptions(tick_kimg=0))
    with pytest.raises(TrainingError, match=r"^--kimg -1: must be positive"):
        check_options(TrainOptions(kimg=-1))
    with pytest.raises(TrainingError, match="--snap -1"):
        check_options(TrainOptions(snap=-1))
    check_options(TrainOptions())


def test_repeated_seeds_are_refused():
    from langfree.sampling.generate import parse_seeds

    with pytest.raises(ValueError, match="seed 1 given twice"):
        parse_seeds("1,1,2")
    with pytest.raises(ValueError, match="seed 3, 4 given twice"):
        parse_seeds("0-4,3-4")
    assert parse_seeds("0-2,5") == [0, 1, 2, 5]


@pytest.mark.parametrize("resolution, hint", [(33, "use 32 or 64"), (3, "use 4"), (48, "use 32 or 64")])
def test_resolution_must_be_a_power_of_two(tmp_path, resolution, hint):
    from langfree.data.tool import DatasetError, build_dataset

    (tmp_path / "src").mkdir()
    Image.new("RGB", (40, 40)).save(tmp_path / "src" / "a.png")
    with pytest.raises(DatasetError, match=f"--resolution {resolution}: .*power of two.*{hint}"):
        build_dataset(tmp_path / "src", tmp_path / "d.zip", resolution, workers=1)
    assert not (tmp_path / "d.zip").exists()


def test_convert_lafite_pkl_on_a_text_file(tmp_path):
    from langfree.families.lafite.convert import load_official_pickle

    for i, text in enumerate(["Lafite readme\n", "Install notes\nfoo\n", "hello\n123 abc\n"]):
        path = tmp_path / f"notes{i}.txt"
        path.write_text(text)
        with pytest.raises(ValueError) as info:
            load_official_pickle(path)
        assert str(info.value).startswith(f"{path}: not a readable LAFITE network pickle")
        assert "invalid literal" not in str(info.value)


def test_force_replaces_an_existing_archive(tmp_path):
    from typer.testing import CliRunner

    from langfree.cli import app

    dest = tmp_path / "s.zip"
    assert CliRunner().invoke(app, ["shapes", str(dest), "-n", "4", "-r", "8"]).exit_code == 0
    first = dest.read_bytes()
    again = CliRunner().invoke(app, ["shapes", str(dest), "-n", "6", "-r", "8"])
    assert again.exit_code == 2 and dest.read_bytes() == first
    forced = CliRunner().invoke(app, ["shapes", str(dest), "-n", "6", "-r", "8", "--force"])
    assert forced.exit_code == 0, forced.output
    assert len(ImageArchive(dest)) == 6
    (tmp_path / "src").mkdir()
    Image.new("RGB", (20, 20), (200, 0, 0)).save(tmp_path / "src" / "a.png")
    args = ["dataset", str(tmp_path / "src"), str(dest), "-r", "8", "--workers", "1"]
    assert CliRunner().invoke(app, args).exit_code == 2 and len(ImageArchive(dest)) == 6
    assert CliRunner().invoke(app, [*args, "--force"]).exit_code == 0
    assert len(ImageArchive(dest)) == 1
