"""What the demo computes, without any Gradio: one model, a comparison per (image, prompt, settings).

The settings pick any method (`fastv methods`, or a composition a+b) and its budget; FastV is the
default. The full model's answer depends only on the image and the prompt, so it is cached on those
and moving the K / R sliders, the budget or the method reruns the pruned model alone (both prefills
are re-timed side by side, since a timing is only comparable to one taken under the same load). Bad input raises `FastVError`
with a message meant for the page; `Demo.safe_compare` turns any failure into such a message so a
request can never take the server down.
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageSequence, UnidentifiedImageError

from fastv import run
from fastv.analysis import overlay
from fastv.core.cost import TextShape, format_flops
from fastv.core.errors import FastVError
from fastv.core.hf.families import resolve
from fastv.flops.llm import theory_layer_flops
from fastv.flops.vision import vision_flops
from fastv.generate import Answer, answer, context_note, kept_note
from fastv.loading import build_inputs, to_model
from fastv.methods import FastV, Method

log = logging.getLogger(__name__)
VIDEO_FRAMES = 8
CACHE_SIZE = 32


@dataclass(frozen=True)
class Settings:
    """The page's knobs: the method, K (its layer, where it has one), R (share dropped) or a budget
    `keep` (visual tokens kept, instead of R), and FastV's scorer."""

    k: int = 2
    ratio: float = 0.5
    scorer: str = "last_token"
    method: str = "fastv"
    keep: int | None = None

    @classmethod
    def parse(cls, k: Any, ratio: Any, scorer: Any, method: Any = "fastv", keep: Any = None) -> Settings:
        """Settings from a request's raw values: K a whole number (2.5 is refused, not truncated),
        R a finite number, keep empty or a whole number, the scorer and method strings; the method
        checks its own settings against the model (`Demo`)."""
        try:
            k_value, r_value = float(k), float(ratio)
        except (TypeError, ValueError) as err:
            raise FastVError(f"K={k!r} and R={ratio!r} must be numbers") from err
        if not math.isfinite(k_value) or k_value != int(k_value):
            raise FastVError(f"K={k}: K is a layer index, give a whole number")
        if not math.isfinite(r_value):
            raise FastVError(f"R={ratio}: give a share between 0 and 1, e.g. 0.5")
        if not isinstance(scorer, str):
            raise FastVError(f"scorer={scorer!r}: choose 'last_token' or 'random'")
        if not isinstance(method, str) or not method.strip():
            raise FastVError(f"method={method!r}: choose one of `fastv methods`, e.g. fastv")
        keep_value = None
        if keep is not None and str(keep).strip() != "":
            try:
                keep_value = float(keep)
            except (TypeError, ValueError) as err:
                raise FastVError(f"keep={keep!r}: give a whole number of visual tokens, or leave it empty") from err
            if not math.isfinite(keep_value) or keep_value != int(keep_value):
                raise FastVError(f"keep={keep}: give a whole number of visual tokens, or leave it empty to use R")
        return cls(int(k_value), r_value, scorer, method.strip(), None if keep_value is None else int(keep_value))

    def label(self) -> str:
        """What the page calls the pruned run: 'fastv k=2 r=0.5', 'pool keep=64'."""
        return run.describe(self.method_for())

    def method_for(self) -> Method:
        """The method these settings describe; it refuses what it cannot do (`fastv.run.method_from_options`)."""
        ratio = None if self.keep is not None else self.ratio
        return run.method_from_options(self.method, k=self.k, ratio=ratio, keep=self.keep, scorer=self.scorer)


@dataclass
class FullRun:
    """The full model on one (image, prompt): cached, since no slider changes it."""

    answer: Answer
    allocation: Path | None  # per-layer attention allocation chart (PNG)
    note: str = ""


@dataclass
class Flops:
    """Prefill FLOPs, full vs pruned: exact for the language model, the paper's formula, the vision side."""

    llm_full: int
    llm_fastv: int
    theory_full: float  # the paper's 4nd^2 + 2n^2d + 2ndm per layer (multiply-accumulates)
    theory_fastv: float
    vision: int | None  # tower + projector: identical with and without FastV

    @staticmethod
    def reduction(full: float, pruned: float) -> float:
        return 1 - pruned / full if full else 0.0


@dataclass
class Comparison:
    """Everything the page shows for one request."""

    full_answer: str
    fastv_answer: str
    kept: int
    total: int
    flops: Flops
    prefill_full_s: float
    prefill_fastv_s: float
    masked: Image.Image  # the processed image, pruned patches greyed out
    allocation: Path | None
    full_cached: bool  # the full model's result came from the cache (only the pruned model ran)
    timing_repeats: int = 5  # prefill times are the best of this many runs
    notes: list[str] = field(default_factory=list)
    method: str = "FastV"  # the pruned run's label (`Settings.label`)

    def flops_markdown(self) -> str:
        """A small table: FLOPs and measured prefill time, full vs the method."""
        f = self.flops
        rows = [
            ("LLM prefill, exact", format_flops(f.llm_full), format_flops(f.llm_fastv), f.llm_full, f.llm_fastv),
            (
                "LLM prefill, paper formula (MACs)",
                _si(f.theory_full),
                _si(f.theory_fastv),
                f.theory_full,
                f.theory_fastv,
            ),
        ]
        if f.vision is not None:
            full, fast = f.vision + f.llm_full, f.vision + f.llm_fastv
            rows.append(("whole prefill incl. vision tower", format_flops(full), format_flops(fast), full, fast))
        rows.append(
            (
                f"measured prefill time (best of {self.timing_repeats})",
                f"{self.prefill_full_s * 1000:.1f} ms",
                f"{self.prefill_fastv_s * 1000:.1f} ms",
                self.prefill_full_s,
                self.prefill_fastv_s,
            )
        )
        lines = [f"| | full model | {self.method} | change |", "|---|---:|---:|---:|"]
        for name, a, b, x, y in rows:
            lines.append(f"| {name} | {a} | {b} | {-Flops.reduction(x, y):+.1%} |")
        return "\n".join(lines)


def _si(value: float) -> str:
    return format_flops(value).replace("FLOPs", "MACs")


# ---- reading uploads ---------------------------------------------------------------------------
def read_image(image: Any) -> Image.Image:
    """An upload (path, PIL image or array) as RGB; an unreadable file becomes a readable error."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image.astype(np.uint8)).convert("RGB")
    path = Path(str(image))
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        reason = "not an image format Pillow can read" if isinstance(err, UnidentifiedImageError) else str(err)
        raise FastVError(f"could not read {path.name!r} as an image ({reason}); upload a PNG or JPEG") from err


def read_video(path: Any, frames: int = VIDEO_FRAMES) -> list[Image.Image]:
    """`frames` evenly spaced frames of a video file (animated GIF with Pillow; other formats via PyAV)."""
    path = Path(str(path))
    try:
        with Image.open(path) as im:
            all_frames = [f.convert("RGB") for f in ImageSequence.Iterator(im)]
    except (UnidentifiedImageError, OSError):
        try:
            import av  # optional: decoding mp4/webm needs it
        except ImportError as err:
            raise FastVError(f"decoding {path.suffix or 'this'} video needs PyAV (`pip install av`)") from err
        try:
            with av.open(str(path)) as container:
                all_frames = [f.to_image().convert("RGB") for f in container.decode(video=0)]
        except Exception as err:  # PyAV raises its own error types
            raise FastVError(f"could not decode {path.name!r} as a video: {err}") from err
    if not all_frames:
        raise FastVError(f"{path.name!r} holds no frames")
    idx = np.linspace(0, len(all_frames) - 1, min(frames, len(all_frames))).round().astype(int)
    return [all_frames[i] for i in idx]


def _digest(images: list[Image.Image]) -> str:
    h = hashlib.sha1()
    for im in images:
        h.update(f"{im.size}{im.mode}".encode())
        h.update(im.tobytes())
    return h.hexdigest()


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


# ---- the demo ----------------------------------------------------------------------------------
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
            key = (_digest(images + (frames or [])), prompt)
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
            flops=self._flops(stats),
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

    def _flops(self, stats: Any) -> Flops:
        config = self.model.config
        shape = TextShape.from_config(config)
        n, layers = stats.prompt_len, shape.num_layers

        def theory(tokens: int) -> float:
            return theory_layer_flops(tokens, shape.hidden, shape.intermediate)

        try:
            v = vision_flops(config, sum(stats.num_visual))
            vision = (v.tower + v.projector) or None
        except Exception:  # an unusual vision config: show the language model only
            vision = None
        return Flops(
            llm_full=stats.flops["full"],  # the engine's exact count of this very prefill
            llm_fastv=stats.flops["pruned"],
            theory_full=layers * theory(n),
            theory_fastv=sum(theory(m) for m in stats.layer_seq_lens),  # per layer, as the method ran
            vision=vision,
        )


def _put(cache: OrderedDict, key: Any, value: Any) -> None:
    cache[key] = value
    while len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
