"""The tiny SD-layout pipeline: offline CLIP tokenizer, diffusers save/load, fail-fast loading,
and the SD family's two training stages."""

import json

import pytest
import torch

from langfree.families.sd.config import PRESETS
from langfree.families.sd.tokenizer import CLIP_VOCAB_SIZE, build_clip_tokenizer


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, one_thread):
    from langfree.families.sd.tiny import write_tiny_base

    return write_tiny_base(tmp_path_factory.mktemp("sd") / "base")


def test_tokenizer_matches_open_clip_ids():
    import open_clip

    tok = build_clip_tokenizer()
    assert len(tok) == CLIP_VOCAB_SIZE == 49408
    reference = open_clip.get_tokenizer("ViT-B-32")
    for text in ["a photo of a cat", "A red circle at the top-left, zoomed in!", "ktn sks dog's"]:
        ours = tok(text).input_ids                      # <start> ... <end>, unpadded
        theirs = reference([text])[0].tolist()[: len(ours)]
        assert ours == theirs


def test_saved_tokenizer_reloads_with_full_vocabulary(base_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(base_dir / "tokenizer", local_files_only=True)
    assert len(tok) == CLIP_VOCAB_SIZE
    assert tok("a cat").input_ids == build_clip_tokenizer()("a cat").input_ids
    assert (base_dir / "tokenizer" / "vocab.json").is_file()


def test_plain_diffusers_loads_and_generates_offline(base_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red square", num_inference_steps=2, height=16, width=16, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 16, 16, 3) and out.min() >= 0 and out.max() <= 1


def test_our_sampler_matches_the_diffusers_pipeline(base_dir):
    from langfree.families.sd.pipeline import load_pipeline_dir, to_pipeline
    from langfree.families.sd.sampler import sample

    parts = load_pipeline_dir(base_dir)
    ours = sample(parts, ["a cat"], [3], 16, num_inference_steps=3, guidance_scale=6.0, eta=1.0)
    pipe = to_pipeline(parts, "ddim")
    pipe.set_progress_bar_config(disable=True)
    ref = pipe("a cat", num_inference_steps=3, guidance_scale=6.0, eta=1.0, height=16, width=16,
               generator=torch.Generator().manual_seed(3), output_type="pt").images
    assert torch.allclose(ours, ref * 2 - 1, atol=1e-5)
    # row independence: the same (prompt, seed) gives the same image beside another row
    both = sample(parts, ["a dog", "a cat"], [1, 3], 16, num_inference_steps=3, eta=1.0)
    assert torch.equal(both[1], ours[0])


@pytest.mark.parametrize("spec, words", [
    ("CompVis/stable-diffusion-v1-4", "hub id"),
    ("/no/such/dir", "does not exist"),
])
def test_hub_id_or_missing_dir_fails_fast(spec, words):
    from langfree.families.sd.pipeline import load_pipeline_dir

    with pytest.raises(ValueError, match=words) as err:
        load_pipeline_dir(spec)
    assert "pass a local Stable Diffusion pipeline directory" in str(err.value)


def test_directory_without_model_index_fails(tmp_path):
    from langfree.families.sd.pipeline import load_pipeline_dir

    with pytest.raises(ValueError, match="without model_index.json"):
        load_pipeline_dir(tmp_path)


def test_empty_tokenizer_is_refused(base_dir, tmp_path):
    import shutil

    from langfree.families.sd.pipeline import load_pipeline_dir

    broken = tmp_path / "broken"
    shutil.copytree(base_dir, broken)
    for f in (broken / "tokenizer").iterdir():
        f.unlink()
    (broken / "tokenizer" / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0,
                                                                "<|endoftext|>": 1}))
    (broken / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="tokens, expected at least 49408"):
        load_pipeline_dir(broken)


def test_sd_family_two_stages_and_export(tmp_path, one_thread):
    from diffusers import StableDiffusionPipeline

    from langfree.families.base import Progress
    from langfree.families.sd.family import SDFamily
    from langfree.sampling.conditions import Conditions

    torch.manual_seed(0)
    fam = SDFamily(PRESETS["test"])
    opt = fam.optimizers()["main"]
    batch = {"image": torch.rand(2, 3, 16, 16) * 2 - 1, "caption": ["a red square", "a cat"]}
    vae0 = [p.clone() for p in fam.parts.vae.parameters()]
    unet0 = [p.clone() for p in fam.parts.unet.parameters()]
    for step in range(2):  # test preset: vae_steps = 1
        out = fam.loss(fam.phases()[0], fam.modules(), batch, Progress(step, 0, 4))
        assert torch.isfinite(out.loss)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if step == 0:  # stage 1 moved the VAE only
            assert not all(torch.equal(a, b) for a, b in zip(vae0, fam.parts.vae.parameters()))
            assert all(torch.equal(a, b) for a, b in zip(unet0, fam.parts.unet.parameters()))
    assert float(fam.stats.scale) > 0
    img = fam.sample(Conditions(prompts=["a cat"]), [0], fam.SampleOptions(num_inference_steps=2))
    assert img.shape == (1, 3, 16, 16)
    fam.export(tmp_path / "export")
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "export", local_files_only=True)
    assert pipe.vae.config.scaling_factor == pytest.approx(float(fam.stats.scale))
