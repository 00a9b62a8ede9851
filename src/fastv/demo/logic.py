"""What the demo computes, without any Gradio: one model, a comparison per (image, prompt, settings).

The settings pick any method (`fastv methods`, or a composition a+b) and its budget; FastV is the
default. The full model's answer depends only on the image and the prompt, so it is cached on those
and moving the K / R sliders, the budget or the method reruns the pruned model alone (both prefills
are re-timed side by side, since a timing is only comparable to one taken under the same load). Bad
input raises `FastVError` with a message meant for the page; `Demo.safe_compare` turns any failure into such a message so a
request can never take the server down.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from fastv import run
from fastv.analysis import overlay
from fastv.core.errors import FastVError
from fastv.core.hf.families import resolve
from fastv.demo.comparison import Comparison, FullRun, flops_of
from fastv.demo.settings import Settings
from fastv.demo.uploads import VIDEO_FRAMES, digest, read_image, read_video
from fastv.generate import Answer, answer, context_note, kept_note
from fastv.loading import build_inputs, to_model
from fastv.methods import FastV, Method

__all__ = ["Demo", "time_prefills"]

log = logging.getLogger(__name__)
CACHE_SIZE = 32


def time_prefills(
    model: torch.nn.Module, inputs: dict[str, Any], pruner: Method, repeats: int = 5
) -> tuple[float, float]:
    """Seconds of one prefill forward (vision tower included), full and pruned: best of `repeats`.

    The runs alternate, full then pruned, so both see the same load on a shared CPU; the best of
    several runs, because single timings of a small model there are noisy.
    """
    full, pruned = float("inf"), float("inf")
    for _ in range(repeats):
        full = min(full, run.prefill(model, inputs, None, use_cache=True).seconds)
        pruned = min(pruned, run.prefill(model, inputs, pruner, use_cache=True).seconds)
    return full, pruned


class Demo:
    """One loaded model and the caches of its results; `compare` is what a request runs."""

    def __init__(
        self,
        model: torch.nn.Module,
        processor: Any,
        name: str = "model",
        max_new_tokens: int = 12,
        timing_repeats: int = 5,
    ):
        self.model, self.processor, self.name = model, processor, name
        self.max_new_tokens, self.timing_repeats = max_new_tokens, timing_repeats
        self.adapter = resolve(model)
        self.calls = {"full": 0, "fastv": 0}  # model runs, for tests of the caching
        self._full: OrderedDict[tuple, FullRun] = OrderedDict()
        self._fastv: OrderedDict[tuple, Answer] = OrderedDict()
        self._lock = threading.Lock()  # FastV hooks one model at a time
        self._dir = Path(tempfile.mkdtemp(prefix="fastv-demo-"))

    @property
    def num_layers(self) -> int:
        return self.adapter.num_layers

    @property
    def video_capable(self) -> bool:
        return self.adapter.family.video

    # ---- public -------------------------------------------------------------------------------
    def warmup(self) -> None:
        """One full and one FastV prefill on a blank image: the first visitor then sees steady timings,
        not one-off start-up costs (the first pruned forward is ~1 s slower on CPU)."""
        blank = Image.new("RGB", (64, 64), (128, 128, 128))
        with self._lock:
            inputs = to_model(build_inputs(self.processor, [blank], "warm up"), self.model)
            k = 1 if self.num_layers > 1 else 0
            time_prefills(self.model, inputs, FastV(k=k, scorer="last_token" if k else "random"), repeats=1)

    def compare(
        self, image: Any = None, prompt: str = "", settings: Settings = Settings(), video: Any = None
    ) -> Comparison:
        """Full model vs the settings' method on one image (or video) and prompt. Raises FastVError on bad input."""
        pruner = settings.method_for()
        prompt = (prompt or "").strip()
        if not prompt:
            raise FastVError("type a prompt (a question about the image)")
        images = [read_image(image)] if image is not None else []
        frames = read_video(video) if video is not None else None
        if frames is not None and not self.video_capable:
            raise FastVError(f"{self.adapter.family.name} models take images, not videos: upload an image")
        if not images and frames is None:
            raise FastVError("upload an image first: FastV prunes the model's visual tokens")
        with self._lock:
            pruner.apply(self.model).remove()  # the method's own checks against this model, before any run
            inputs = to_model(build_inputs(self.processor, images, prompt, video=frames), self.model)
            key = (digest(images + (frames or [])), prompt)
            cached = key in self._full
            full = self._full_run(key, inputs)
            fast = self._fastv_run(key, inputs, pruner, settings)
            full_s, fast_s = time_prefills(self.model, inputs, pruner, self.timing_repeats)
            masked = self._masked(inputs, fast, images, frames)
        stats = fast.stats
        notes = [n for n in (full.note, context_note(self.model, inputs, self.max_new_tokens), kept_note(stats)) if n]
        return Comparison(
            full_answer=full.answer.text,
            fastv_answer=fast.text,
            kept=sum(stats.num_kept),
            total=sum(stats.num_visual),
            flops=flops_of(self.model.config, stats),
            prefill_full_s=full_s,
            prefill_fastv_s=fast_s,
            masked=masked,
            allocation=full.allocation,
            full_cached=cached,
            timing_repeats=self.timing_repeats,
            notes=notes,
            method=settings.label(),
        )

    def safe_compare(self, *args: Any, **kwargs: Any) -> tuple[Comparison | None, str]:
        """`compare`, with every failure turned into a message for the page (never a traceback)."""
        try:
            return self.compare(*args, **kwargs), ""
        except FastVError as err:
            return None, str(err)
        except Exception as err:  # keep serving; the log keeps the traceback for the operator
            log.exception("demo request failed")
            return None, f"internal error ({type(err).__name__}): {err}"

    # ---- steps --------------------------------------------------------------------------------
    def _full_run(self, key: tuple, inputs: dict[str, Any]) -> FullRun:
        if key in self._full:
            self._full.move_to_end(key)
            return self._full[key]
        result = answer(self.model, self.processor, inputs, None, self.max_new_tokens)
        self.calls["full"] += 1
        chart, note = self._allocation(inputs, key)
        run = FullRun(result, chart, note)
        _put(self._full, key, run)
        return run

    def _fastv_run(self, key: tuple, inputs: dict[str, Any], pruner: Method, s: Settings) -> Answer:
        fkey = (key, s)
        if fkey in self._fastv:
            self._fastv.move_to_end(fkey)
            return self._fastv[fkey]
        result = answer(self.model, self.processor, inputs, pruner, self.max_new_tokens)
        self.calls["fastv"] += 1
        if result.stats is None:
            raise FastVError(f"{pruner.name} recorded no statistics: the prompt held no visual tokens")
        _put(self._fastv, fkey, result)
        return result

    def _allocation(self, inputs: dict[str, Any], key: tuple) -> tuple[Path | None, str]:
        """The per-layer attention allocation chart (fastv.analysis.attention + fastv.analysis.plots) of the full model."""
        if self.num_layers < 2:
            return None, "the attention chart needs a language model with at least 2 layers"
        from fastv.analysis.attention import analyze
        from fastv.analysis.plots import plot_allocation

        name = hashlib.sha1(repr(key).encode()).hexdigest()[:16]
        try:
            result = analyze(self.model, inputs, k=1, ratio=0.5)
            return plot_allocation(result, self._dir / f"allocation-{name}.png"), ""
        except Exception as err:  # the chart is an extra: the answers still count
            log.exception("attention analysis failed")
            return None, f"(no attention chart: {err})"

    def _masked(
        self, inputs: dict[str, Any], fast: Answer, images: list[Image.Image], frames: list[Image.Image] | None
    ) -> Image.Image:
        from fastv.analysis.layout import visual_layout

        panels = visual_layout(self.model, inputs["input_ids"][:1].cpu(), inputs)[0]
        kept = fast.stats.kept_positions[0].tolist()
        pictures = self._pictures(inputs, panels, images, frames or [])
        tiles = []
        for panel, picture in list(zip(panels, pictures, strict=True))[:VIDEO_FRAMES]:
            grid = overlay.kept_grid(panel.positions, panel.shape, kept)
            tiles.append(overlay.grey_out(picture, grid, display=384 if len(panels) == 1 else 192))
        if not tiles:
            raise FastVError("the prompt held no visual tokens to show")
        return overlay.side_by_side(tiles)

    def _pictures(self, inputs: dict[str, Any], panels: list, images: list[Image.Image], frames: list[Image.Image]):
        """Per panel, the picture under its token grid (`analysis.panel_pictures`: the processed pixels
        for LLaVA, else the upload), resized to the grid's aspect; grey where there is none."""
        from fastv.analysis.layout import panel_picture, panel_pictures

        sample = [*images, frames] if frames else images
        pictures = panel_pictures(self.model, inputs, [panels], [sample], self.processor)[0]
        out = []
        for p in panels:
            rows, cols = p.shape
            size = (max(cols, 1) * 16, max(rows, 1) * 16)
            array = panel_picture(pictures, panels, p)
            if array is None:
                out.append(Image.new("RGB", size, (200, 200, 200)))
                continue
            picture = Image.fromarray(array)
            if abs(picture.width * rows - picture.height * cols) > max(rows, cols):  # not the grid's aspect
                picture = picture.resize(size)
            out.append(picture)
        return out


def _put(cache: OrderedDict, key: Any, value: Any) -> None:
    cache[key] = value
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
