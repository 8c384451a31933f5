"""``langfree generate``: one PNG per prompt and seed + grid.png, deterministic per seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from langfree.sampling.generate import parse_seeds
from test_lafite_family_helpers import tiny_config, tiny_small_clip


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    from langfree.checkpoint import save_snapshot
    from langfree.encoders.small_clip import load_small_clip
    from langfree.families.lafite.family import LafiteFamily

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gen")
    encoder = load_small_clip(tiny_small_clip(root / "clip"))
    torch.manual_seed(0)
    family = LafiteFamily(tiny_config(c_dim=16), encoder)
    return save_snapshot(root / "snap", family, kimg=0.0)


def _app():
    from langfree.commands import generate

    app = typer.Typer()
    generate.register(app)
    app.command("noop")(lambda: None)   # keep typer in multi-command mode
    return app


def _pixels(path):
    return np.asarray(Image.open(path))


def test_parse_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("5,1-2") == [5, 1, 2]
    with pytest.raises(ValueError, match="ranges"):
        parse_seeds("a-b")


def test_generate_writes_pngs_and_grid_deterministically(snapshot, tmp_path):
    args = ["generate", str(snapshot), "--prompt", "a large red circle at the top left",
            "--prompt", "a small blue square at the bottom right", "--seeds", "0-2"]
    runner = CliRunner()
    first = runner.invoke(_app(), args + ["--outdir", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    second = runner.invoke(_app(), args + ["--outdir", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    files = sorted(p.name for p in (tmp_path / "a").glob("row*.png"))
    assert len(files) == 6 and "row01-seed0002.png" in files
    for name in files + ["grid.png"]:
        assert np.array_equal(_pixels(tmp_path / "a" / name), _pixels(tmp_path / "b" / name))
    grid = _pixels(tmp_path / "a" / "grid.png")
    assert grid.shape == (2 * 8, 3 * 8, 3)
    # grid cell (row 1, seed column 2) is that image
    assert np.array_equal(grid[8:16, 16:24], _pixels(tmp_path / "a" / "row01-seed0002.png"))
    # different seeds give different images; a seed's image does not depend on the other seeds
    assert not np.array_equal(_pixels(tmp_path / "a" / "row00-seed0000.png"),
                              _pixels(tmp_path / "a" / "row00-seed0001.png"))
    alone = runner.invoke(_app(), ["generate", str(snapshot), "--prompt",
                                   "a large red circle at the top left", "--seeds", "1",
                                   "--outdir", str(tmp_path / "c")])
    assert alone.exit_code == 0, alone.output
    diff = np.abs(_pixels(tmp_path / "c" / "row00-seed0001.png").astype(int)
                  - _pixels(tmp_path / "a" / "row00-seed0001.png").astype(int))
    assert diff.max() <= 1
    index = json.loads((tmp_path / "a" / "prompts.json").read_text())
    assert index["seeds"] == [0, 1, 2] and len(index["rows"]) == 2


def test_image_variation_and_errors(snapshot, tmp_path):
    ref = tmp_path / "ref.png"
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(ref)
    result = CliRunner().invoke(_app(), ["generate", str(snapshot), "--image", str(ref),
                                         "--seeds", "0,3", "--outdir", str(tmp_path / "v")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "v" / "row00-seed0003.png").is_file()
    bad = CliRunner().invoke(_app(), ["generate", str(snapshot), "--prompt", "x", "--seeds", "z"])
    assert bad.exit_code == 2 and "seeds" in bad.output
    none = CliRunner().invoke(_app(), ["generate", str(snapshot), "--seeds", "0"])
    assert none.exit_code == 2 and "--prompt" in none.output
    missing = CliRunner().invoke(_app(), ["generate", str(tmp_path / "nope"), "--prompt", "x"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
