"""Engine v2 through the command line, on the tests' tiny family (issue 8, "Done when").

``langfree train tiny`` (the generic command built from ``tiny_family.TINY_SPEC``, no command
module of its own), ``langfree generate`` with the family's own ``--sample`` options, PNG
``parameters`` and ``--from-png``, ``langfree eval`` with sampling options and snapshot ranges,
``--init-from`` and refused resume on a changed config.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import tiny_family
from test_lafite_family_helpers import tiny_small_clip


@pytest.fixture(autouse=True)
def _registered(monkeypatch):
    tiny_family.register(monkeypatch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train_app() -> typer.Typer:
    """``langfree train`` with the tiny family's command, built like cli.py builds every family's."""
    from langfree.commands.training import make_command

    app = typer.Typer()
    app.command("tiny")(make_command("tiny", tiny_family.TINY_SPEC))
    app.command("noop")(lambda: None)  # keeps "tiny" a subcommand name
    return app


def _app(*modules) -> typer.Typer:
    app = typer.Typer()
    for module in modules:
        module.register(app)
    app.command("noop")(lambda: None)
    return app


def _gen_app():
    from langfree.commands import generate

    return _app(generate)


def _eval_app():
    from langfree.commands import evaluate

    return _app(evaluate)


def _invoke(app, args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from langfree.data.shapes import write_shapes

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("engine_v2_cli")
    write_shapes(root / "train.zip", count=16, resolution=8, seed=0)
    write_shapes(root / "val.zip", count=16, resolution=8, seed=1)
    tiny_small_clip(root / "clip", embed_dim=8, image_size=8)
    torch.set_num_threads(threads)
    return root


def _base(files, out, *extra):
    return ["tiny", "--data", files / "train.zip", "--encoder", files / "clip",
            "--kimg", "0.032", "--batch", "8", "--tick", "0.016", "--snap", "1",
            "--metrics", "none", "--outdir", out, *extra]


@pytest.fixture(scope="module")
def run(files):
    """One tiny run trained through the CLI with a preset, a family flag, --set and --sample."""
    with pytest.MonkeyPatch.context() as mp:
        tiny_family.register(mp)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        out = files / "runs"
        result = _invoke(_train_app(), _base(files, out, "--preset", "wide", "--hidden", "48",
                                             "--set", "lr=0.005", "--sample", "noise_scale=0.5",
                                             "--seed", "3"))
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    return run_dir


# ------------------------------------------------------------------ langfree train tiny


def test_train_tiny_through_the_generic_command(files, run):
    config = json.loads((run / "config.json").read_text())
    assert config["family"] == "tiny"
    cfg = config["config"]
    # preset 'wide' (hidden 64) then the family flag --hidden 48 then --set lr
    assert cfg["hidden"] == 48 and cfg["lr"] == 0.005
    assert cfg["resolution"] == 8 and cfg["cond_dim"] == 8          # configure(): archive, encoder
    assert config["run"]["preset"] == "wide" and config["run"]["sample"] == ["noise_scale=0.5"]
    assert config["run"]["command"] == "train tiny"
    assert config["train"]["seed"] == 3 and config["train"]["batch"] == 8
    snaps = sorted((run / "snapshots").iterdir())
    assert [s.name for s in snaps] == ["snapshot-000000.016", "snapshot-000000.032"]
    assert (snaps[-1] / "grid.png").is_file() and (snaps[-1] / "net_ema.safetensors").is_file()
    manifest = json.loads((snaps[-1] / "manifest.json").read_text())
    assert manifest["family"] == "tiny" and manifest["sample_options"] == {"noise_scale": 1.0}


def test_train_preset_alone_and_help_lists_family_flags(files, tmp_path):
    dry = _invoke(_train_app(), _base(files, tmp_path / "dry", "--preset", "wide", "--dry-run"))
    assert dry.exit_code == 0, dry.output
    assert '"hidden": 64' in dry.output and not (tmp_path / "dry").exists()
    helped = _invoke(_train_app(), ["tiny", "--help"])
    assert helped.exit_code == 0
    assert "--hidden" in helped.output and "--sigma" in helped.output
    # presets are listed by an unknown --preset (help stays import-free of model code)
    unknown = _invoke(_train_app(), _base(files, tmp_path / "u", "--preset", "nope", "--dry-run"))
    assert unknown.exit_code == 2 and "wide" in unknown.output


def test_train_refuses_bad_sample_option_before_training(files, tmp_path):
    out = tmp_path / "bad"
    result = _invoke(_train_app(), _base(files, out, "--sample", "bogus=1"))
    assert result.exit_code == 2
    assert "bogus" in result.output
    assert not list(out.glob("*/snapshots"))


# ------------------------------------------------------------------ langfree generate


@pytest.fixture(scope="module")
def generated(files, run):
    with pytest.MonkeyPatch.context() as mp:
        tiny_family.register(mp)
        outdir = files / "gen"
        result = _invoke(_gen_app(), ["generate", run, "--prompt", "a red circle", "--prompt",
                                      "a blue square", "--seeds", "0-2", "--sample",
                                      "noise_scale=0.5", "--outdir", outdir])
    assert result.exit_code == 0, result.output
    return outdir


def test_generate_writes_parameters_with_the_family_options(run, generated):
    from langfree.checkpoint import resolve_snapshot
    from langfree.sampling.generate import read_parameters

    pngs = sorted(generated.glob("row*-seed*.png"))
    assert len(pngs) == 6
    snapshot = str(resolve_snapshot(run))
    params = read_parameters(generated / "row01-seed0002.png")
    assert params.prompt == "a blue square" and params.seed == 2 and params.family == "tiny"
    assert params.snapshot == snapshot and params.options == {"noise_scale": 0.5}
    index = json.loads((generated / "prompts.json").read_text())
    assert index["sample_options"] == {"noise_scale": 0.5}
    assert index["rows"] == ["a red circle", "a blue square"] and index["seeds"] == [0, 1, 2]


def test_generate_sample_option_changes_the_image(files, run, generated):
    out = files / "gen_default"
    result = _invoke(_gen_app(), ["generate", run, "--prompt", "a red circle", "--seeds", "0",
                                  "--outdir", out])
    assert result.exit_code == 0, result.output
    from PIL import Image

    a = np.array(Image.open(out / "row00-seed0000.png"))
    b = np.array(Image.open(generated / "row00-seed0000.png"))
    assert not np.array_equal(a, b), "noise_scale=0.5 must change the sample"


def test_generate_from_png_reproduces_the_pixels(files, generated):
    from PIL import Image

    from langfree.sampling.generate import read_parameters

    source = generated / "row01-seed0002.png"
    out = files / "again"
    result = _invoke(_gen_app(), ["generate", "--from-png", source, "--outdir", out])
    assert result.exit_code == 0, result.output
    (png,) = sorted(out.glob("row*-seed*.png"))
    assert png.name == "row00-seed0002.png"
    assert np.array_equal(np.array(Image.open(png)), np.array(Image.open(source)))
    assert read_parameters(png) == read_parameters(source)


def test_generate_from_png_of_a_reference_image_row(files, run, tmp_path):
    """An image-variation PNG: --from-png reproduces it, or fails in one line (exit 2)."""
    from PIL import Image

    ref = tmp_path / "ref.png"
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(ref)
    first = _invoke(_gen_app(), ["generate", run, "--image", ref, "--seeds", "1", "--outdir",
                                 tmp_path / "a"])
    assert first.exit_code == 0, first.output
    again = _invoke(_gen_app(), ["generate", "--from-png", tmp_path / "a" / "row00-seed0001.png",
                                 "--outdir", tmp_path / "b"])
    if again.exit_code == 0:
        a = np.array(Image.open(tmp_path / "a" / "row00-seed0001.png"))
        b = np.array(Image.open(tmp_path / "b" / "row00-seed0001.png"))
        assert np.array_equal(a, b)
    else:
        assert again.exit_code == 2 and len(_error_lines(again)) == 1, again.output


@pytest.mark.parametrize("option, word", [("bogus=1", "bogus"), ("noise_scale=9", "noise_scale")])
def test_generate_bad_sample_option_is_one_line_exit_2(files, run, option, word, tmp_path):
    result = _invoke(_gen_app(), ["generate", run, "--prompt", "x", "--seeds", "0",
                                  "--sample", option, "--outdir", tmp_path / "o"])
    assert result.exit_code == 2, result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("error:") and word in lines[0], result.output
    if option.startswith("noise_scale"):
        assert "4" in lines[0]  # names the range
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ langfree eval


def _metric_rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_eval_records_sample_options_in_results_and_rows(files, run):
    from langfree.metrics.records import SCHEMA_KEYS

    before = len(_metric_rows(run)) if (run / "metrics.jsonl").exists() else 0
    result = _invoke(_eval_app(), ["eval", run, "--metrics", "fid8_full", "--data",
                                   files / "val.zip", "--sample", "noise_scale=0.5"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["sample_options"] == {"noise_scale": 0.5}
    assert report["results"]["fid8_full"]["sample_options"] == {"noise_scale": 0.5}
    assert isinstance(report["results"]["fid8_full"]["value"], float)
    rows = _metric_rows(run)[before:]
    assert len(rows) == 1
    (row,) = rows
    assert tuple(sorted(row)) == tuple(sorted(SCHEMA_KEYS))
    assert row["metric"] == "fid8_full" and row["source"] == "eval"
    assert row["sample_options"] == {"noise_scale": 0.5}
    assert row["result"]["sample_options"] == {"noise_scale": 0.5}
    assert row["kimg"] == 0.032 and row["snapshot"] == "snapshot-000000.032"


@pytest.mark.parametrize("family_batch, flag, expected", [(None, [], 32), (5, [], 5),
                                                           (5, ["--batch", "3"], 3)])
def test_eval_draws_in_the_familys_sample_batch(files, run, monkeypatch, family_batch, flag,
                                                expected):
    calls = []
    original = tiny_family.TinyDenoiser.sample

    def spy(self, conditions, seeds, options=None):
        calls.append(len(seeds))
        return original(self, conditions, seeds, options)

    monkeypatch.setattr(tiny_family.TinyDenoiser, "sample", spy)
    if family_batch is not None:
        monkeypatch.setattr(tiny_family.TinyDenoiser, "sample_batch", family_batch, raising=False)
    result = _invoke(_eval_app(), ["eval", run, "--metrics", "fid40_full", "--data",
                                   files / "val.zip", "--no-write", *flag])
    assert result.exit_code == 0, result.output
    assert calls[0] == expected and sum(calls) == 40


def test_eval_bad_sample_option_exit_2(files, run):
    result = _invoke(_eval_app(), ["eval", run, "--metrics", "fid8_full", "--data",
                                   files / "val.zip", "--sample", "noise_scale=9", "--no-write"])
    assert result.exit_code == 2 and "noise_scale" in result.output


def test_eval_over_every_snapshot_prints_the_best(files, run):
    result = _invoke(_eval_app(), ["eval", run, "--metrics", "fid8_full", "--data",
                                   files / "val.zip", "--snapshots", ":", "--no-write"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    kimgs = [r["kimg"] for r in report["snapshots"]]
    assert kimgs == [0.016, 0.032]
    values = {r["kimg"]: r["results"]["fid8_full"]["value"] for r in report["snapshots"]}
    best = min(values, key=values.get)
    best_line = [line for line in result.output.splitlines() if line.startswith("best fid8_full")]
    assert len(best_line) == 1 and f"at kimg {best:g}" in best_line[0], result.output
    only_last = _invoke(_eval_app(), ["eval", run, "--metrics", "fid8_full", "--data",
                                      files / "val.zip", "--snapshots", "0.02:", "--no-write"])
    assert only_last.exit_code == 0, only_last.output
    report = json.loads(only_last.stdout[only_last.stdout.index("{"):])
    assert [r["kimg"] for r in report["snapshots"]] == [0.032]


def test_eval_empty_snapshot_range_exit_2(files, run):
    result = _invoke(_eval_app(), ["eval", run, "--metrics", "fid8_full", "--data",
                                   files / "val.zip", "--snapshots", "5:9", "--no-write"])
    assert result.exit_code == 2, result.output
    assert "no snapshot" in result.output
    bad = _invoke(_eval_app(), ["eval", run, "--metrics", "fid8_full", "--data",
                                files / "val.zip", "--snapshots", "7", "--no-write"])
    assert bad.exit_code == 2 and "FIRST:LAST" in bad.output


# ------------------------------------------------------------------ --init-from


def _weights(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_init_from_snapshot_starts_a_new_run_from_the_ema_weights(files, run, tmp_path):
    import shutil

    from langfree.checkpoint import resolve_snapshot

    # an inference snapshot that holds only the EMA copy (as LAFITE's holds only G_ema)
    snapshot = tmp_path / "snapshot-ema-only"
    shutil.copytree(resolve_snapshot(run), snapshot)
    (snapshot / "net.safetensors").unlink()
    manifest = json.loads((snapshot / "manifest.json").read_text())
    manifest["modules"] = ["net_ema"]
    (snapshot / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "init"
    result = _invoke(_train_app(), ["tiny", "--data", files / "train.zip", "--encoder",
                                    files / "clip", "--hidden", "48", "--kimg", "0.008",
                                    "--batch", "8", "--tick", "0.008", "--snap", "1",
                                    "--metrics", "none", "--outdir", out, "--init-from", snapshot,
                                    "--set", "lr=0.0"])
    assert result.exit_code == 0, result.output
    (new_run,) = out.iterdir()
    assert new_run != run
    log = (new_run / "log.txt").read_text()
    assert "initialised from" in log and "from the EMA copy: net" in log, log
    # lr 0: the trained net equals the source's EMA copy (fresh Adam with lr 0 moves nothing)
    (state,) = (new_run / "state").iterdir()
    src = _weights(snapshot / "net_ema.safetensors")
    got = _weights(state / "net.safetensors")
    assert all(torch.equal(src[k], got[k]) for k in src)
    assert json.loads((state / "progress.json").read_text())["step"] == 1


def test_init_from_state_uses_fresh_optimiser(files, run, tmp_path):
    out = tmp_path / "init_state"
    result = _invoke(_train_app(), ["tiny", "--data", files / "train.zip", "--encoder",
                                    files / "clip", "--hidden", "48", "--kimg", "0.008",
                                    "--batch", "8", "--tick", "0.008", "--snap", "1",
                                    "--metrics", "none", "--outdir", out, "--init-from", run])
    assert result.exit_code == 0, result.output
    (new_run,) = out.iterdir()
    (state,) = (new_run / "state").iterdir()
    from langfree.training.state import load_tree

    optim = load_tree(state / "optim-main")
    steps = [float(v["step"]) for v in optim["state"].values()]
    # fresh Adam: one step in this run, not the source's 4 + 1
    assert steps and all(s == 1 for s in steps), steps
    assert "initialised from" in (new_run / "log.txt").read_text()


def test_resume_and_init_from_together_are_refused(files, run, tmp_path):
    result = _invoke(_train_app(), _base(files, files / "runs", "--resume", run, "--init-from",
                                         run))
    assert result.exit_code == 2, result.output
    assert "--resume and --init-from" in result.output


# ------------------------------------------------------------------ resume


@pytest.fixture
def short_run(files, tmp_path):
    out = tmp_path / "resume"
    result = _invoke(_train_app(), ["tiny", "--data", files / "train.zip", "--encoder",
                                    files / "clip", "--kimg", "0.016", "--batch", "4",
                                    "--seed", "7", "--tick", "0.016", "--snap", "1",
                                    "--metrics", "none", "--outdir", out])
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    return out, run_dir


def test_resume_with_changed_config_is_refused_naming_the_key(short_run):
    out, run_dir = short_run
    before = (run_dir / "config.json").read_text()
    result = _invoke(_train_app(), ["tiny", "--resume", "latest", "--outdir", out, "--kimg",
                                    "0.032", "--set", "hidden=16"])
    assert result.exit_code == 2, result.output
    assert "hidden (run: 32, now: 16)" in result.output
    assert (run_dir / "config.json").read_text() == before
    flag = _invoke(_train_app(), ["tiny", "--resume", "latest", "--outdir", out, "--kimg",
                                  "0.032", "--sigma", "0.9"])
    assert flag.exit_code == 2 and "sigma (run: 0.5, now: 0.9)" in flag.output
    batch = _invoke(_train_app(), ["tiny", "--resume", "latest", "--outdir", out, "--kimg",
                                   "0.032", "--batch", "8"])
    assert batch.exit_code == 2 and "batch" in batch.output
    assert (run_dir / "config.json").read_text() == before


def test_resume_without_options_takes_the_recorded_batch_and_seed(short_run):
    out, run_dir = short_run
    result = _invoke(_train_app(), ["tiny", "--resume", "latest", "--outdir", out, "--kimg",
                                    "0.032", "--tick", "0.016"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.iterdir()] == [run_dir.name]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["train"]["batch"] == 4 and config["train"]["seed"] == 7
    assert "resumed from" in (run_dir / "log.txt").read_text()
    (state,) = (run_dir / "state").iterdir()
    progress = json.loads((state / "progress.json").read_text())
    assert progress["nimg"] == 32 and progress["batch"] == 4 and progress["step"] == 8


# ------------------------------------------------------------------ one path, one record


def test_training_metrics_rows_follow_the_one_schema_with_sample_options(files, tmp_path):
    from langfree.metrics.records import SCHEMA_KEYS

    out = tmp_path / "metrics"
    result = _invoke(_train_app(), ["tiny", "--data", files / "train.zip", "--test-data",
                                    files / "val.zip", "--encoder", files / "clip", "--kimg",
                                    "0.016", "--batch", "8", "--tick", "0.016", "--snap", "1",
                                    "--metrics", "fid8_full", "--sample", "noise_scale=0.5",
                                    "--outdir", out])
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    (row,) = _metric_rows(run_dir)
    assert tuple(sorted(row)) == tuple(sorted(SCHEMA_KEYS)), sorted(row)
    assert row["source"] == "train" and row["metric"] == "fid8_full"
    assert row["sample_options"] == {"noise_scale": 0.5}
    assert row["result"]["sample_options"] == {"noise_scale": 0.5}
    assert row["kimg"] == 0.016 and row["data"] == str((files / "val.zip").resolve())
    # langfree eval appends rows of the same shape to the same file
    ev = _invoke(_eval_app(), ["eval", run_dir, "--metrics", "fid8_full", "--data",
                               files / "val.zip", "--sample", "noise_scale=0.5"])
    assert ev.exit_code == 0, ev.output
    train_row, eval_row = _metric_rows(run_dir)
    assert sorted(train_row) == sorted(eval_row) and eval_row["source"] == "eval"
    assert eval_row["value"] == pytest.approx(train_row["value"])  # same protocol, same images


def test_preview_grid_goes_through_the_sampling_path_with_the_run_options(run):
    from PIL import Image

    from langfree.checkpoint import load_snapshot, resolve_snapshot, save_image_grid
    from langfree.sampling.conditions import build_conditions, parse_sample_options
    from langfree.sampling.generate import generate_grid

    snapshot = resolve_snapshot(run)
    family = load_snapshot(snapshot)
    config = json.loads((run / "config.json").read_text())
    prompts = config["run"]["preview_prompts"]
    assert len(prompts) == 8
    options = parse_sample_options(family, config["run"]["sample"])
    assert options.noise_scale == 0.5
    grid = generate_grid(family, build_conditions(family.encoder, prompts), list(range(8)),
                         options).flatten(0, 1)
    save_image_grid(run / "expected.png", grid)
    want = np.array(Image.open(run / "expected.png"))
    got = np.array(Image.open(snapshot / "grid.png"))
    (run / "expected.png").unlink()
    assert np.array_equal(want, got)


def test_train_from_python_with_one_call(files, tmp_path):
    from langfree.training.options import TrainOptions
    from langfree.training.run import TrainRequest, train

    run_dir = train(TrainRequest("tiny", data=files / "train.zip", encoder=str(files / "clip"),
                                 preset="wide", family_options={"sigma": 0.25},
                                 overrides=["lr=0.002"], sample=["noise_scale=0.5"],
                                 options=TrainOptions(outdir=str(tmp_path), kimg=0.008, batch=8,
                                                      tick_kimg=0.008, snap=1)))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["hidden"] == 64 and config["config"]["sigma"] == 0.25
    assert config["config"]["lr"] == 0.002 and config["run"]["command"] == "train tiny"
    assert len(list((run_dir / "snapshots").iterdir())) == 1
