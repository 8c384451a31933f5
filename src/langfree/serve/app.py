"""The gradio app of ``langfree serve``: a Generate view and a Runs view over any family.

The option controls are built from each served family's ``SampleOptions`` fields (see
``langfree.serve.models``); there is no per-family code. Every handler re-checks its inputs on
the server (``check_request``) and returns pixels, never paths, so the only files the server
hands out are the PNGs gradio writes into its own cache for this app's outputs.
"""

# No ``from __future__ import annotations``: gradio reads the handlers' annotations
# (gr.Request) at run time.
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from langfree.serve.models import ModelCache, ModelEntry, OptionSpec, Traits, discover, family_traits
from langfree.serve.safety import (
    MAX_SEED,
    RANDOM_SEED,
    Limits,
    RequestError,
    check_count,
    check_text,
    launch_kwargs,
    quiet_environment,
    resolve_seed,
    seeds_from,
)
from langfree.serve.worker import Admission, Request, Result, Worker

MAX_REFERENCE_SIDE = 4096
IMAGE_BUTTONS = ["download", "fullscreen"]  # no "share": it uploads to a hub
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]  # no web-font request
MONO_FONTS = ["ui-monospace", "monospace"]


@dataclass(frozen=True)
class ServeSettings:
    paths: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int | None = None
    auth: tuple[str, str] | None = None
    concurrency: int = 1
    queue: int = 32
    limits: Limits = field(default_factory=Limits)
    encoder: str | None = "auto"
    chunk: int = 4          # images per sampling call; a cancel takes effect between calls


class ServeApp:
    """State of one server: the served models, the worker, the queue and the cancel flags."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.entries, self.runs = discover(list(settings.paths))
        self.by_label = {e.label: e for e in self.entries}
        self.traits: dict[str, Traits] = {}
        for e in self.entries:
            if e.family not in self.traits:
                self.traits[e.family] = family_traits(e.family)
        # (family, option) of every control, in the order gradio passes their values
        self.controls: list[tuple[str, OptionSpec]] = [
            (name, spec) for name, t in self.traits.items() for spec in t.options]
        self.cache = ModelCache(settings.encoder)
        self.worker = Worker(self.cache, self.traits, settings.chunk)
        self.admission = Admission(settings.concurrency, settings.queue)
        self._sessions: dict[str, set] = defaultdict(set)
        self._lock = threading.Lock()
        self.run_by_label = {_run_label(r, self.runs): r for r in self.runs}

    # ------------------------------------------------------------------ request checking
    def check_request(self, model: str, prompt: str | None, negative: str | None, seed: Any,
                      count: Any, reference: np.ndarray | None, values: tuple | list) -> Request:
        """Everything the browser sent, checked as if it came from anyone (it may)."""
        from langfree.families.registry import get_family
        from langfree.sampling.conditions import parse_sample_options

        entry = self.by_label.get(model)
        if entry is None:
            raise RequestError(f"unknown model {model!r}; choose one of the list")
        limits = self.settings.limits
        traits = self.traits[entry.family]
        prompt = check_text(prompt, "the prompt", limits)
        negative = check_text(negative, "the negative prompt", limits)
        if negative and not traits.uses_negative_prompt:
            negative = ""  # the family's guidance does not read one: do not record it
        n = check_count(count, limits)
        base = resolve_seed(seed)
        if reference is not None:
            reference = _check_reference(reference, traits, entry)
        chosen = {spec.name: v for (fam, spec), v in zip(self.controls, values)
                  if fam == entry.family}
        options = parse_sample_options(get_family(entry.family), chosen)  # ranges, choices
        return Request(entry, prompt, negative, seeds_from(base, n), options, reference)

    # ------------------------------------------------------------------ handlers
    def generate(self, model, prompt, negative, seed, count, reference, *values,
                 request=None, progress=None):
        """Generator: (gallery, seed used, status) after each batch of images."""
        import gradio as gr

        try:
            req = self.check_request(model, prompt, negative, seed, count, reference, values)
            ticket = self.admission.join()
        except ValueError as exc:   # RequestError, Busy, ConfigError
            raise gr.Error(str(exc), print_exception=False) from None
        session = getattr(request, "session_hash", None) or ""
        with self._lock:
            self._sessions[session].add(ticket)
        base, n, shown = req.seeds[0], len(req.seeds), []
        try:
            while (place := self.admission.wait_turn(ticket, 0.5)) is not None:
                if ticket.cancelled.is_set():
                    yield [], base, "Cancelled while waiting in the queue."
                    return
                yield [], base, f"Waiting in the queue: place {place}."
            yield [], base, f"Generating {n} image(s) from seed {base}..."
            for results in self.worker.run(req, ticket.cancelled):
                shown += [gallery_item(r) for r in results]
                if progress is not None:
                    progress((len(shown), n), desc="images", unit="images")
                yield shown, base, f"{len(shown)}/{n} images (seed {base})"
            done = (f"Cancelled after {len(shown)} of {n} images." if len(shown) < n
                    else f"Done: {n} image(s), seed {base}.")
            yield shown, base, done
        except ValueError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        finally:
            self.admission.leave(ticket)
            with self._lock:
                self._sessions[session].discard(ticket)

    def cancel(self, request=None) -> str:
        session = getattr(request, "session_hash", None) or ""
        with self._lock:
            tickets = list(self._sessions.get(session, ()))
        for t in tickets:
            t.cancelled.set()
        return "Cancelling after the current batch..." if tickets else "Nothing to cancel."

    def model_view(self, model: str) -> list:
        """Visibility of the negative prompt, the reference image and each family's options."""
        import gradio as gr

        entry = self.by_label.get(model) or self.entries[0]
        t = self.traits[entry.family]
        variation = t.supports_image_variation and entry.has_encoder
        return ([gr.update(visible=t.uses_negative_prompt), gr.update(visible=variation)]
                + [gr.update(visible=name == entry.family) for name in self.traits]
                + [f"**{entry.family}** snapshot `{entry.label}`"])

    def restore(self, path: str | None) -> list:
        """A dropped langfree PNG -> its model, prompt, negative prompt, seed and options."""
        import gradio as gr

        from langfree.families.registry import get_family
        from langfree.sampling.conditions import options_dict, parse_sample_options
        from langfree.sampling.generate import read_parameters

        keep = [gr.skip()] * (4 + len(self.controls))
        if not path:
            return keep + [gr.skip()]
        try:
            params = read_parameters(path)
            if params.family not in self.traits:
                raise RequestError(f"that PNG is from a {params.family} model; this server "
                                   f"serves {', '.join(self.traits)}")
            options = options_dict(parse_sample_options(get_family(params.family), params.options))
        except ValueError as exc:
            return keep + [f"Cannot restore settings: {exc}"]
        match = [e for e in self.entries if str(e.path) == params.snapshot]
        same = [e for e in self.entries if e.family == params.family]
        entry = (match or same)[0]
        note = "" if match else " (its snapshot is not served here; using a model of its family)"
        updates = [entry.label, params.prompt or "", params.negative_prompt or "", params.seed]
        updates += [options.get(spec.name, spec.default) if fam == params.family else gr.skip()
                    for fam, spec in self.controls]
        return updates + [f"Restored the settings of seed {params.seed}{note}."]

    def run_view(self, run: str | None, series: list[str] | None):
        import gradio as gr

        from langfree.serve.runs import default_series, latest_grids, metrics_frame, stats_frame, stats_series

        path = self.run_by_label.get(run or "")
        if path is None:
            return gr.update(choices=[], value=[]), stats_frame(None, []), metrics_frame(None), []
        keys = stats_series(path)
        chosen = [s for s in series or [] if s in keys] or default_series(keys)
        return (gr.update(choices=keys, value=chosen), stats_frame(path, chosen),
                metrics_frame(path), latest_grids(path))

    # ------------------------------------------------------------------ layout
    def build(self):
        quiet_environment()
        import gradio as gr

        limits = self.settings.limits
        first = self.entries[0]
        with gr.Blocks(title="langfree", analytics_enabled=False) as demo:
            gr.Markdown("# langfree")
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=2):
                        model = gr.Dropdown([e.label for e in self.entries], value=first.label,
                                            label="Model", elem_id="model")
                        model_info = gr.Markdown()
                        prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt",
                                            max_length=limits.max_prompt_chars)
                        negative = gr.Textbox(label="Negative prompt", elem_id="negative",
                                              max_length=limits.max_prompt_chars, visible=False)
                        with gr.Row():
                            seed = gr.Number(value=RANDOM_SEED, label="Seed (-1 = random)",
                                             precision=0, minimum=RANDOM_SEED, maximum=MAX_SEED,
                                             elem_id="seed")
                            count = gr.Slider(1, limits.max_batch, value=min(4, limits.max_batch),
                                              step=1, label="Number of images", elem_id="count")
                        groups, option_inputs = [], []
                        for name, t in self.traits.items():
                            with gr.Group(visible=name == first.family) as group:
                                for spec in t.options:
                                    option_inputs.append(option_control(spec, name))
                            groups.append(group)
                        reference = gr.Image(label="Reference image (image variation: replaces the prompt)",
                                             type="numpy", image_mode="RGB", sources=["upload"],
                                             buttons=[], visible=False, elem_id="reference")
                        with gr.Row():
                            run_btn = gr.Button("Generate", variant="primary", elem_id="generate-btn")
                            cancel_btn = gr.Button("Cancel", variant="stop", elem_id="cancel-btn")
                        restore = gr.Image(label="Drop a langfree PNG to restore its settings",
                                           type="filepath", image_mode=None, sources=["upload"],
                                           buttons=[], height=160, elem_id="restore")
                    with gr.Column(scale=3):
                        gallery = gr.Gallery(label="Images", format="png", columns=4,
                                             buttons=IMAGE_BUTTONS, elem_id="gallery")
                        seed_used = gr.Number(None, label="Seed used", precision=0, interactive=False,
                                              elem_id="seed-used")
                        status = gr.Textbox(label="Status", interactive=False, elem_id="status")
            with gr.Tab("Runs", id="runs"):
                labels = list(self.run_by_label)
                run = gr.Dropdown(labels, value=labels[0] if labels else None, label="Run",
                                  elem_id="run")
                series = gr.Dropdown([], multiselect=True, label="Curves (stats.jsonl)",
                                     elem_id="series")
                refresh = gr.Button("Refresh", elem_id="refresh")
                stats_plot = gr.LinePlot(x="kimg", y="value", color="series", label="Training",
                                         elem_id="stats-plot", buttons=["fullscreen"])
                metrics_plot = gr.LinePlot(x="kimg", y="value", color="metric", label="Metrics",
                                           elem_id="metrics-plot", buttons=["fullscreen"])
                grids = gr.Gallery(label="Latest preview grids", format="png", columns=4,
                                   buttons=IMAGE_BUTTONS, elem_id="grids")

            view_outputs = [negative, reference, *groups, model_info]
            model.change(self.model_view, model, view_outputs, queue=False,
                         api_visibility="private")
            demo.load(self.model_view, model, view_outputs, queue=False, api_visibility="private")
            gen_inputs = [model, prompt, negative, seed, count, reference, *option_inputs]
            limit = self.admission.concurrency + self.admission.queue
            run_btn.click(_with_request(self.generate, len(gen_inputs)), gen_inputs, [gallery, seed_used, status],
                          api_name="generate", concurrency_limit=limit + REFUSE_SLOTS,
                          concurrency_id="generate")
            prompt.submit(_with_request(self.generate, len(gen_inputs)), gen_inputs, [gallery, seed_used, status],
                          api_visibility="private", concurrency_limit=limit + REFUSE_SLOTS,
                          concurrency_id="generate")
            cancel_btn.click(_cancel(self), None, status, queue=False, api_name="cancel")
            restore.upload(self.restore, restore,
                           [model, prompt, negative, seed, *option_inputs, status],
                           api_name="restore")
            run_outputs = [series, stats_plot, metrics_plot, grids]
            for trigger in (run.change, refresh.click, demo.load):
                trigger(self.run_view, [run, series], run_outputs, api_visibility="private")
        demo.queue(default_concurrency_limit=1, max_size=4 * (limit + REFUSE_SLOTS))
        return demo

    def launch(self, block: bool = True):
        """Start the server (``block=False``: return once it listens; close with .close())."""
        import gradio as gr

        demo = self.build()
        s = self.settings
        limit = s.concurrency + s.queue + REFUSE_SLOTS
        theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
        demo.launch(prevent_thread_lock=True, theme=theme,
                    **launch_kwargs(s.host, s.port, s.auth, s.limits, threads=limit + 8,
                                  blocked=[e.path for e in self.entries] + self.runs))
        if block:
            print(f"langfree serve: {len(self.entries)} model(s) at {demo.local_url} "
                  "(Ctrl+C to stop)", flush=True)
            demo.block_thread()
        return demo


# Extra worker slots of the generate event beyond the admitted ones: a request that finds the
# queue full needs a slot only to be told so, which takes milliseconds.
REFUSE_SLOTS = 8


def option_control(spec: OptionSpec, family: str):
    """A gradio input for one SampleOptions field (ranges also enforced by gradio itself)."""
    import gradio as gr

    label, info = f"{spec.name}", spec.help or None
    elem_id = f"opt-{family}-{spec.name}"
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(spec.default), label=label, info=info, elem_id=elem_id)
    if spec.choices is not None:
        return gr.Dropdown(list(spec.choices), value=spec.default, label=label, info=info,
                           elem_id=elem_id)
    if spec.kind in ("int", "float"):
        if spec.minimum is not None and spec.maximum is not None:
            step = 1 if spec.kind == "int" else _float_step(spec.minimum, spec.maximum)
            return gr.Slider(spec.minimum, spec.maximum, value=spec.default, step=step,
                             label=label, info=info, elem_id=elem_id)
        return gr.Number(value=spec.default, label=label, info=info, minimum=spec.minimum,
                         maximum=spec.maximum, precision=0 if spec.kind == "int" else None,
                         elem_id=elem_id)
    return gr.Textbox(value=str(spec.default), label=label, info=info, elem_id=elem_id)


def _float_step(lo: float, hi: float) -> float:
    import math

    span = max(hi - lo, 1e-9)
    return 10 ** math.floor(math.log10(span / 100))  # about 100..1000 positions


def gallery_item(result: Result):
    """A PIL image carrying the ``parameters`` text, which gradio writes into the PNG it serves."""
    from PIL import Image

    from langfree.sampling.generate import PARAMETERS_KEY

    img = Image.fromarray(result.pixels)
    img.info[PARAMETERS_KEY] = result.parameters.text()
    return img, f"seed {result.parameters.seed}"


def _check_reference(image: np.ndarray, traits: Traits, entry: ModelEntry) -> np.ndarray:
    if not (traits.supports_image_variation and entry.has_encoder):
        raise RequestError(f"the {entry.family} model {entry.label} does not support image "
                           "variation; remove the reference image")
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] < 3 or max(image.shape[:2]) > MAX_REFERENCE_SIDE:
        raise RequestError(f"reference image of shape {image.shape}: expected an RGB image at "
                           f"most {MAX_REFERENCE_SIDE} pixels on a side")
    return image[..., :3].astype(np.uint8)


def _run_label(run: Path, runs: list[Path]) -> str:
    names = [r.name for r in runs]
    return run.name if names.count(run.name) == 1 else str(run)


def _with_request(fn, n_inputs: int):
    """``ServeApp.generate`` as gradio wants it: ``n_inputs`` positional inputs, then a
    gr.Request (found by annotation) and a gr.Progress (found by default value). Gradio reads
    only positional parameters, hence the explicit signature."""
    import inspect

    import gradio as gr

    def generate(*args):
        *inputs, request, progress = args
        yield from fn(*inputs, request=request, progress=progress)

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(f"input_{i}", kind) for i in range(n_inputs)]
    params += [inspect.Parameter("request", kind, annotation=gr.Request),
               inspect.Parameter("progress", kind, default=gr.Progress())]
    generate.__signature__ = inspect.Signature(params)
    generate.__annotations__ = {"request": gr.Request}
    return generate


def _cancel(app: ServeApp):
    import gradio as gr

    def cancel(request: gr.Request):
        return app.cancel(request)

    return cancel


def serve(settings: ServeSettings, block: bool = True):
    """Build and start the server of ``settings``; returns (ServeApp, gradio Blocks)."""
    quiet_environment()
    app = ServeApp(settings)
    return app, app.launch(block=block)


__all__ = ["ServeApp", "ServeSettings", "serve"]
