"""VQGAN: taming names, shapes, VQ loss values, dead-code revival, tensor-only conversion."""

import json
import pickle
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from langfree.families.vqgan.codebook import CodebookMonitor, perplexity
from langfree.families.vqgan.config import PRESETS, VQGANConfig
from langfree.families.vqgan.networks import VQGAN, VectorQuantizer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = PRESETS["tiny"]
# The taming VQModel name patterns (REFERENCE §4), "decoder.*" mirrored with up/upsample.
BLOCK = r"block\.\d+\.(norm1|conv1|norm2|conv2|nin_shortcut)"
ATTN = r"attn\.\d+\.(norm|q|k|v|proj_out)"
MID = r"mid\.(block_[12]\.(norm1|conv1|norm2|conv2)|attn_1\.(norm|q|k|v|proj_out))"
TAMING = re.compile(
    rf"^(encoder\.(conv_in|down\.\d+\.({BLOCK}|{ATTN}|downsample\.conv)|{MID}|norm_out|conv_out)"
    rf"|decoder\.(conv_in|up\.\d+\.({BLOCK}|{ATTN}|upsample\.conv)|{MID}|norm_out|conv_out)"
    rf"|quant_conv|post_quant_conv)\.(weight|bias)$|^quantize\.embedding\.weight$")


def test_state_dict_names_are_tamings():
    sd = VQGAN(TINY).state_dict()
    bad = [k for k in sd if not TAMING.match(k)]
    assert not bad, bad
    for must in ("encoder.down.0.downsample.conv.weight", "encoder.down.1.attn.0.q.weight",
                 "encoder.down.1.block.0.nin_shortcut.weight", "decoder.up.1.upsample.conv.bias",
                 "decoder.up.1.block.1.conv2.weight", "encoder.mid.attn_1.proj_out.weight",
                 "quantize.embedding.weight"):
        assert must in sd, must
    assert "encoder.down.1.downsample.conv.weight" not in sd  # no downsample at the top level
    assert "decoder.up.0.upsample.conv.weight" not in sd


def test_codes_decode_shapes_and_grid():
    net = VQGAN(TINY).eval()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    codes = net.encode(x)
    assert codes.shape == (2, net.grid**2) == (2, 64) and codes.dtype == torch.int64
    assert int(codes.max()) < TINY.n_embed
    assert net.decode_codes(codes).shape == (2, 3, 16, 16)
    rec, _, codes2, z_e = net(x)
    assert rec.shape == x.shape and torch.equal(codes, codes2) and z_e.shape == (2, 8, 8, 8)
    with pytest.raises(ValueError, match="square"):
        net.decode_codes(codes[:, :10])


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of norm_groups 32"):
        VQGANConfig(ch=16)
    with pytest.raises(ValueError, match="divisible"):
        VQGANConfig(resolution=100)
    with pytest.raises(ValueError, match="perceptual_path"):
        VQGANConfig(perceptual_weight=1.0)


@pytest.mark.parametrize("legacy", [False, True])
def test_vq_loss_values_and_straight_through(legacy):
    q = VectorQuantizer(4, 2, beta=0.25, legacy_beta=legacy)
    q.embedding.weight.data = torch.tensor([[0., 0.], [1., 0.], [0., 1.], [5., 5.]])
    z = torch.tensor([[0.2, 0.9], [0.1, -0.1]]).t().reshape(1, 2, 1, 2).requires_grad_(True)
    z_q, loss, codes = q(z)
    assert codes.tolist() == [[2, 0]]
    mse = ((0.2**2 + 0.1**2) + (0.1**2 + 0.1**2)) / 4  # mean over B*D*h*w = 4 entries
    want = (0.25 * mse + mse) if legacy else (mse + 0.25 * mse)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    # codebook term moves e, commitment moves z with weight β (non-legacy)
    loss.backward()
    expect = (2 * (z.detach() - z_q.detach()) / 4) * (0.25 if not legacy else 1.0)
    torch.testing.assert_close(z.grad, expect)
    # straight-through: d(z_q)/dz = identity
    z2 = z.detach().clone().requires_grad_(True)
    q(z2)[0].sum().backward()
    assert torch.equal(z2.grad, torch.ones_like(z2))


def test_l2_codes_pick_by_cosine_and_keep_names():
    """l2_codes: the lookup is by cosine, not distance, and z_q is a unit vector; the state dict
    is the same (taming names, same shapes)."""
    e = torch.tensor([[0.1, 0.0], [3.0, 3.0], [0.0, -2.0]])
    z = torch.tensor([[2.0, 1.8]]).t().reshape(1, 2, 1, 1)  # nearest by distance: code 1 too
    z_far = torch.tensor([[0.2, 0.01]]).t().reshape(1, 2, 1, 1)  # distance: code 0; cosine: 0
    z_diag = torch.tensor([[0.15, 0.16]]).t().reshape(1, 2, 1, 1)  # distance: 0; cosine: 1
    plain, unit = VectorQuantizer(3, 2, 0.25, False), VectorQuantizer(3, 2, 0.25, False, l2=True)
    for q in (plain, unit):
        q.embedding.weight.data = e.clone()
    assert plain(z_diag)[2].tolist() == [[0]] and unit(z_diag)[2].tolist() == [[1]]
    assert unit(z)[2].tolist() == [[1]] and unit(z_far)[2].tolist() == [[0]]
    z_q = unit(z_diag)[0]
    torch.testing.assert_close(z_q.flatten().norm(), torch.tensor(1.0))
    torch.testing.assert_close(unit.lookup(torch.tensor([[1]]), 1, 1).flatten(),
                               torch.tensor([1.0, 1.0]) / 2 ** 0.5)
    a, b = VQGAN(TINY).state_dict(), VQGAN(replace(TINY, l2_codes=True)).state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}


def test_norm_groups_reach_every_groupnorm():
    net = VQGAN(replace(TINY, norm_groups=8))
    groups = {m.num_groups for m in net.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert groups == {8}
    assert {m.num_groups for m in VQGAN(TINY).modules()
            if isinstance(m, torch.nn.GroupNorm)} == {32}  # taming's default
    with pytest.raises(ValueError, match="multiple of norm_groups 48"):
        replace(TINY, norm_groups=48)


def test_perplexity():
    assert perplexity(torch.zeros(10, dtype=torch.long), 8).item() == pytest.approx(1.0)
    assert perplexity(torch.arange(8), 8).item() == pytest.approx(8.0)


def test_dead_code_reset_revives_codes():
    torch.manual_seed(0)
    net = VQGAN(TINY)
    mon = CodebookMonitor(TINY.n_embed, dead_after=3, dead_check=3)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z_e = net.encode_z(x)
    # the official-style init puts every code near 0: few codes win
    used = net.quantize.codes(z_e).unique()
    used_before = used.numel()
    for _ in range(3):
        stats = mon.update(net.quantize.codes(z_e), z_e, net.quantize.embedding.weight.data)
    assert stats["codes_reset"].item() == TINY.n_embed - used_before
    assert not mon.dead().any()  # reset codes get a fresh grace period
    used_after = net.quantize.codes(z_e).unique().numel()
    assert used_after > used_before
    # every reset code now is exactly an encoder output of the batch
    pool = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
    reset = torch.ones(TINY.n_embed, dtype=torch.bool)
    reset[used] = False
    e = net.quantize.embedding.weight.data[reset]
    assert (e[:, None, :] == pool[None]).all(-1).any(1).all()
    assert 0.0 <= stats["dead_share"].item() <= 1.0


class _Evil:
    """Unpickling this with pickle would create a file: the converter must never run it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_convert_taming_ckpt_tensor_only(tmp_path):
    from langfree.checkpoint import load_tensors
    from langfree.families.vqgan.convert import (
        ConvertError,
        convert_taming_ckpt,
        read_tensors_only,
    )

    cfg = replace(TINY, resolution=32, attn_resolutions=(16,))
    src = VQGAN(cfg)
    sd = dict(src.state_dict())
    sd["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4)
    sd["loss.perceptual_loss.lin0.model.1.weight"] = torch.randn(1, 64, 1, 1)
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "global_step": 10, "state_dict": sd,
                "callbacks": {"evil": _Evil(marker)}, "hyper_parameters": {"lr": 1e-4}}, ckpt)
    assert read_tensors_only(ckpt)["global_step"] == 10
    out = convert_taming_ckpt(ckpt, tmp_path / "vq", resolution=32)
    assert not marker.exists()  # no code from the file ran
    got = load_tensors(out / "vqgan.safetensors")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["family"] == "vqgan" and manifest["modules"] == ["vqgan"]
    assert not any(k.startswith("loss.") for k in got)
    assert set(got) == set(src.state_dict())
    for k, v in src.state_dict().items():
        assert torch.equal(got[k], v), k
    conf = json.loads((out / "config.json").read_text())["config"]
    assert conf["ch_mult"] == [1, 2] and conf["attn_resolutions"] == [16] and conf["legacy_beta"]
    # a plain pickle is refused, a non-VQGAN state dict named
    (tmp_path / "p.ckpt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ConvertError, match="zip"):
        convert_taming_ckpt(tmp_path / "p.ckpt", tmp_path / "x")
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "o.ckpt")
    with pytest.raises(ConvertError, match="not a taming"):
        convert_taming_ckpt(tmp_path / "o.ckpt", tmp_path / "y")


def test_commands_convert_and_tokenizer(tmp_path):
    """The typer commands the CLI registers: `convert taming-ckpt` and `tokenizer train`."""
    import typer
    from typer.testing import CliRunner

    from langfree.data.shapes import write_shapes
    from langfree.families.dalle.commands import tokenizer_train
    from langfree.families.vqgan import SPEC
    from langfree.families.vqgan.commands import taming_ckpt

    assert SPEC.converters == {"taming-ckpt": "langfree.families.vqgan.commands:taming_ckpt"}
    app = typer.Typer()
    app.command("taming-ckpt")(taming_ckpt)
    app.command("tokenizer-train")(tokenizer_train)
    cfg = replace(TINY, resolution=32, attn_resolutions=(16,))
    torch.save({"state_dict": VQGAN(cfg).state_dict()}, tmp_path / "m.ckpt")
    run = CliRunner().invoke(app, ["taming-ckpt", str(tmp_path / "m.ckpt"), str(tmp_path / "o"),
                                   "--resolution", "32"])
    assert run.exit_code == 0, run.output
    assert (tmp_path / "o" / "manifest.json").is_file()
    bad = CliRunner().invoke(app, ["taming-ckpt", str(tmp_path / "none.ckpt"),
                                   str(tmp_path / "p")])
    assert bad.exit_code == 2 and "not found" in bad.output
    data = write_shapes(tmp_path / "s.zip", count=8, resolution=16, seed=0)
    run = CliRunner().invoke(app, ["tokenizer-train", str(data), "--vocab", "300",
                                   "--out", str(tmp_path / "tok.json")])
    assert run.exit_code == 0, run.output
    assert json.loads((tmp_path / "tok.json").read_text())["model"]["type"] == "BPE"
