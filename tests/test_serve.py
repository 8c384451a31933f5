"""``langfree serve`` on the server side: limits enforced in the functions, seeds, PNG round
trip, the queue, the runs view, file access, and the CLI end to end (gradio_client)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

import test_serve_helpers as H

pytest.importorskip("gradio")

from langfree.config import ConfigError  # noqa: E402
from langfree.serve.app import ServeApp, ServeSettings  # noqa: E402
from langfree.serve.safety import BUSY_MESSAGE, Limits, RequestError, launch_kwargs  # noqa: E402
from langfree.serve.worker import Admission, Busy  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return H.make_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture
def app(run_dir, monkeypatch):
    H.register(monkeypatch)
    return ServeApp(ServeSettings(paths=(str(run_dir),), limits=Limits(max_batch=4)))


def defaults(app, **changes):
    """The option values gradio would send, with ``changes`` for the served family's fields."""
    return [changes.get(spec.name, spec.default) for _, spec in app.controls]


def generate(app, prompt="a red circle", seed=-1, count=2, negative="", reference=None, **opts):
    """Run the generate handler to its end -> (PIL images, seed used, status)."""
    *_, last = app.generate(app.entries[0].label, prompt, negative, seed, count, reference,
                            *defaults(app, **opts))
    gallery, seed_used, status = last
    return [img for img, _ in gallery], seed_used, status


def pixels(images):
    return np.stack([np.array(img) for img in images])


def test_models_and_traits_come_from_the_family_class(app, run_dir):
    assert [e.label for e in app.entries] == [f"{run_dir.name}/snapshot-000000.020",
                                              f"{run_dir.name}/snapshot-000000.010"]
    t = app.traits["tiny_serve"]
    assert [o.name for o in t.options] == ["noise_scale", "delay", "channel", "invert"]
    assert [o.kind for o in t.options] == ["float", "float", "str", "bool"]
    assert t.options[0].minimum == 0.0 and t.options[0].maximum == 4.0
    assert t.options[2].choices == ("rgb", "bgr")
    assert t.uses_negative_prompt and t.supports_image_variation  # spec: encoder="required"
    from langfree.serve.models import family_traits

    lafite = family_traits("lafite")
    assert not lafite.uses_negative_prompt and lafite.supports_image_variation
    assert {o.name for o in lafite.options} == {"truncation_psi", "noise_mode"}


def test_option_ranges_and_choices_are_enforced_on_the_server(app):
    label = app.entries[0].label
    with pytest.raises(ConfigError, match=r"noise_scale=9.0: must be in \[0.0, 4.0\]"):
        app.check_request(label, "x", "", 1, 1, None, defaults(app, noise_scale=9.0))
    with pytest.raises(ConfigError, match="choose one of rgb, bgr"):
        app.check_request(label, "x", "", 1, 1, None, defaults(app, channel="../../etc"))
    with pytest.raises(RequestError, match="unknown model"):
        app.check_request("/etc/passwd", "x", "", 1, 1, None, defaults(app))
    ok = app.check_request(label, "x", "", 1, 1, None, defaults(app, noise_scale=2.5))
    assert ok.options.noise_scale == 2.5


def test_prompt_length_and_image_count_are_limited_in_the_function(app):
    import gradio as gr

    label = app.entries[0].label
    with pytest.raises(RequestError, match="501 characters; the limit is 500"):
        app.check_request(label, "a" * 501, "", 1, 1, None, defaults(app))
    with pytest.raises(RequestError, match="negative prompt has 501"):
        app.check_request(label, "a", "n" * 501, 1, 1, None, defaults(app))
    for bad in (0, 5, 2.5, "many"):
        with pytest.raises(RequestError, match="number of images"):
            app.check_request(label, "a", "", 1, bad, None, defaults(app))
    with pytest.raises(RequestError, match="seed"):
        app.check_request(label, "a", "", 2**31, 1, None, defaults(app))
    with pytest.raises(gr.Error, match="the limit is 500"):  # what the browser sees
        generate(app, prompt="a" * 501)


def test_random_seed_is_shown_and_reproduces_the_images(app):
    images, seed, status = generate(app, seed=-1, count=3)
    assert len(images) == 3 and isinstance(seed, int) and 0 <= seed < 2**31
    assert str(seed) in status
    again, seed2, _ = generate(app, seed=seed, count=3)
    assert seed2 == seed
    np.testing.assert_array_equal(pixels(images), pixels(again))
    other, _, _ = generate(app, seed=seed, count=3, noise_scale=3.0)   # an option changes them
    assert not np.array_equal(pixels(images), pixels(other))


def test_png_keeps_the_parameters_and_restores_the_settings(app, tmp_path):
    from langfree.sampling.generate import read_parameters

    images, seed, _ = generate(app, prompt="a blue square", negative="blurry", seed=11,
                               count=1, noise_scale=1.5, channel="bgr")
    path = tmp_path / "out.png"
    # gradio writes returned PIL images as PNG with their text info (Gallery format="png")
    from gradio.processing_utils import save_pil_to_cache

    saved = save_pil_to_cache(images[0], str(tmp_path), format="png")
    Path(saved).rename(path)
    params = read_parameters(path)
    assert (params.prompt, params.seed, params.negative_prompt) == ("a blue square", 11, "blurry")
    model, prompt, negative, seed_box, *opts, status = app.restore(str(path))
    assert (model, prompt, negative, seed_box) == (app.entries[0].label, "a blue square",
                                                   "blurry", 11)
    assert opts == [1.5, 0.0, "bgr", False] and "Restored" in status
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    assert "no 'parameters' text chunk" in app.restore(str(plain))[-1]


def test_image_variation_from_a_reference(app):
    ref = np.full((8, 8, 3), 200, np.uint8)
    images, _, status = generate(app, prompt="", reference=ref, seed=3, count=2)
    assert len(images) == 2 and "Done" in status
    assert images[0].info["parameters"].startswith("\nSeed: 3")  # no prompt: an image row


def test_admission_queue_limits_and_order():
    adm = Admission(concurrency=1, queue=1)
    a, b = adm.join(), adm.join()
    with pytest.raises(Busy, match="busy"):
        adm.join()
    assert adm.wait_turn(a, 0) is None and adm.wait_turn(b, 0) == 1
    adm.leave(a)
    assert adm.wait_turn(b, 0) is None
    adm.leave(b)
    assert adm.load() == (0, 0)


def test_runs_view_reads_curves_and_grids(app, run_dir):
    series, stats, metrics, grids = app.run_view(run_dir.name, None)
    assert series["value"] == ["Loss/main/loss"]
    assert len(stats) == 5 and set(stats["series"]) == {"Loss/main/loss"}
    assert list(metrics["metric"].unique()) == ["fid50k_full"] and len(metrics) == 2
    assert [name for _, name in grids] == ["snapshot-000000.020", "snapshot-000000.010"]
    assert grids[0][0].shape == (16, 16, 3)


def test_safe_defaults():
    assert ServeSettings(paths=("x",)).host == "127.0.0.1"
    kw = launch_kwargs("127.0.0.1", None, None, Limits(), threads=8)
    assert kw["share"] is False and kw["allowed_paths"] == [] and kw["ssr_mode"] is False
    import inspect

    from langfree.commands.serve import serve

    assert inspect.signature(serve).parameters["host"].default.default == "127.0.0.1"
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"


LOCAL = ("127.0.0.1", "localhost", "::1", "0.0.0.0")


@pytest.fixture
def no_outbound(monkeypatch):
    """Record (and refuse) every connection or name lookup of this process that is not local."""
    import socket

    seen: list = []
    connect, lookup = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL:
            seen.append(address)
            raise OSError(f"test: outbound connection to {address} refused")
        return connect(sock, address)

    def guarded_lookup(host, *args, **kwargs):
        if host not in LOCAL and host is not None:
            seen.append(host)
            raise OSError(f"test: lookup of {host} refused")
        return lookup(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_lookup)
    yield seen
    assert seen == [], f"the server or client reached outside: {seen}"


def test_live_server_refuses_files_and_answers_busy(run_dir, monkeypatch, tmp_path, no_outbound):
    """gradio_client against a real server: a traversal URL is refused, the same call as the
    browser works, and 16 clients against a queue of 8 are each answered or told 'busy'; no
    connection leaves 127.0.0.1 meanwhile."""
    import httpx
    from gradio_client import Client

    H.register(monkeypatch)
    settings = ServeSettings(paths=(str(run_dir),), port=H.free_port(), concurrency=1,
                             queue=8, chunk=1)
    with H.running(settings) as (app, demo, url):
        assert demo.server_name == "127.0.0.1"
        grid = run_dir / "snapshots" / "snapshot-000000.010" / "grid.png"
        for target in ("/etc/passwd", "../../../../etc/passwd", str(grid),
                       "%2Fetc%2Fpasswd", str(run_dir / "config.json")):
            r = httpx.get(f"{url}/gradio_api/file={target}")
            assert r.status_code in (403, 404), target
            assert b"root:" not in r.content
        client = Client(url, analytics_enabled=False, verbose=False, download_files=str(tmp_path))
        label = app.entries[0].label
        gallery, seed, status = client.predict(label, "a cat", "", 5, 2, None,
                                               *defaults(app), api_name="/generate")
        assert len(gallery) == 2 and seed == 5 and status.startswith("Done")
        from langfree.sampling.generate import read_parameters

        params = read_parameters(gallery[0]["image"])
        assert params.prompt == "a cat" and params.seed == 5
        with pytest.raises(Exception, match="maximum value 4.0"):  # out of range: refused ...
            client.predict(label, "a cat", "", 5, 1, None, *defaults(app, noise_scale=99.0),
                           api_name="/generate")

        def one(i):
            c = Client(url, analytics_enabled=False, verbose=False,
                       download_files=str(tmp_path / str(i)))
            try:
                c.predict(label, "slow", "", i, 1, None, *defaults(app, delay=0.2),
                          api_name="/generate")
                return "ok"
            except Exception as exc:  # noqa: BLE001 - the message is what we check
                return "busy" if BUSY_MESSAGE in str(exc) else f"other: {exc}"

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, range(16)))
        assert set(answers) <= {"ok", "busy"}, answers
        assert 1 <= answers.count("ok") and answers.count("busy") >= 16 - 9, answers
        assert app.admission.load() == (0, 0)
        again = client.predict(label, "still up", "", 1, 1, None, *defaults(app),
                               api_name="/generate")                # ... and still serving
        assert again[2].startswith("Done")


def test_cli_serves_a_run_end_to_end(run_dir, tmp_path):
    """``langfree serve RUN --port P`` in its own process (the command the lead wires in)."""
    from gradio_client import Client

    from langfree.commands import serve as serve_cmd

    cli = typer.Typer()
    serve_cmd.register(cli)
    cli.command("noop")(lambda: None)
    res = CliRunner().invoke(cli, ["serve", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no snapshot found" in res.output
    helpers = Path(__file__).parent
    code = ("import sys, typer; sys.path[:0] = [sys.argv[1]]\n"
            "from langfree.families import registry\n"
            "registry._FAMILIES['tiny_serve'] = 'test_serve_helpers:SPEC'\n"
            "from langfree.commands import serve\n"
            "app = typer.Typer(); serve.register(app); app.command('noop')(lambda: None)\n"
            "app(sys.argv[2:])\n")
    port = H.free_port()
    proc = subprocess.Popen([sys.executable, "-c", code, str(helpers), "serve", str(run_dir),
                             "--port", str(port), "--max-batch", "2", "--auth", "ann:secret"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        url = f"http://127.0.0.1:{port}"
        H.wait_up(url)
        import httpx

        assert httpx.get(f"{url}/config").status_code == 401            # --auth is required
        with pytest.raises(ValueError, match="Could not login"):     # a wrong password
            Client(url, analytics_enabled=False, verbose=False, auth=("ann", "wrong"))
        client = Client(url, analytics_enabled=False, verbose=False, auth=("ann", "secret"),
                        download_files=str(tmp_path))
        label = f"{run_dir.name}/snapshot-000000.020"
        gallery, seed, status = client.predict(label, "hi", "", 3, 2, None, 1.0, 0.0, "rgb",
                                               False, api_name="/generate")
        assert len(gallery) == 2 and seed == 3
        with pytest.raises(Exception, match="maximum value 2"):
            client.predict(label, "hi", "", 3, 3, None, 1.0, 0.0, "rgb", False,
                           api_name="/generate")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    reader.join(timeout=5)
    assert f"at http://127.0.0.1:{port}" in "".join(out)
