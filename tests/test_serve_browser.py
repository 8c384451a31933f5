"""``langfree serve`` in a real headless browser: Debian's chromium driven by Playwright.

Skipped (with the reason) only when chromium or the playwright package cannot be found;
``LANGFREE_REQUIRE_BROWSER=1`` turns that skip into a failure.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile

import pytest
from PIL import Image

import test_serve_helpers as H

CHROMIUM = os.environ.get("LANGFREE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 120_000  # a bound on waiting (the machine is shared), never a speed check


def _need_browser():
    reason = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reason = "the playwright Python package is not installed (pip install playwright)"
    if reason is None and not os.access(CHROMIUM, os.X_OK):
        reason = f"no chromium at {CHROMIUM} (apt-get install -y chromium chromium-driver)"
    if reason is not None:
        if os.environ.get("LANGFREE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"LANGFREE_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    _need_browser()
    from langfree.families import registry
    from langfree.serve.app import ServeSettings

    root = tmp_path_factory.mktemp("serve_browser")
    mp = pytest.MonkeyPatch()
    mp.setitem(registry._FAMILIES, "tiny_serve", "test_serve_helpers:SPEC")
    run = H.make_run(root)
    settings = ServeSettings(paths=(str(run),), port=H.free_port(), chunk=1, queue=4)
    try:
        with H.running(settings) as (app, demo, url):
            yield app, url, root
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright

    _, url, root = served
    outside: list[str] = []

    def only_local(route):
        if route.request.url.startswith(url) or route.request.url.startswith("data:"):
            route.continue_()
        else:  # never let the page reach anything but this server
            outside.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            tempfile.mkdtemp(dir=root), executable_path=CHROMIUM, args=FLAGS, headless=True,
            viewport={"width": 1280, "height": 1400})
        context.set_default_timeout(TIMEOUT_MS)
        pg = context.new_page()
        pg.route("**/*", only_local)
        pg.goto(url)
        pg.get_by_label("Prompt", exact=True).wait_for()
        yield pg
        context.close()
    assert outside == [], f"the page requested outside hosts: {outside}"


def status(pg) -> str:
    return pg.locator("#status textarea").input_value()


def wait_status(pg, prefix: str) -> str:
    pg.wait_for_function(
        "p => document.querySelector('#status textarea').value.startsWith(p)", arg=prefix,
        timeout=TIMEOUT_MS)
    return status(pg)


def set_number(pg, elem_id: str, value) -> None:
    """A slider's or number box's typed value (what a user types, committed with Enter)."""
    box = pg.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def gallery_pngs(pg, url: str) -> list[Image.Image]:
    imgs = pg.locator("#gallery .grid-container img")
    out = []
    for i in range(imgs.count()):
        imgs.nth(i).scroll_into_view_if_needed()   # loading="lazy"
        data = pg.request.get(imgs.nth(i).get_attribute("src")).body()
        out.append(Image.open(io.BytesIO(data)))
    return out


def clear_status(pg) -> None:
    """Blank the status box so a wait sees this request's answer, not the last one's."""
    pg.eval_on_selector("#status textarea", "el => { el.value = ''; }")


def generate(pg, done: str = "Done") -> str:
    clear_status(pg)
    pg.locator("#generate-btn").click()
    return wait_status(pg, done)


def test_generate_images_with_parameters_and_an_option_change(served, page):
    app, url, root = served
    page.get_by_label("Prompt", exact=True).fill("a red circle")
    set_number(page, "count", 3)
    set_number(page, "seed", 7)
    assert "seed 7" in generate(page)
    first = gallery_pngs(page, url)
    assert len(first) == 3 and first[0].size == (8, 8) and first[0].format == "PNG"
    text = first[0].text["parameters"]
    assert text.startswith("a red circle\n") and "Seed: 7," in text
    assert "Seed: 8," in first[1].text["parameters"]
    assert page.locator("#seed-used input").input_value() == "7"
    first[0].save(root / "restore.png", pnginfo=_info(text))
    if os.environ.get("LANGFREE_SCREENSHOTS"):
        page.screenshot(path=os.path.join(os.environ["LANGFREE_SCREENSHOTS"], "serve-generate.png"))

    set_number(page, "opt-tiny_serve-noise_scale", 3)       # same seed, other option
    generate(page)
    second = gallery_pngs(page, url)
    assert '"noise_scale": 3.0' in second[0].text["parameters"]
    assert first[0].tobytes() != second[0].tobytes()


def test_random_seed_is_shown(page):
    set_number(page, "seed", -1)
    set_number(page, "count", 1)
    generate(page)
    used = int(page.locator("#seed-used input").input_value())
    assert f"seed {used}" in status(page)


def test_errors_are_visible_and_the_server_keeps_serving(served, page):
    _, url, _ = served
    # max_length only binds the browser; a hostile page removes it and the server refuses
    page.eval_on_selector("#prompt textarea", "el => el.removeAttribute('maxlength')")
    page.get_by_label("Prompt", exact=True).fill("x" * 600)
    page.locator("#generate-btn").click()
    toast = page.get_by_test_id("toast-body").filter(has_text="the limit is 500")
    toast.first.wait_for()
    page.evaluate("document.querySelectorAll('[data-testid=toast-close]').forEach(b => b.click())")
    page.get_by_label("Prompt", exact=True).fill("a green square")
    set_number(page, "seed", 2**40)                       # beyond the seed box's maximum
    page.locator("#generate-btn").click()
    page.get_by_test_id("toast-body").filter(has_text="maximum").first.wait_for()
    page.evaluate("document.querySelectorAll('[data-testid=toast-close]').forEach(b => b.click())")
    # a slider clamps what is typed into it to the field's range (the server checks it again:
    # test_serve.py sends 99 through gradio_client and is refused)
    set_number(page, "seed", 1)
    set_number(page, "count", 1)
    set_number(page, "opt-tiny_serve-noise_scale", 9)
    assert generate(page).startswith("Done")
    (png,) = gallery_pngs(page, url)
    assert '"noise_scale": 4.0' in png.text["parameters"]
    set_number(page, "opt-tiny_serve-noise_scale", 1)


def test_cancel_stops_between_images(page):
    set_number(page, "count", 8)
    set_number(page, "opt-tiny_serve-delay", 1.0)   # 8 s in all: time to cancel
    page.get_by_label("Prompt", exact=True).fill("slow")
    clear_status(page)
    page.locator("#generate-btn").click()
    page.wait_for_function(   # any progress line: a loaded browser may skip "1/8"
        "() => /^[1-7]\\/8 images/.test(document.querySelector('#status textarea').value)",
        timeout=TIMEOUT_MS)
    page.locator("#cancel-btn").click()
    text = wait_status(page, "Cancelled after")
    shown = page.locator("#gallery .grid-container img").count()
    assert 1 <= shown < 8 and f"Cancelled after {shown} of 8" in text
    set_number(page, "opt-tiny_serve-delay", 0)


def test_dropping_a_png_restores_its_settings(served, page):
    _, _, root = served
    page.get_by_label("Prompt", exact=True).fill("something else")
    set_number(page, "seed", 99)
    clear_status(page)
    page.locator("#restore input[type=file]").set_input_files(str(root / "restore.png"))
    wait_status(page, "Restored the settings of seed 7")
    assert page.get_by_label("Prompt", exact=True).input_value() == "a red circle"
    assert page.locator("#seed input").input_value() == "7"


def test_runs_view_shows_plots_and_grids(page):
    page.get_by_role("tab", name="Runs").click()
    page.locator("#stats-plot .mark-line path").first.wait_for()     # vega drew the curves
    page.locator("#metrics-plot .mark-line path").first.wait_for()
    assert "Loss/main/loss" in page.locator("#stats-plot").inner_text()
    assert "fid50k_full" in page.locator("#metrics-plot").inner_text()
    grids = page.locator("#grids .grid-container img")
    grids.first.wait_for()
    assert grids.count() == 2
    grids.first.scroll_into_view_if_needed()
    page.wait_for_function("() => document.querySelector('#grids .grid-container img')"
                           ".naturalWidth === 16")
    page.get_by_role("tab", name="Runs").scroll_into_view_if_needed()
    if os.environ.get("LANGFREE_SCREENSHOTS"):
        page.screenshot(path=os.path.join(os.environ["LANGFREE_SCREENSHOTS"], "serve-runs.png"))
    page.get_by_role("tab", name="Generate").click()


def _info(text: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    return info
