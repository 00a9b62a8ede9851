"""The demo's page: Gradio layout and wiring only; every computation lives in `fastv.demo.logic`
(and the modules it uses).

Events run with `preprocess=False`: an unreadable upload then reaches `uploads.read_image`, which
answers with a message in the page, instead of failing inside Gradio's own image decoding.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no usage pings

import gradio as gr  # noqa: E402

from fastv.core.errors import FastVError  # noqa: E402  # noqa: E402
from fastv.demo import Comparison, Demo, Settings  # noqa: E402
from fastv.methods import METHODS  # noqa: E402
from fastv.zoo.default_model import EXAMPLES_DIR

# The dropdown: every registered method and two compositions; any other a+b can be typed.
METHOD_CHOICES = [*METHODS, "visionzip+fastv", "divprune+fastv"]

CSS = """
#message:empty { display: none; }
#message .error { color: #b42318; background: #fef3f2; border: 1px solid #fda29b; border-radius: 6px;
                  padding: 8px 12px; }
#message .info { color: #475467; }
#flops table { font-size: 0.85em; width: 100%; }
#flops th, #flops td { padding: 3px 8px; }
#header { margin-bottom: -8px; }
#examples .container { width: 44px; height: 44px; }
#examples img { width: 100%; height: 100%; object-fit: contain; }
#examples td { padding: 4px 8px; }
"""
# System fonts only: the page must render offline (no font CDN).
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def examples(limit: int = 10) -> list[list[str]]:
    """[image path, prompt] pairs from the default model's world (`fastv/zoo/examples/examples.json`)."""
    index = EXAMPLES_DIR / "examples.json"
    if not index.is_file():
        return []
    items = json.loads(index.read_text())["examples"]
    return [[str(EXAMPLES_DIR / e["image"]), e["prompt"]] for e in items[:limit]]


def _upload_path(payload: Any, allowed: list[Path]) -> str | None:
    """The server-side path of an upload payload (Gradio FileData as a dict), only inside `allowed`.

    With preprocess off, Gradio does not vet paths; a client could otherwise name any file.
    """
    if payload is None:
        return None
    if isinstance(payload, dict):
        payload = payload.get("video", payload)  # some Gradio versions nest video payloads
        payload = payload.get("path") if isinstance(payload, dict) else payload
    if not payload:
        return None
    path = Path(str(payload)).resolve()
    if not any(path.is_relative_to(root) for root in allowed):
        raise FastVError("that file is not an upload of this page: upload it again")
    return str(path)


def _message(comparison: Comparison | None, error: str) -> str:
    if error:
        return f'<div class="error"><b>Cannot compare:</b> {_escape(error)}</div>'
    c = comparison
    ran = f"full model: cached, only {c.method} ran" if c.full_cached else f"ran the full model and {c.method}"
    notes = "".join(f" {_escape(n)}" for n in c.notes)
    return f'<div class="info">{ran}.{notes}</div>'


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _picture(caption: str, label: str, elem_id: str):
    """A captioned PNG panel of the result row (what was kept, the attention chart)."""
    with gr.Column(min_width=200):
        gr.Markdown(caption, elem_classes="caption")
        return gr.Image(label=label, show_label=False, format="png", height=290, elem_id=elem_id, buttons=[])


def build(demo: Demo) -> gr.Blocks:
    """The page for one loaded model; call `serve` (or `.queue().launch`) to start it."""
    n = demo.num_layers
    allowed = [Path(gr.utils.get_upload_folder()).resolve(), EXAMPLES_DIR.resolve()]

    def run(image, video, prompt, k, ratio, scorer, method="fastv", keep=None):
        try:
            image_path = _upload_path(image, allowed)
            video_path = _upload_path(video, allowed)
            settings = Settings.parse(k, ratio, scorer, method, keep)
        except FastVError as err:
            return _message(None, str(err)), "", "", "", "", None, None
        c, error = demo.safe_compare(image_path, prompt, settings, video=video_path)
        if c is None:
            return _message(None, error), "", "", "", "", None, None
        kept = f"{c.kept} / {c.total} ({c.kept / max(c.total, 1):.0%})"
        return (
            _message(c, ""),
            c.full_answer or "(empty answer)",
            c.fastv_answer or "(empty answer)",
            kept,
            c.flops_markdown(),
            c.masked,
            str(c.allocation) if c.allocation else None,
        )

    family = demo.adapter.family.name
    with gr.Blocks(title="FastV demo") as page:
        gr.Markdown(
            f"### FastV vs the full model &nbsp;<small>model **{demo.name}** ({family}, {n} layers): FastV ranks "
            "visual tokens by the last prompt token's attention at layer K-1 and drops a share R of them from "
            "layer K on. Pick another method to compare it instead (K and the scorer apply where it has them; "
            "a budget `keep` replaces R).</small>",
            elem_id="header",
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=320):
                image = gr.Image(type="filepath", label="Image", sources=["upload"], height=180, elem_id="image")
                video = gr.Video(label="Video", sources=["upload"], height=180, visible=demo.video_capable)
                prompt = gr.Textbox(label="Prompt", placeholder="e.g. color a3", elem_id="prompt")
                with gr.Row():
                    k = gr.Slider(
                        0, n - 1, value=min(2, n - 1), step=1, label="K: prune from layer", buttons=[], elem_id="k"
                    )
                    ratio = gr.Slider(
                        0.0, 0.95, value=0.5, step=0.05, label="R: share dropped", buttons=[], elem_id="ratio"
                    )
                scorer = gr.Radio(["last_token", "random"], value="last_token", label="Scorer", elem_id="scorer")
                with gr.Row():
                    method = gr.Dropdown(
                        METHOD_CHOICES, value="fastv", label="Method", allow_custom_value=True, elem_id="method"
                    )
                    # A textbox, not gr.Number: an empty Number reaches the handler as 0 ("keep nothing").
                    keep = gr.Textbox(value="", label="keep: visual tokens (empty: use R)", elem_id="keep")
                button = gr.Button("Compare", variant="primary", elem_id="compare")
                sample = None
                if items := examples():
                    sample = gr.Examples(
                        items,
                        inputs=[image, prompt],
                        label="Examples: one click runs",
                        examples_per_page=5,
                        elem_id="examples",
                    )
            with gr.Column(scale=3, min_width=480):
                message = gr.HTML(elem_id="message")
                with gr.Row():
                    full = gr.Textbox(label="Full model", elem_id="full-answer", scale=3)
                    fast = gr.Textbox(label="Pruned (the method)", elem_id="fastv-answer", scale=3)
                    kept = gr.Textbox(label="Visual tokens kept", elem_id="kept", scale=2)
                with gr.Row():
                    masked = _picture("**What the method kept** (pruned patches greyed)", "Kept patches", "masked")
                    chart = _picture("**Attention per layer** (full model)", "Attention per layer", "chart")
                flops = gr.Markdown(elem_id="flops")

        inputs = [image, video, prompt, k, ratio, scorer, method, keep]
        outputs = [message, full, fast, kept, flops, masked, chart]
        options = {"preprocess": False, "trigger_mode": "always_last", "api_visibility": "undocumented"}
        button.click(run, inputs, outputs, preprocess=False, api_name="compare", trigger_mode="always_last")
        prompt.submit(run, inputs, outputs, **options)
        for slider in (k, ratio):  # only the method reruns (the full model's answer is cached); a drag
            slider.change(run, inputs, outputs, **options)  # queues one run: always_last drops the rest
        for choice in (scorer, method, keep):
            choice.input(run, inputs, outputs, **options)
        if sample is not None and sample.load_input_event is not None:
            sample.load_input_event.then(run, inputs, outputs, **options)
    return page


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # Gradio's own loop turns this into a clean shutdown


def serve(demo: Demo, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> gr.Blocks:
    """Queue requests (two tabs both get answers, one model run at a time) and start the server.

    `block=False` returns at once (tests); call `.close()` on the returned page to stop it.
    """
    page = build(demo).queue(default_concurrency_limit=1, max_size=64)
    page.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        show_error=False,
        quiet=not block,
        ssr_mode=False,
        theme=THEME,
        css=CSS,
        footer_links=["api"],
    )
    if block:
        serve_forever(page)
    return page


def serve_forever(page: gr.Blocks) -> None:
    """Serve until Ctrl+C or `kill PID` (SIGTERM stops it like Ctrl+C does)."""
    signal.signal(signal.SIGTERM, _interrupt)
    page.block_thread()
