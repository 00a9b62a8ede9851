"""Prefill/decode benchmark of FastV (or any method) against the unpatched model, measured in one process.

The model is a local checkpoint, or a random-weight model with a named real shape (full width,
depth truncated so a CPU can hold and run it, with a tiny vision tower that still emits the real
number of visual tokens). Each round runs every (K, R) setting once, in an order rotated from round
to round, and every pruned run sits between two unpatched runs (full, s1, full, s2, ..., full): a
pruned run's time is read as a share of the mean of its two neighbours, which cancels the drift of a
shared machine (block-wise runs scattered by +-10% on a 2-core CPU). Warm-up calls come first;
medians are reported, wall clock beside the process's CPU time.

What is compared per setting: measured prefill speed-up vs the speed-up the exact FLOPs count
predicts for the model actually run, decode tokens/s, peak memory, and KV-cache bytes vs prediction.

Settings are FastV's (K, R) grid by default, or, with `methods`, every method (compositions
included) at every budget (`keeps`, else `ratios`): the same measurement for all of them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastv import flops as F
from fastv import run
from fastv.core.errors import FastVError
from fastv.core.hf import compat
from fastv.flops.shapes import KNOWN_SHAPES
from fastv.methods import FastV, Method

TEXT_ID_RANGE = (100, 1000)  # plain word ids in every supported vocabulary (no special tokens)


@dataclass
class BenchConfig:
    """One benchmark run. `model` is a known shape name (random weights) or a checkpoint folder."""

    model: str = "llava-1.5-7b"
    layers: int | None = 4  # truncate the language model to this many layers (None: keep all)
    ks: tuple[int, ...] = (1, 2, 3)
    ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    overhead_k: int = 2  # FastV at ratio 0 with this K measures the pure overhead
    n_text: int = 40
    frames: int | None = None  # a video of this many frames (video models)
    vision_layers: int = 1  # tiny LLaVA towers; 2 lets VisionZip read attention at vision_feature_layer=-2
    repeats: int = 5
    warmup: int = 1
    new_tokens: int = 3
    dtype: str = "bfloat16"
    threads: int | None = 1  # one thread: stable timings on a CPU shared with other jobs
    seed: int = 0
    methods: tuple[str, ...] = ()  # any methods instead of FastV's (K, R) grid, e.g. ("fastv", "pdrop")
    keeps: tuple[int, ...] = ()  # their budgets in visual tokens kept (else `ratios`)
    method_k: int | None = None  # the layer of the methods that have one (None: each method's default)

    def settings(self) -> list[tuple]:
        """(k, ratio) per FastV setting, the R=0 overhead first; or (method, "keep"|"ratio", value)."""
        if self.methods:
            budgets = [("keep", n) for n in self.keeps] or [("ratio", r) for r in self.ratios]
            return [(m, kind, value) for m in self.methods for kind, value in budgets]
        grid = [(k, r) for k in self.ks for r in self.ratios]
        return [(self.overhead_k, 0.0)] + [s for s in grid if s != (self.overhead_k, 0.0)]

    def method(self, setting: tuple) -> Method:
        """The method one setting runs (`fastv.run.method_from_options`: it checks its own settings)."""
        if isinstance(setting[0], str):
            name, kind, value = setting
            return run.method_from_options(name, k=self.method_k, **{kind: value})
        k, ratio = setting
        return FastV(k=k, ratio=ratio)


@dataclass
class Timing:
    """Per-call measurements of one setting over the repeats."""

    prefill_s: list[float] = field(default_factory=list)
    prefill_cpu_s: list[float] = field(default_factory=list)
    decode_tok_s: list[float] = field(default_factory=list)
    peak_mem_bytes: list[int] = field(default_factory=list)
    kv_bytes: int = 0
    layer_seq_lens: list[int] = field(default_factory=list)
    kept: int | None = None

    def add(self, other: CallResult) -> None:
        self.prefill_s.append(other.prefill_s)
        self.prefill_cpu_s.append(other.prefill_cpu_s)
        self.decode_tok_s.append(other.decode_tok_s)
        self.peak_mem_bytes.append(other.peak_mem_bytes)
        self.kv_bytes = other.kv_bytes
        if other.layer_seq_lens:
            self.layer_seq_lens = other.layer_seq_lens
            self.kept = other.kept


@dataclass
class CallResult:
    prefill_s: float
    prefill_cpu_s: float
    decode_tok_s: float
    peak_mem_bytes: int
    kv_bytes: int
    layer_seq_lens: list[int]
    kept: int | None


# --------------------------------------------------------------------------- building the model


def _tiny_vision(model_type: str, frames: int | None) -> dict[str, Any]:
    """A one-layer vision tower giving the real visual-token count (576 per image, 256 per frame)."""
    if model_type in ("llava", "llava_next"):
        return dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                    image_size=48, patch_size=2)  # fmt: skip
    if model_type == "video_llava":
        return dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
                    image_size=32, patch_size=2)  # fmt: skip
    if model_type == "qwen2_vl":
        return dict(depth=1, embed_dim=64, num_heads=2, mlp_ratio=2, patch_size=14, spatial_merge_size=2)
    if model_type == "qwen2_5_vl":
        return dict(depth=1, hidden_size=64, intermediate_size=128, num_heads=2, patch_size=14,
                    spatial_merge_size=2, window_size=112, fullatt_block_indexes=[0])  # fmt: skip
    raise FastVError(f"no benchmark inputs for model_type {model_type!r}")


def build_model(cfg: BenchConfig) -> tuple[torch.nn.Module, str]:
    """The model to time and a one-line description of what it is."""
    dtype = getattr(torch, cfg.dtype)
    name = cfg.model.lower()
    if name in KNOWN_SHAPES:
        from transformers import AutoModelForImageTextToText

        from fastv.flops.shapes import build_config

        shape = KNOWN_SHAPES[name]
        text = dict(shape.text)
        full_layers = text["num_hidden_layers"]
        if cfg.layers:
            text["num_hidden_layers"] = min(cfg.layers, full_layers)
        if shape.model_type.startswith("qwen"):
            head_dim = text["hidden_size"] // text["num_attention_heads"]
            text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": _mrope(head_dim)}
        vision = {**_tiny_vision(shape.model_type, cfg.frames), **_qwen_out(shape)}
        if shape.model_type in ("llava", "llava_next", "video_llava"):
            vision["num_hidden_layers"] = cfg.vision_layers
        vision_layers = vision.get("num_hidden_layers", vision.get("depth"))
        config = build_config(shape.model_type, text, vision, shape.extra)
        torch.manual_seed(cfg.seed)
        with _default_dtype(dtype):
            model = AutoModelForImageTextToText.from_config(config, attn_implementation="sdpa")
        depth = text["num_hidden_layers"]
        what = (
            f"random-weight {shape.name} shape ({shape.hf_id}): language model at full width, "
            f"{depth} of {full_layers} layers"
            + (" (depth truncated)" if depth < full_layers else "")
            + f"; {vision_layers}-layer tiny vision tower with the real visual-token count"
        )
    else:
        from transformers import AutoModelForImageTextToText

        model = AutoModelForImageTextToText.from_pretrained(cfg.model, dtype=dtype, local_files_only=True)
        what = f"checkpoint {cfg.model}"
    model = model.to(dtype).eval()
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or 0
    return model, what


def _mrope(head_dim: int) -> list[int]:
    """M-RoPE sections (text, height, width) summing to head_dim/2, in Qwen's 2:3:3 proportion."""
    half = head_dim // 2
    a = half // 4
    b = (half - a) // 2
    return [a, b, half - a - b]


def _qwen_out(shape) -> dict[str, Any]:
    if shape.model_type == "qwen2_vl":
        return {"hidden_size": shape.text["hidden_size"]}
    if shape.model_type == "qwen2_5_vl":
        return {"out_hidden_size": shape.text["hidden_size"]}
    return {}


class _default_dtype:
    """Create parameters directly in the benchmark dtype (halves peak memory while building)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype, self.old = dtype, torch.get_default_dtype()

    def __enter__(self) -> None:
        if self.dtype.is_floating_point:
            torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc: object) -> None:
        torch.set_default_dtype(self.old)


def build_inputs(model: torch.nn.Module, cfg: BenchConfig) -> tuple[dict[str, torch.Tensor], int]:
    """Prompt ids with the model's visual tokens plus `n_text` text tokens, and pixel values."""
    config = model.config
    kind = config.model_type
    dtype = next(model.parameters()).dtype
    g = torch.Generator().manual_seed(cfg.seed)
    text = torch.randint(*TEXT_ID_RANGE, (cfg.n_text,), generator=g)
    pre, post = text[:4], text[4:]
    vc = config.vision_config
    if kind in ("llava", "video_llava"):
        side = vc.image_size
        patches = (side // vc.patch_size) ** 2
        if kind == "video_llava" or cfg.frames:
            frames = cfg.frames or 8
            n_visual = frames * (patches + 1)
            visual = torch.full((n_visual,), config.video_token_id)
            pixels = {"pixel_values_videos": torch.randn(1, frames, 3, side, side, generator=g, dtype=dtype)}
        else:
            n_visual = patches
            visual = torch.full((n_visual,), config.image_token_id)
            pixels = {"pixel_values": torch.randn(1, 3, side, side, generator=g, dtype=dtype)}
        ids = torch.cat([pre, visual, post])[None]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), **pixels}, n_visual
    if kind == "llava_next":
        # anyres at the largest square grid: a (2s x 2s) image -> base crop + 2x2 tiles of the tower's
        # s px, unpadded feature grid with a newline per row: 576 + 48 * 49 = 2928 tokens at s=336.
        side_px = vc.image_size
        pin = [2 * side_px, 2 * side_px]
        if [list(p) for p in config.image_grid_pinpoints].count(pin) == 0:
            raise FastVError(f"llava_next inputs need image_grid_pinpoints to contain {pin} (a 2x2 grid of the tower)")
        side = side_px // vc.patch_size
        n_visual = side * side + (2 * side) * (2 * side + 1)
        ids = torch.cat([pre, torch.full((n_visual,), config.image_token_id), post])[None]
        pixels = torch.randn(1, 5, 3, side_px, side_px, generator=g, dtype=dtype)
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "pixel_values": pixels,
            "image_sizes": torch.tensor([pin]),
        }, n_visual
    if kind in ("qwen2_vl", "qwen2_5_vl"):
        t, h, w = 1, 48, 48  # one 672x672 image -> 576 visual tokens
        if cfg.frames:
            t = max(1, cfg.frames // vc.temporal_patch_size)
            h = w = 32  # 16x16 = 256 merged tokens per temporal group
        n_visual = t * h * w // vc.spatial_merge_size**2
        token = config.video_token_id if cfg.frames else config.image_token_id
        ids = torch.cat([pre, torch.tensor([config.vision_start_token_id]), torch.full((n_visual,), token), post])
        ids = ids[None]
        patch = 3 * vc.temporal_patch_size * vc.patch_size**2
        pix = torch.randn(t * h * w, patch, generator=g, dtype=dtype)
        grid = torch.tensor([[t, h, w]])
        mm = (ids == token).long() * (2 if cfg.frames else 1)
        extra = (
            {"pixel_values_videos": pix, "video_grid_thw": grid}
            if cfg.frames
            else {"pixel_values": pix, "image_grid_thw": grid}
        )
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": mm, **extra}, n_visual
    raise FastVError(f"no benchmark inputs for model_type {kind!r}")


# --------------------------------------------------------------------------- measuring one call


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for queued GPU work, so a clock read afterwards covers it (a no-op on the CPU)."""
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize(device)


class _FirstToken:
    """A logits processor that only records when each step's logits arrive (no effect on them).

    On a GPU the logits are queued, not computed, when `generate` hands them over; the stamp waits
    for them, or it would time the kernel launches instead of the prefill.
    """

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.cpu: list[float] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if scores.is_cuda:
            synchronize(scores.device)
        self.stamps.append(time.perf_counter())
        self.cpu.append(time.process_time())
        return scores


class PeakRSS:
    """Peak resident memory above the starting point, sampled from /proc (CPU) or CUDA stats."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._cuda = torch.cuda.is_available()

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        if self._cuda:
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = self._rss()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._cuda:
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())

    @property
    def delta(self) -> int:
        return max(0, self.peak - self.base)


def cache_bytes(cache: Any) -> int:
    """Bytes of keys and values held by a transformers cache (per layer, whatever their lengths)."""
    total = 0
    for layer in getattr(cache, "layers", []):
        for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def run_once(model: torch.nn.Module, inputs: dict[str, torch.Tensor], new_tokens: int, handle=None) -> CallResult:
    """One `generate`: time to first token, decode tokens/s, peak memory, cache bytes."""
    from transformers import LogitsProcessorList

    stamp = _FirstToken()
    synchronize(inputs["input_ids"].device)
    with PeakRSS() as mem, torch.inference_mode():
        start, start_cpu = time.perf_counter(), time.process_time()
        out = model.generate(
            **inputs,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            logits_processor=LogitsProcessorList([stamp]),
            return_dict_in_generate=True,
        )
    prefill, prefill_cpu = stamp.stamps[0] - start, stamp.cpu[0] - start_cpu
    decode_steps = len(stamp.stamps) - 1
    decode = (decode_steps / (stamp.stamps[-1] - stamp.stamps[0])) if decode_steps else float("nan")
    stats = getattr(handle, "stats", None) if handle is not None else None
    lens = list(stats.layer_seq_lens) if stats is not None else []
    kept = int(stats.num_kept[0]) if stats is not None else None
    return CallResult(prefill, prefill_cpu, decode, mem.delta, cache_bytes(compat.output_cache(out)), lens, kept)


# --------------------------------------------------------------------------- the benchmark


@dataclass
class SettingResult:
    """Medians for one (K, R) and how they compare with the FLOPs prediction."""

    k: int
    ratio: float
    kept: int
    prefill_s: float  # median wall-clock time to first token
    prefill_cpu_s: float  # median CPU time of the process over the same span
    decode_tok_s: float
    peak_mem_mb: float
    kv_bytes: int
    speedup_measured: float  # wall clock
    speedup_measured_cpu: float
    speedup_predicted: float
    efficiency: float  # measured / predicted speed-up (wall clock)
    efficiency_cpu: float
    kv_bytes_predicted: int
    kv_error: float  # measured / predicted - 1
    kv_saving: float  # 1 - FastV cache / full cache
    kv_saving_predicted: float
    flops: int
    layer_seq_lens: list[int]
    prefill_all_s: list[float]
    # median over runs of (pruned time) / (mean of the two unpatched runs around it)
    time_share: float = float("nan")
    time_share_cpu: float = float("nan")
    method: str = "fastv"
    keep: int | None = None  # the budget, when given in visual tokens kept
    label: str = ""  # e.g. "fastv k=2 r=0.5", "pool keep=64" (`fastv.run.describe`)


@dataclass
class BenchResult:
    config: dict[str, Any]
    model: str
    n_visual: int
    n_text: int
    machine: dict[str, Any]
    full: dict[str, Any]
    settings: list[SettingResult]
    overhead: float  # FastV at ratio 0 vs unpatched prefill: time ratio - 1 (nan without that setting)
    overhead_cpu: float
    skipped: dict[str, str] = field(default_factory=dict)  # setting label -> why its method refused it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def setting(self, k: int, ratio: float) -> SettingResult | None:
        return next((s for s in self.settings if s.k == k and abs(s.ratio - ratio) < 1e-9), None)

    def by_label(self, label: str) -> SettingResult | None:
        return next((s for s in self.settings if s.label == label), None)

    @property
    def by_method(self) -> bool:
        """Settings are methods x budgets (not FastV's K x R grid)."""
        return bool(self.config.get("methods"))


def _machine(cfg: BenchConfig) -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


Setting = tuple  # ("full",), (k, ratio) or (method, "keep"|"ratio", value)
FULL: Setting = ("full",)


def interleaved_plan(settings: list[Setting], rounds: int) -> list[Setting]:
    """Call order: each round visits every setting once (rotated), each between two unpatched runs.

    Round r is full, s[r], full, s[r+1], ..., full, and the next round starts with its own full run,
    so every pruned run has an unpatched neighbour on each side measured moments apart.
    """
    plan: list[Setting] = []
    n = len(settings)
    for rnd in range(rounds):
        shift = rnd % n if n else 0
        for s in settings[shift:] + settings[:shift]:
            plan += [FULL, s]
        plan.append(FULL)
    return plan


def neighbour_shares(sequence: list[tuple[Setting, float]]) -> dict[Setting, list[float]]:
    """Each pruned run's measurement over the mean of the unpatched runs right before and after it."""
    shares: dict[Setting, list[float]] = {}
    for i, (s, value) in enumerate(sequence):
        if s == FULL or i == 0 or i + 1 >= len(sequence):
            continue
        (before, a), (after, b) = sequence[i - 1], sequence[i + 1]
        if before == FULL and after == FULL and a + b > 0:
            shares.setdefault(s, []).append(value / ((a + b) / 2))
    return shares


def run_benchmark(
    cfg: BenchConfig,
    model: torch.nn.Module | None = None,
    show_progress: bool = True,
) -> BenchResult:
    """Time the full model and every setting, round after round, and compare with FLOPs."""
    from tqdm.auto import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    what = f"given model {type(model).__name__}" if model is not None else ""
    if model is None:
        model, what = build_model(cfg)
    machine = _machine(cfg)
    inputs, n_visual = build_inputs(model, cfg)
    n_tokens = int(inputs["input_ids"].shape[1])
    methods, skipped = {}, {}
    for s in cfg.settings():  # a budget the method cannot meet on this model is skipped, and said why
        method = cfg.method(s)
        try:
            method.apply(model).remove()
        except FastVError as err:
            skipped[run.describe(method)] = str(err)
            continue
        methods[s] = method
    settings = list(methods)
    if not settings:
        raise FastVError("no setting can run on this model: " + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    timings = {("full",): Timing(), **{s: Timing() for s in settings}}

    def call(setting) -> CallResult:
        with run.applied(model, None if setting == FULL else methods[setting]) as handle:
            return run_once(model, inputs, cfg.new_tokens, handle)

    plan = interleaved_plan(settings, cfg.repeats)
    bar = tqdm(total=cfg.warmup * 2 + len(plan), desc=f"bench {cfg.model}", unit="call", leave=False,
               disable=not show_progress)  # fmt: skip
    for _ in range(cfg.warmup):  # first calls pay for allocation and kernel selection
        for s in (FULL, settings[-1]):
            call(s)
            bar.update()
    walls: list[tuple[Setting, float]] = []
    cpus: list[tuple[Setting, float]] = []
    for i, s in enumerate(plan):
        res = call(s)
        timings[s].add(res)
        walls.append((s, res.prefill_s))
        cpus.append((s, res.prefill_cpu_s))
        bar.set_postfix_str(f"call {i + 1}/{len(plan)} {s}")
        bar.update()
    bar.close()
    wall_shares, cpu_shares = neighbour_shares(walls), neighbour_shares(cpus)

    text_config = model.config.get_text_config(decoder=True)
    vis = F.vision_flops(model.config, n_visual=n_visual, frames=cfg.frames if cfg.frames else None)
    vision_side = vis.tower + vis.projector
    n_layers = text_config.num_hidden_layers
    full_t = timings[("full",)]
    full_lens = [n_tokens] * n_layers
    full_flops = vision_side + F.prefill_flops(text_config, full_lens)
    elem = torch.finfo(next(model.parameters()).dtype).bits // 8
    grow = cfg.new_tokens - 1  # tokens appended to every layer's cache during decoding

    def kv_pred(lens: list[int]) -> int:
        return F.kv_cache_bytes(text_config, [n + grow for n in lens], dtype_bytes=elem)

    full_prefill = statistics.median(full_t.prefill_s)
    full_cpu = statistics.median(full_t.prefill_cpu_s)
    results: list[SettingResult] = []
    for s in settings:
        t, method = timings[s], methods[s]
        k = int(getattr(method, "k", None) or 0)
        if method.ratio is not None:
            ratio = method.ratio
            kept = t.kept if t.kept is not None else F.kept_count(n_visual, ratio)
        else:
            kept = t.kept if t.kept is not None else method.keep
            ratio = 1 - kept / n_visual if n_visual else 0.0
        lens = t.layer_seq_lens or F.fastv_layer_seq_lens(n_layers, n_tokens, n_visual, k, kept)
        fl = vision_side + F.prefill_flops(text_config, lens)
        med, med_cpu = statistics.median(t.prefill_s), statistics.median(t.prefill_cpu_s)
        measured, predicted = full_prefill / med, full_flops / fl
        measured_cpu = full_cpu / med_cpu
        kv_p = kv_pred(lens)
        results.append(
            SettingResult(
                k=k,
                ratio=ratio,
                kept=kept,
                prefill_s=med,
                prefill_cpu_s=med_cpu,
                decode_tok_s=statistics.median(t.decode_tok_s),
                peak_mem_mb=statistics.median(t.peak_mem_bytes) / 2**20,
                kv_bytes=t.kv_bytes,
                speedup_measured=measured,
                speedup_measured_cpu=measured_cpu,
                speedup_predicted=predicted,
                efficiency=measured / predicted,
                efficiency_cpu=measured_cpu / predicted,
                kv_bytes_predicted=kv_p,
                kv_error=t.kv_bytes / kv_p - 1 if kv_p else 0.0,
                kv_saving=1 - t.kv_bytes / full_t.kv_bytes if full_t.kv_bytes else 0.0,
                kv_saving_predicted=1 - kv_p / kv_pred(full_lens),
                flops=fl,
                layer_seq_lens=lens,
                prefill_all_s=list(t.prefill_s),
                time_share=_median(wall_shares.get(s, [])),
                time_share_cpu=_median(cpu_shares.get(s, [])),
                method=method.name,
                keep=method.keep,
                label=run.describe(method),
            )
        )
    zero = next((r for r in results if r.method == "fastv" and r.ratio == 0.0 and r.keep is None), None)
    full = {
        "prefill_s": full_prefill,
        "prefill_cpu_s": full_cpu,
        "decode_tok_s": statistics.median(full_t.decode_tok_s),
        "peak_mem_mb": statistics.median(full_t.peak_mem_bytes) / 2**20,
        "kv_bytes": full_t.kv_bytes,
        "kv_bytes_predicted": kv_pred(full_lens),
        "flops": full_flops,
        "vision_flops": vision_side,
        "prefill_all_s": list(full_t.prefill_s),
        "n_tokens": n_tokens,
    }
    machine["load_avg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    return BenchResult(
        config=asdict(cfg),
        model=what,
        n_visual=n_visual,
        n_text=n_tokens - n_visual,
        machine=machine,
        full=full,
        settings=results,
        overhead=zero.prefill_s / full_prefill - 1 if zero else float("nan"),
        overhead_cpu=zero.prefill_cpu_s / full_cpu - 1 if zero else float("nan"),
        skipped=skipped,
    )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --------------------------------------------------------------------------- outputs


def save_json(result: BenchResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2))


def load_json(path: Path) -> BenchResult:
    """Read a saved run back (to re-plot or re-tabulate without re-timing)."""
    data = json.loads(Path(path).read_text())
    data["settings"] = [SettingResult(**s) for s in data["settings"]]
    return BenchResult(**data)


def plot(result: BenchResult, path: Path) -> None:
    """Speed-up vs R for each K, measured (solid) against the FLOPs ideal (dashed): wall clock and CPU time.
    Settings by method: bars per method and budget instead."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if result.by_method:
        _plot_methods(result, path)
        return

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    ks = sorted({s.k for s in result.settings})
    for ax, attr, label in (
        (axes[0], "speedup_measured", "wall clock (time to first token)"),
        (axes[1], "speedup_measured_cpu", "CPU time of the process"),
    ):
        for i, k in enumerate(ks):
            rows = sorted((s for s in result.settings if s.k == k and s.ratio > 0), key=lambda s: s.ratio)
            rs = [0.0] + [s.ratio for s in rows]
            ax.plot(rs, [1.0] + [getattr(s, attr) for s in rows], "o-", color=f"C{i}", label=f"K={k} measured")
            ax.plot(rs, [1.0] + [s.speedup_predicted for s in rows], "--", color=f"C{i}", alpha=0.7,
                    label=f"K={k} FLOPs ideal")  # fmt: skip
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("pruning ratio R (share of visual tokens dropped)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("prefill speed-up vs unpatched")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"FastV prefill, {result.n_visual} visual + {result.n_text} text tokens", fontsize=11)
    load = result.machine.get("load_avg_start")
    caption = result.model + (f"; load average at start {load[0]:.1f}" if load else "")
    fig.text(0.01, 0.01, "\n".join(textwrap.wrap(caption, 150)), fontsize=7, alpha=0.8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_methods(result: BenchResult, path: Path) -> None:
    """Prefill time as a share of the full model's per method x budget: measured (wall, CPU) beside FLOPs."""
    import matplotlib.pyplot as plt

    rows = result.settings
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.4))
    xs = range(len(rows))
    bars = (
        ("measured, wall", [1 / r.speedup_measured for r in rows]),
        ("measured, CPU", [1 / r.speedup_measured_cpu for r in rows]),
        ("FLOPs", [1 / r.speedup_predicted for r in rows]),
    )
    for j, (name, values) in enumerate(bars):
        ax.bar([x + (j - 1) * 0.27 for x in xs], values, 0.27, label=name)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xticks(list(xs), [r.label for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("prefill time / full model (lower is better)")
    ax.legend(fontsize=8)
    ax.set_title(f"{result.n_visual} visual + {result.n_text} text tokens; {result.model[:90]}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(result: BenchResult) -> str:
    """The README's results table for one run (peak MiB: resident memory above the start of the call)."""
    f = result.full
    by_method = result.by_method
    lines = [
        ("| method | budget | kept" if by_method else "| K | R | kept")
        + " | TTFT s | CPU s | speed-up (wall) | speed-up (CPU) | FLOPs ideal | wall / ideal "
        "| CPU / ideal | share of full (wall / CPU) | FLOPs share | decode tok/s | peak MiB | KV MiB | KV vs pred "
        "| KV saving (pred) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| full | - | {result.n_visual} | {f['prefill_s']:.2f} | {f['prefill_cpu_s']:.2f} | 1.00 | 1.00 | 1.00 | - | - "
        "| 1.00 / 1.00 | 1.00 "
        f"| {f['decode_tok_s']:.2f} | {f['peak_mem_mb']:.0f} | {f['kv_bytes'] / 2**20:.1f} | {f['kv_bytes'] / f['kv_bytes_predicted'] - 1:+.2%} | - |",
    ]
    rows = result.settings if by_method else sorted(result.settings, key=lambda r: (r.k, r.ratio))
    for r in rows:
        first = (
            f"| {r.method} | {r.label.removeprefix(r.method).strip()} |" if by_method else f"| {r.k} | {r.ratio:g} |"
        )
        lines.append(
            f"{first} {r.kept} | {r.prefill_s:.2f} | {r.prefill_cpu_s:.2f} | {r.speedup_measured:.2f} "
            f"| {r.speedup_measured_cpu:.2f} | {r.speedup_predicted:.2f} | {r.efficiency:.0%} | {r.efficiency_cpu:.0%} "
            f"| {r.time_share:.2f} / {r.time_share_cpu:.2f} | {1 / r.speedup_predicted:.2f} "
            f"| {r.decode_tok_s:.2f} | {r.peak_mem_mb:.0f} | {r.kv_bytes / 2**20:.1f} | {r.kv_error:+.2%} "
            f"| {r.kv_saving:.1%} ({r.kv_saving_predicted:.1%}) |"
        )
    lines.append(
        "\nShare of full: each pruned run's prefill time over the mean of the unpatched runs just before and "
        "after it (median over rounds); FLOPs share = 1 / FLOPs ideal speed-up."
    )
    if not math.isnan(result.overhead):
        lines.append(
            f"\nFastV at R=0 (K={result.config['overhead_k']}) vs unpatched: {result.overhead:+.1%} wall, "
            f"{result.overhead_cpu:+.1%} CPU time."
        )
    for label, why in result.skipped.items():
        lines.append(f"\n{label} skipped: {why}")
    return "\n".join(lines)


SUITES: dict[str, BenchConfig] = {
    # LLaVA-1.5-7B width, 576 image tokens + 40 text tokens; several K for the plot.
    "image": BenchConfig(model="llava-1.5-7b", layers=4, ks=(1, 2, 3), ratios=(0.25, 0.5, 0.75), repeats=5),
    # Video-LLaVA-7B width, 8 frames x 257 tokens (2056 visual tokens).
    "video": BenchConfig(model="video-llava-7b", layers=4, ks=(2,), ratios=(0.5, 0.75), frames=8, repeats=5),
}


def run_and_save(
    cfg: BenchConfig, out_dir: Path, name: str, show_progress: bool = True, model: torch.nn.Module | None = None
) -> BenchResult:
    """Run, then write `<name>.json`, `<name>.png` and `<name>.md` under `out_dir`."""
    result = run_benchmark(cfg, model=model, show_progress=show_progress)
    out_dir = Path(out_dir)
    save_json(result, out_dir / f"{name}.json")
    plot(result, out_dir / f"{name}.png")
    (out_dir / f"{name}.md").write_text(f"{result.model}\n\n{markdown_table(result)}\n")
    return result
