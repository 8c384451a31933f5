"""Side by side with the official LAFITE networks (drboog/Lafite), imported from a local checkout.

Set LANGFREE_LAFITE_SRC=/path/to/Lafite to run; skipped otherwise. The official networks are
pickled with their own mechanism (persistent classes, as training_loop.py saves snapshots),
converted by langfree without running the pickle's code, and must give the same images for the
same z, feature and noise, and the same discriminator outputs.
"""

import copy
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

SRC = os.environ.get("LANGFREE_LAFITE_SRC")
pytestmark = pytest.mark.skipif(not SRC, reason="LANGFREE_LAFITE_SRC (path to a drboog/Lafite "
                                                "checkout) is not set")
F_DIM, TOL = 16, 1e-4


@pytest.fixture(scope="module")
def official():
    if not (Path(SRC) / "training" / "networks.py").is_file():
        pytest.fail(f"LANGFREE_LAFITE_SRC={SRC}: no training/networks.py there")
    sys.path.insert(0, SRC)
    try:
        import dnnlib
        from training.networks import Discriminator, Generator
    finally:
        sys.path.remove(SRC)
    torch.manual_seed(0)
    # w_dim 512: the official text MLPs are 512 wide whatever w_dim is; langfree ties the two.
    G = Generator(z_dim=64, c_dim=0, w_dim=512, img_resolution=32, img_channels=3,
                  m_layer_features=F_DIM, mapping_kwargs=dnnlib.EasyDict(num_layers=2),
                  synthesis_kwargs=dnnlib.EasyDict(channel_base=512, channel_max=64, f_dim=F_DIM,
                                                   change=16, conv_clamp=256))
    D = Discriminator(c_dim=0, img_resolution=32, img_channels=3, channel_base=512, channel_max=64,
                      conv_clamp=256, epilogue_kwargs=dnnlib.EasyDict(f_dim=F_DIM, mbstd_group_size=4))
    with torch.no_grad():  # make biases, noise strengths and w_avg visible to the comparison
        for name, p in list(G.named_parameters()) + list(D.named_parameters()):
            if name.endswith(("bias", "noise_strength")):
                p.add_(0.2 * torch.randn_like(p))
        G.mapping.w_avg.normal_()
    return G, D, dnnlib


@pytest.fixture(scope="module")
def converted(official, tmp_path_factory):
    from langfree.checkpoint import load_snapshot
    from langfree.families.lafite.convert import convert_pickle

    G, D, dnnlib = official
    tmp = tmp_path_factory.mktemp("official")
    data = {"training_set_kwargs": dnnlib.EasyDict(resolution=32), "augment_pipe": None}
    for name, module in [("G", G), ("D", D), ("G_ema", G)]:
        data[name] = copy.deepcopy(module).eval().requires_grad_(False).cpu()
    with open(tmp / "network-snapshot-000000.pkl", "wb") as f:
        pickle.dump(data, f)
    convert_pickle(tmp / "network-snapshot-000000.pkl", tmp / "snapshot")
    return load_snapshot(tmp / "snapshot", encoder=None)


def _inputs(b=4):
    g = torch.Generator().manual_seed(1)
    z = torch.randn(b, 64, generator=g)
    c = F.normalize(torch.randn(b, F_DIM, generator=g), dim=1)
    img = torch.rand(b, 3, 32, 32, generator=g) * 2 - 1
    return z, c, img


def test_config_is_inferred(converted):
    cfg = converted.config
    assert (cfg.resolution, cfg.z_dim, cfg.w_dim, cfg.c_dim) == (32, 64, 512, F_DIM)
    assert (cfg.channel_base, cfg.channel_max, cfg.mapping_layers) == (512, 64, 2)
    assert (cfg.change_resolution, cfg.conv_clamp, cfg.d_projection) == (16, 256, "batch_sum")


@pytest.mark.parametrize("noise_mode,psi", [("const", 1.0), ("const", 0.7), ("none", 1.0),
                                            ("random", 1.0)])
def test_same_images(official, converted, noise_mode, psi):
    G = official[0].eval()
    z, c, _ = _inputs()
    with torch.no_grad():
        torch.manual_seed(5)  # random noise: both draw [B, 1, r, r] per layer in the same order
        ref = G(z, None, fts=c, truncation_psi=psi, noise_mode=noise_mode)
        torch.manual_seed(5)
        ours = converted.G_ema(z, c, truncation_psi=psi, noise_mode=noise_mode)
    assert ref.abs().max() > 0.1
    assert (ref - ours).abs().max().item() <= TOL


def test_same_discriminator_outputs(official, converted):
    D = official[1]
    _, c, img = _inputs()
    with torch.no_grad():
        ref_logits, ref_f = D(img, None, fts=c)
        logits, f = converted.D(img, c)
    assert (ref_logits.squeeze(1) - logits).abs().max().item() <= TOL
    assert (ref_f - f).abs().max().item() <= TOL


def test_same_gradients_through_both(official, converted):
    """Training-mode G -> D graph: the image gradient of the D logit sum agrees."""
    G, D = official[0].train(), official[1]
    z, c, _ = _inputs()
    x = G(z, None, fts=c, noise_mode="none").detach().requires_grad_(True)
    (ref,) = torch.autograd.grad(D(x, None, fts=c)[0].sum(), x)
    x2 = x.detach().requires_grad_(True)
    (ours,) = torch.autograd.grad(converted.D(x2, c)[0].sum(), x2)
    assert (ref - ours).abs().max().item() <= TOL
