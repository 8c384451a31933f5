"""Custom Diffusion through THE training loop: runs, snapshots the diffusers files, and a
stopped + resumed run ends bitwise equal to an uninterrupted one."""

import pytest
import torch

from langfree.families.custom_diffusion.config import CustomDiffusionConfig


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, one_thread):
    from langfree.families.sd.tiny import write_shape_images, write_tiny_base

    root = tmp_path_factory.mktemp("cdloop")
    return {"root": root, "base": write_tiny_base(root / "base"),
            "inst": write_shape_images(root / "inst", n=3, size=24)}


def _run(dirs, outdir, max_ticks=None, resume=None):
    from langfree.families.custom_diffusion.family import CustomDiffusionFamily, prepare
    from langfree.training.loop import train
    from langfree.training.options import TrainOptions

    cfg = CustomDiffusionConfig(
        pretrained_model_name_or_path=str(dirs["base"]), instance_data_dir=str(dirs["inst"]),
        instance_prompt="photo of a <new1> square", modifier_token="<new1>",
        with_prior_preservation=True, class_prompt="square",
        class_data_dir=str(dirs["root"] / "cls"), num_class_images=2, class_generation_steps=2,
        train_batch_size=2, learning_rate=1e-3, lr_warmup_steps=2)
    fam = CustomDiffusionFamily(cfg)
    prepare(fam)
    opts = TrainOptions(outdir=str(outdir), kimg=0.012, batch=2, tick_kimg=0.004, snap=1,
                        max_ticks=max_ticks, resume=resume)
    run = train(fam, fam.dataset(), opts, {"family": "custom-diffusion"})
    return fam, run


def test_loop_run_and_exact_resume(dirs, tmp_path):
    full, run = _run(dirs, tmp_path / "a")
    snaps = sorted((run / "snapshots").iterdir())
    assert (snaps[-1] / "export" / "pytorch_custom_diffusion_weights.safetensors").is_file()
    assert (snaps[-1] / "export" / "<new1>.safetensors").is_file()
    _run(dirs, tmp_path / "b", max_ticks=1)
    resumed, _ = _run(dirs, tmp_path / "b", resume="latest")
    for name in ("layers", "tokens"):
        a = full.modules()[name].state_dict()
        b = resumed.modules()[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
