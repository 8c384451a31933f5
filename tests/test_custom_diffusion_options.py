"""The official command line: names, network-only options, scale_lr."""

import pytest

from langfree.families.custom_diffusion.options import resolve


def _argv(tmp_path, *extra):
    return ["--pretrained_model_name_or_path", str(tmp_path), "--instance_data_dir",
            str(tmp_path), "--instance_prompt", "photo of a <new1> cat", *extra]


def test_seed_command_line_parses(tmp_path):
    cfg, notes = resolve(_argv(
        tmp_path, "--class_data_dir", str(tmp_path / "cls"), "--with_prior_preservation",
        "--real_prior", "--prior_loss_weight=1.0", "--class_prompt=cat",
        "--num_class_images=200", "--resolution=512", "--train_batch_size=2",
        "--learning_rate=1e-5", "--lr_warmup_steps=0", "--max_train_steps=250", "--scale_lr",
        "--hflip", "--modifier_token", "<new1>+<new2>", "--freeze_model", "crossattn",
        "--validation_prompt=<new1> cat sitting in a bucket", "--checkpointing_steps", "50",
        "--set_grads_to_none", "--seed", "3"))
    assert cfg.modifier_tokens == ("<new1>", "<new2>")
    assert cfg.initializer_tokens == ("ktn", "pll", "ucd")
    assert cfg.concepts[0].class_prompt == "cat" and cfg.freeze_model == "crossattn"
    assert cfg.effective_learning_rate == pytest.approx(1e-5 * 2 * 2)  # x batch, x2 prior
    assert any("<new2> appears in no instance prompt" in n for n in notes)


@pytest.mark.parametrize("extra, words", [
    (["--push_to_hub"], "--push_to_hub needs a network"),
    (["--report_to", "wandb"], "--report_to wandb needs a network"),
])
def test_network_options_fail_with_one_line(tmp_path, extra, words):
    with pytest.raises(ValueError) as err:
        resolve(_argv(tmp_path, *extra))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_xformers_flag_says_what_runs_instead(tmp_path):
    _, notes = resolve(_argv(tmp_path, "--enable_xformers_memory_efficient_attention"))
    assert any("scaled_dot_product_attention" in n for n in notes)


def test_missing_instance_prompt_and_prior_without_class(tmp_path):
    with pytest.raises(ValueError, match="--instance_prompt"):
        resolve(["--pretrained_model_name_or_path", "x", "--instance_data_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--class_data_dir and --class_prompt"):
        resolve(_argv(tmp_path, "--with_prior_preservation"))
