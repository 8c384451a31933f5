"""Official-pickle import: refuses code, rebuilds tensors, maps names and infers the config.

The "official" pickles here are crafted without the official code: stand-ins for
``torch_utils.persistence._reconstruct_persistent_obj`` and ``dnnlib.util.EasyDict`` are
registered under those module names while pickling, giving the same pickle opcodes.
"""

import os
import pickle
import re
import sys
import types
from collections import OrderedDict

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from langfree.families.lafite.convert import (
    UnsafePickleError,
    convert_pickle,
    load_official_pickle,
    read_official,
)
from langfree.families.lafite.networks import Discriminator, Generator

ARCH = {"z_dim": 32, "c_dim": 16, "w_dim": 32, "img_resolution": 32, "channel_base": 512, "channel_max": 64,
            "mapping_layers": 2, "change_resolution": 16}


def _reconstruct_persistent_obj(meta):  # pickled by reference only
    raise AssertionError("never called while pickling")


class EasyDict(dict):
    pass


class FakePersistent:
    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return (_reconstruct_persistent_obj, (self.meta,))


@pytest.fixture
def fake_official_modules(monkeypatch):
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")
    _reconstruct_persistent_obj.__module__ = persistence.__name__
    EasyDict.__module__, EasyDict.__qualname__ = util.__name__, "EasyDict"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util.EasyDict = EasyDict
    for name, mod in [("torch_utils", types.ModuleType("torch_utils")), ("dnnlib", types.ModuleType("dnnlib")),
                      ("torch_utils.persistence", persistence), ("dnnlib.util", util)]:
        monkeypatch.setitem(sys.modules, name, mod)


def _official_name(name: str, module_names: set[str]) -> str:
    """langfree name -> official name (the inverse of convert's table, written independently)."""
    if ".style.affine." in name:
        concat = name.split(".style.")[0] + ".style.text_mlp" in module_names
        name = name.replace(".style.affine.", ".affine_0." if concat else ".affine.")
    name = re.sub(r"^mapping\.layers\.(\d+)", r"mapping.fc\1", name)
    name = name.replace("synthesis.blocks.", "synthesis.")
    name = re.sub(r"\.style\.text_mlp\.(\d)", r".pre_\1", name)
    name = re.sub(r"\.style\.(scale|bias)_mlp\.(\d)", r".\1_layer_\2", name)
    name = re.sub(r"^blocks\.", "", name)
    name = re.sub(r"^epilogue\.features", "b4.fts", name)
    return re.sub(r"^epilogue\.", "b4.", name)


def _persistent_tree(module: torch.nn.Module, class_name: str, init_kwargs: dict) -> FakePersistent:
    modules = {n for n, _ in module.named_modules()}
    params = {n for n, _ in module.named_parameters()}
    root: dict = {}
    for name, t in module.state_dict().items():
        off = _official_name(name, modules).split(".")
        node = root
        for part in off[:-1]:
            node = node.setdefault(part, {})
        node[off[-1]] = torch.nn.Parameter(t.clone()) if name in params else t.clone()

    def build(node: dict, cls: str, kwargs: dict) -> FakePersistent:
        state = {"_parameters": OrderedDict(), "_buffers": OrderedDict(), "_modules": OrderedDict(),
                 "training": False, "weight_gain": np.float32(0.5), "_init_kwargs": EasyDict(kwargs)}
        for k, v in node.items():
            if isinstance(v, dict):
                state["_modules"][k] = build(v, "Layer", {})
            elif isinstance(v, torch.nn.Parameter):
                state["_parameters"][k] = v
            else:
                state["_buffers"][k] = v
        state["_buffers"]["resample_filter"] = torch.ones(4, 4) / 16  # dropped by the converter
        return FakePersistent({"type": "class", "version": 6, "module_src": "import os\nos.system('x')",
                               "class_name": cls, "state": state})

    return build(root, class_name, init_kwargs)


def _nets(seed: int):
    torch.manual_seed(seed)
    G = Generator(**ARCH)
    D = Discriminator(c_dim=16, img_resolution=32, channel_base=512, channel_max=64,
                      projection="batch_sum")
    with torch.no_grad():
        for p in list(G.parameters()) + list(D.parameters()):
            p.add_(0.05 * torch.randn_like(p))
        G.mapping.w_avg.normal_()
    return G, D


def _write_official(path, fake_official_modules_unused=None):
    G, D = _nets(0)
    G_ema, _ = _nets(1)
    kw = {"synthesis_kwargs": EasyDict(change=16, channel_base=512)}
    data = {"G": _persistent_tree(G, "Generator", kw), "G_ema": _persistent_tree(G_ema, "Generator", kw),
            "D": _persistent_tree(D, "Discriminator", {}), "augment_pipe": None,
            "training_set_kwargs": EasyDict(resolution=32)}
    path.write_bytes(pickle.dumps(data, protocol=4))
    return G, G_ema, D


def _outputs(G, D):
    g = torch.Generator().manual_seed(7)
    z, c = torch.randn(4, 32, generator=g), torch.randn(4, 16, generator=g)
    img = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        return G.eval()(z, c, noise_mode="const"), D(img, c)[0]


def test_crafted_official_pickle_converts_exactly(tmp_path, fake_official_modules):
    _G, G_ema, D = _write_official(tmp_path / "net.pkl")
    states, arch = read_official(tmp_path / "net.pkl")
    assert arch == {"resolution": 32, "z_dim": 32, "w_dim": 32, "c_dim": 16, "channel_base": 512,
                    "channel_max": 64, "mapping_layers": 2, "change_resolution": 16,
                    "mbstd_group_size": 4, "conv_clamp": None}
    G2, D2 = Generator(**ARCH), Discriminator(c_dim=16, img_resolution=32, channel_base=512,
                                               channel_max=64, projection="batch_sum")
    G2.load_state_dict(states["G_ema"]), D2.load_state_dict(states["D"])
    for a, b in zip(_outputs(G_ema, D), _outputs(G2, D2)):
        assert torch.equal(a, b)


def test_convert_pickle_writes_a_loadable_snapshot(tmp_path, fake_official_modules):
    from langfree.checkpoint import load_snapshot

    G, G_ema, D = _write_official(tmp_path / "net.pkl")
    out = convert_pickle(tmp_path / "net.pkl", tmp_path / "snap")
    family = load_snapshot(out, encoder=None)
    assert family.config.d_projection == "batch_sum" and family.config.resolution == 32
    assert torch.equal(_outputs(G_ema, D)[0], _outputs(family.G_ema, family.D)[0])
    # G and D are kept in the imported snapshot: --init-from continues training from them
    from langfree.training.state import init_weights

    fresh = load_snapshot(out, encoder=None)
    line = init_weights(out, fresh, {n: fresh.modules()[n] for n in ("G", "G_ema", "D")})
    assert "G, G_ema, D" in line
    for a, b in zip(_outputs(G, D), _outputs(fresh.G, fresh.D)):
        assert torch.equal(a, b)


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('os').getcwd()",))


@pytest.mark.parametrize("payload", ["system", "eval", "nested"])
def test_pickle_that_runs_code_is_refused(tmp_path, payload, fake_official_modules):
    marker = tmp_path / "pwned"
    evil = {"system": Evil(marker), "eval": EvalEvil()}.get(payload)
    if payload == "nested":  # hidden inside a persistent object's state
        evil = FakePersistent({"class_name": "Generator", "state": {"_modules": {"x": Evil(marker)}}})
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"G": evil, "D": None}))
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        load_official_pickle(tmp_path / "evil.pkl")
    assert not marker.exists()


def test_not_a_pickle_and_missing_networks_are_clear_errors(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "state.pt")
    with pytest.raises(ValueError, match="not a readable LAFITE network pickle"):
        load_official_pickle(tmp_path / "state.pt")
    (tmp_path / "empty.pkl").write_bytes(pickle.dumps({"G": None}))
    with pytest.raises(ValueError, match="expected networks"):
        read_official(tmp_path / "empty.pkl")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_official_pickle(tmp_path / "nothing.pkl")


def test_cli_converts_and_refuses(tmp_path, fake_official_modules):
    from langfree.cli import app

    _write_official(tmp_path / "net.pkl")
    runner = CliRunner()
    res = runner.invoke(app, ["convert", "lafite-pkl", str(tmp_path / "net.pkl"), str(tmp_path / "snap"),
                              "--set", "d_projection=per_sample"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "snap" / "G_ema.safetensors").is_file()
    assert '"d_projection": "per_sample"' in (tmp_path / "snap" / "config.json").read_text()
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"G": Evil(tmp_path / "pwned")}))
    res = runner.invoke(app, ["convert", "lafite-pkl", str(tmp_path / "evil.pkl"), str(tmp_path / "s2")])
    assert res.exit_code == 2 and "refusing to load posix.system" in res.output
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "s2").exists()
