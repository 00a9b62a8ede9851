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
from fastv.bench.models import BenchConfig, build_inputs, build_model
from fastv.bench.report import BenchResult, SettingResult, markdown_table, plot, save_json
from fastv.bench.schedule import FULL, Setting, interleaved_plan, neighbour_shares
from fastv.core.errors import FastVError
from fastv.core.hf import compat


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
