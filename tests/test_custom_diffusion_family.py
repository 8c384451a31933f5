"""CustomDiffusionFamily end to end at tiny size: prepare (class images generated, reused), one
training step through the family contract, sampling, export -> reload identical."""

import subprocess
import sys

import pytest
import torch

from langfree.families.base import Progress
from langfree.families.custom_diffusion.config import CustomDiffusionConfig


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, one_thread):
    from langfree.families.sd.tiny import write_shape_images, write_tiny_base

    root = tmp_path_factory.mktemp("cdf")
    return {"root": root, "base": write_tiny_base(root / "base"),
            "inst": write_shape_images(root / "inst", n=3, size=24)}


def _family(dirs, **kw):
    from langfree.families.custom_diffusion.family import CustomDiffusionFamily, prepare

    cfg = CustomDiffusionConfig(
        pretrained_model_name_or_path=str(dirs["base"]), instance_data_dir=str(dirs["inst"]),
        instance_prompt="photo of a <new1> square", class_prompt="square",
        class_data_dir=str(dirs["root"] / "cls"), with_prior_preservation=True,
        num_class_images=2, class_generation_steps=2, modifier_token="<new1>",
        train_batch_size=2, learning_rate=1e-3, lr_warmup_steps=0, hflip=True, **kw)
    fam = CustomDiffusionFamily(cfg)
    prepare(fam)
    return fam


def _step(fam, step=0):
    from langfree.families.custom_diffusion.data import collate

    opt = fam.optimizers()["main"]
    data = fam.dataset()
    batch = collate([data[2 * step + k] for k in range(fam.config.train_batch_size)])
    out = fam.loss(fam.phases()[0], fam.modules(), batch, Progress(step, 0, 10))
    opt.zero_grad(set_to_none=True)
    out.loss.backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    torch.nn.utils.clip_grad_norm_(params, fam.config.max_grad_norm)
    opt.step()
    return out


def test_step_trains_only_layers_and_tokens(dirs):
    from langfree.families.sd.pipeline import state_digest

    fam = _family(dirs)
    assert len(list((dirs["root"] / "cls").glob("*.png"))) == 2
    assert set(fam.modules()) == {"unet", "text_encoder", "vae", "layers", "tokens"}
    assert fam.snapshot_modules() == ("layers", "tokens")
    base_rows = fam.tokens.base.weight.clone()
    vae_digest = state_digest(fam.parts.vae)
    frozen = {n: p.clone() for n, p in fam.parts.unet.named_parameters()
              if "custom_diffusion" not in n}
    trained = [p.clone() for p in fam.layers.parameters()]
    out = _step(fam)
    assert torch.isfinite(out.loss) and {"loss/instance", "loss/prior"} <= set(out.stats)
    assert all(torch.equal(frozen[n], p) for n, p in fam.parts.unet.named_parameters()
               if n in frozen)
    assert torch.equal(fam.tokens.base.weight, base_rows)
    assert state_digest(fam.parts.vae) == vae_digest
    assert not all(torch.equal(a, b) for a, b in zip(trained, fam.layers.parameters()))
    assert fam.references()["unet"].digest == fam._digests["unet"]


def test_class_images_are_reused_on_rerun(dirs):
    from langfree.families.custom_diffusion.data import ensure_class_images

    called = []
    made = ensure_class_images(lambda p, s: called.append(p), "square", dirs["root"] / "cls", 2)
    assert made == 0 and not called


def test_export_reloads_to_identical_outputs(dirs, tmp_path):
    from langfree.families.custom_diffusion.family import CustomDiffusionFamily
    from langfree.families.custom_diffusion.weights import load_into
    from langfree.families.sd.pipeline import load_pipeline_dir
    from langfree.families.sd.sampler import sample
    from langfree.sampling.conditions import Conditions

    fam = _family(dirs, freeze_model="crossattn")
    _step(fam)
    fam.export(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "pytorch_custom_diffusion_weights.safetensors", "<new1>.safetensors",
        "custom_diffusion_base.json"}
    opts = CustomDiffusionFamily.SampleOptions(num_inference_steps=3)
    ours = fam.sample(Conditions(prompts=["a <new1> square"]), [7], opts)
    fresh = load_pipeline_dir(dirs["base"])
    load_into(fresh, tmp_path)
    again = sample(fresh, ["a <new1> square"], [7], 16, 3, opts.guidance_scale, opts.eta)
    assert torch.equal(ours, again)


def test_spec_is_light():
    code = ("import sys, langfree.families.custom_diffusion as c, langfree.families.sd as s; "
            "import langfree.families.custom_diffusion.config; "
            "print(c.SPEC.name, s.SPEC.name, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["custom-diffusion", "sd", "False"]


def test_generate_from_an_output_dir(dirs, tmp_path):
    """What `langfree generate OUTPUT_DIR --prompt "<new1> ..."` runs: the recorded base + files."""
    from langfree.families.custom_diffusion.family import load_output_dir
    from langfree.families.sd.sampler import sample
    from langfree.sampling.conditions import Conditions

    fam = _family(dirs)
    _step(fam)
    fam.export(tmp_path)
    parts, resolution = load_output_dir(tmp_path)
    prompts = ["<new1> square sitting in a bucket", "a <new1> square on the left"]
    ours = fam.sample(Conditions(prompts=prompts), [1, 2],
                      fam.SampleOptions(num_inference_steps=2))
    assert torch.equal(sample(parts, prompts, [1, 2], resolution, 2, 6.0, 1.0), ours)
    with pytest.raises(ValueError, match="records no base pipeline"):
        (tmp_path / "custom_diffusion_base.json").unlink()
        load_output_dir(tmp_path)


def test_token_only_mode_trains_just_the_rows(dirs):
    """freeze_model="none" (langfree's textual-inversion baseline): no processors at all."""
    fam = _family(dirs, freeze_model="none")
    assert fam.trained() == ("tokens",) and "layers" not in fam.modules()
    rows = fam.tokens.rows.detach().clone()
    _step(fam)
    assert not torch.equal(fam.tokens.rows, rows)
    with pytest.raises(ValueError, match="trains only the modifier tokens"):
        CustomDiffusionConfig(freeze_model="none")


def test_full_unet_mode_trains_and_round_trips_the_unet(dirs, tmp_path):
    """freeze_model="unet" (the full fine-tune baseline): every UNet weight trains, no
    processors, the snapshot holds the UNet (not a reference) and the export reloads exactly."""
    from langfree.checkpoint import load_snapshot, save_snapshot
    from langfree.families.custom_diffusion.family import load_output_dir
    from langfree.families.sd.sampler import sample

    fam = _family(dirs, freeze_model="unet")
    assert fam.trained() == ("unet", "tokens") and "layers" not in fam.modules()
    assert set(fam.references()) == {"text_encoder", "vae"}
    before = {k: v.clone() for k, v in fam.parts.unet.state_dict().items()}
    te = {k: v.clone() for k, v in fam.parts.text_encoder.state_dict().items() if "rows" not in k}
    _step(fam)
    after = fam.parts.unet.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > 0.9 * len(before)   # (almost) every tensor got an update
    assert all(torch.equal(v, fam.parts.text_encoder.state_dict()[k]) for k, v in te.items())
    save_snapshot(tmp_path / "snap", fam, 0.004)
    again = load_snapshot(tmp_path / "snap", encoder=None)
    assert all(torch.equal(after[k], v) for k, v in again.parts.unet.state_dict().items())
    fam.export(tmp_path / "export")
    parts, res = load_output_dir(tmp_path / "export")
    a = sample(fam.parts, ["a <new1> square"], [3], res, 2, 3.0, 0.0)
    b = sample(parts, ["a <new1> square"], [3], res, 2, 3.0, 0.0)
    assert torch.equal(a, b)
