"""GPU benchmark at the real model sizes: time to first token and decode speed, full vs pruned.

    PYTHONPATH=src python3 benchmarks/gpu.py [--budget-s 270] [--out benchmarks/results/gpu]
    PYTHONPATH=src python3 benchmarks/gpu.py --smoke --out /tmp/gpu-smoke   # same code, tiny, on CPU

Models (random weights, bf16, SDPA; flash-attention 2 as an extra phase where `flash_attn` imports),
built directly on the GPU at their full shapes: LLaVA-1.5-7B and -13B (CLIP ViT-L/14-336, 24 layers,
576 visual tokens; Vicuna 32 x 4096 / 40 x 5120) and LLaVA-NeXT-7B (the same tower through the real
anyres path: a 672 x 672 image = base crop + 2 x 2 tiles = 2880 feature tokens + 48 row newlines
= 2928 visual tokens). The prompt is 4 text tokens, the image, 36 text tokens.

Per model and batch size (1, and 8 for a subset), each round runs the full model, then every setting
once in a rotated order; the first call of every setting is a warm-up (it also records the kept
counts, per-layer lengths and cache size). Time to first token (TTFT) is `generate` from call to the
first logits, CUDA-synchronised (it includes the vision tower, the projector and the pruning itself);
decode tokens/s is over the remaining steps. Medians are reported, with TTFT as a share of the full
model's, against the FLOPs share that `fastv.flops` computes from the per-layer lengths the engine
ran (and, as a cross-check, from `fastv.methods.accounting`). Settings: FastV K=2 at R=25/50/75%,
and at 192/128/64 kept (LLaVA-NeXT: 5x those, one budget per crop), the pre-LM methods and PDrop at
the same budgets.

Time discipline: `--budget-s` (default 270) bounds the whole run; each phase (model x batch) gets a
share of what is left, no new call starts past a phase's share, and the JSON is rewritten after
every call, so a killed run keeps everything measured so far. Each model is freed before the next.
Writes gpu.json, gpu.md and gpu.png into `--out`.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import platform
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

T_START = time.perf_counter()  # the budget counts from here: imports and CUDA start-up included

import torch  # noqa: E402

from fastv import flops as F  # noqa: E402
from fastv.bench.measure import run_once  # noqa: E402
from fastv.bench.models import BenchConfig, _default_dtype, build_inputs  # noqa: E402
from fastv.core.errors import FastVError  # noqa: E402
from fastv.flops.shapes import KNOWN_SHAPES, build_config  # noqa: E402
from fastv.methods import make  # noqa: E402
from fastv.methods.accounting import visual_tokens_per_layer  # noqa: E402

OUT = Path(__file__).parent / "results" / "gpu"
RESERVE_S = 5.0  # kept back from the budget for the last call's overrun and the tables/plot
MIN_BUILD_S = 20.0  # no new model is built with less than this left
N_TEXT = 40
# Official FastV README (github.com/pkunlp-icler/FastV): LLaVA-1.5-13B on one A100, K=2, time to first token.
OFFICIAL_13B_A100 = {0.0: 0.203, 0.25: 0.181, 0.5: 0.155, 0.75: 0.124}
PRE_LM = ("random", "pool", "divprune", "visionzip")


@dataclass(frozen=True)
class ModelSpec:
    """One model to time: a known shape, optionally shrunk (smoke), and its share of the budget."""

    key: str
    shape: str  # fastv.flops.shapes.KNOWN_SHAPES name
    keeps: tuple[int, ...]  # visual-token budgets of the per-budget methods
    pdrop_layers: tuple[int, ...] = (2, 6, 12)  # an early first cut makes PDrop's low budgets reachable
    batches: tuple[int, ...] = (1, 8)
    weight: float = 1.0  # share of the time budget, per batch size
    text: dict[str, Any] = field(default_factory=dict)  # overrides of the shape (smoke only)
    vision: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


FULL_MODELS = (
    ModelSpec("llava-1.5-13b", "llava-1.5-13b", (192, 128, 64), weight=1.4),
    ModelSpec("llava-1.5-7b", "llava-1.5-7b", (192, 128, 64), weight=1.0),
    ModelSpec("llava-next-7b", "llava-next-7b", (960, 640, 320), weight=1.4),
)
_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=1200)  # fmt: skip
_TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=16,
                    patch_size=2)  # fmt: skip
SMOKE_MODELS = (
    ModelSpec("llava-1.5-13b", "llava-1.5-13b", (36, 25, 16), (1, 2, 3), text=_TINY_TEXT, vision=_TINY_VISION,
              extra={"image_token_id": 1100}),
    ModelSpec("llava-1.5-7b", "llava-1.5-7b", (36, 25, 16), (1, 2, 3), text={**_TINY_TEXT, "hidden_size": 48},
              vision=_TINY_VISION, extra={"image_token_id": 1100}),
    ModelSpec("llava-next-7b", "llava-next-7b", (200, 150, 100), (1, 2, 3), text=_TINY_TEXT, vision=_TINY_VISION,
              extra={"image_token_id": 1100, "image_grid_pinpoints": [[32, 32]]}),
)  # fmt: skip


@dataclass(frozen=True)
class Setting:
    """One row: a method with its settings (None: the unpatched model)."""

    label: str
    group: str  # full, fastv, pre-LM, multi-stage
    method: str | None = None
    kwargs: tuple[tuple[str, Any], ...] = ()

    def build(self):
        return make(self.method, **dict(self.kwargs)) if self.method else None


FULL = Setting("full", "full")


def settings_for(spec: ModelSpec, batch: int) -> list[Setting]:
    """Batch 1: everything. Larger batches: full, FastV's ratios and every method at the smallest budget."""
    out = [Setting(f"fastv K=2 R={r:g}", "fastv", "fastv", (("k", 2), ("ratio", r))) for r in (0.25, 0.5, 0.75)]
    keeps = spec.keeps if batch == 1 else spec.keeps[-1:]
    for keep in keeps:
        if batch == 1:
            out.append(Setting(f"fastv K=2 keep={keep}", "fastv", "fastv", (("k", 2), ("keep", keep))))
        pdrop = (("keep", keep), ("layers", spec.pdrop_layers))
        out.append(Setting(f"pdrop keep={keep}", "multi-stage", "pdrop", pdrop))
        for name in PRE_LM if batch == 1 or spec.shape != "llava-next-7b" else ("random",):
            out.append(Setting(f"{name} keep={keep}", "pre-LM", name, (("keep", keep),)))
    return out


# --------------------------------------------------------------------------- environment


def environment() -> dict[str, Any]:
    """What the figures were measured on (GPU, driver, library versions)."""
    import transformers

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "transformers": transformers.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30
        if torch.cuda.is_available()
        else None,
        "flash_attn": _flash_attn_version(),
        "driver": None,
    }
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=15, check=True,
        )  # fmt: skip
        env["driver"] = out.stdout.strip().splitlines()[0].split(",")[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return env


def _flash_attn_version() -> str | None:
    try:
        return importlib.import_module("flash_attn").__version__
    except Exception:  # noqa: BLE001 - any import failure means: not usable here
        return None


# --------------------------------------------------------------------------- model and inputs


def build(spec: ModelSpec, device: torch.device, dtype: torch.dtype, attn: str) -> torch.nn.Module:
    """A random-weight model created on `device` in `dtype` (a 13B model never touches the CPU)."""
    from transformers import AutoModelForImageTextToText

    shape = KNOWN_SHAPES[spec.shape]
    config = build_config(
        shape.model_type, {**shape.text, **spec.text}, {**shape.vision, **spec.vision}, {**shape.extra, **spec.extra}
    )
    torch.manual_seed(0)
    with torch.device(device), _default_dtype(dtype):
        model = AutoModelForImageTextToText.from_config(config, attn_implementation=attn)
    model = model.to(dtype).eval()
    model.generation_config.pad_token_id = model.generation_config.pad_token_id or 0
    return model


def batch_inputs(model: torch.nn.Module, batch: int, device: torch.device) -> tuple[dict[str, torch.Tensor], int]:
    """fastv.bench.models' prompt (4 text tokens, the image, 36 text tokens), repeated `batch` times."""
    inputs, n_visual = build_inputs(model, BenchConfig(n_text=N_TEXT))
    out = {k: v.repeat(batch, *[1] * (v.dim() - 1)).to(device) for k, v in inputs.items()}
    return out, n_visual


# --------------------------------------------------------------------------- the run


class Recorder:
    """Holds every measurement and rewrites the JSON after each one (a timeout loses nothing)."""

    def __init__(self, out: Path, meta: dict[str, Any]) -> None:
        self.out, self.data = out, {"meta": meta, "phases": [], "official_fastv_13b_a100_ttft_s": OFFICIAL_13B_A100}
        out.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()

    def save(self) -> None:
        self.data["meta"]["elapsed_s"] = time.perf_counter() - self.started
        tmp = self.out / "gpu.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, default=_jsonable))
        tmp.replace(self.out / "gpu.json")


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and x != x:
        return None
    return str(x)


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def measure_phase(
    rec: Recorder,
    model: torch.nn.Module,
    spec: ModelSpec,
    batch: int,
    attn: str,
    device: torch.device,
    deadline: float,
    repeats: int,
    new_tokens: int,
    subset: list[str] | None = None,
) -> dict[str, Any]:
    """Warm-up, then rounds of full + every setting (rotated) until done or past `deadline`."""
    inputs, n_visual = batch_inputs(model, batch, device)
    n_tokens = int(inputs["input_ids"].shape[1])
    tc = model.config.get_text_config(decoder=True)
    n_layers = tc.num_hidden_layers
    vision = F.vision_flops(model.config, n_visual=n_visual, batch_size=batch)
    vision_side = vision.tower + vision.projector
    full_flops = vision_side + F.prefill_flops(tc, [n_tokens] * n_layers, batch)
    elem = torch.finfo(next(model.parameters()).dtype).bits // 8
    phase: dict[str, Any] = {
        "model": spec.key,
        "batch": batch,
        "attn": attn,
        "n_visual": n_visual,
        "n_text": n_tokens - n_visual,
        "n_tokens": n_tokens,
        "layers": n_layers,
        "hidden": tc.hidden_size,
        "vision_flops": vision_side,
        "full_flops": full_flops,
        "new_tokens": new_tokens,
        "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "status": "running",
        "rounds_done": 0,
        "skipped": {},
        "errors": {},
        "rows": [],
    }
    rec.data["phases"].append(phase)
    settings = [FULL] + [s for s in settings_for(spec, batch) if subset is None or s.label in subset]
    methods: dict[str, Any] = {}
    for s in settings[1:]:
        try:
            m = s.build()
            m.apply(model).remove()  # refuses budgets or families the method does not support
            visual_tokens_per_layer(m, n_layers, n_visual)  # refuses budgets out of reach (PDrop)
            methods[s.label] = m
        except FastVError as err:
            phase["skipped"][s.label] = str(err)
    active = [s for s in settings if s is FULL or s.label in methods]
    rows = {s.label: _empty_row(s) for s in active}
    phase["rows"] = list(rows.values())

    def call(s: Setting, timed: bool) -> None:
        row = rows[s.label]
        try:
            if s is FULL:
                res = run_once(model, inputs, new_tokens)
            else:
                with methods[s.label].apply(model) as handle:
                    res = run_once(model, inputs, new_tokens, handle)
        except Exception as err:  # noqa: BLE001 - one failing setting must not stop the run
            phase["errors"][s.label] = f"{type(err).__name__}: {err}"[:2000]
            traceback.print_exc()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows.pop(s.label, None)
            phase["rows"] = list(rows.values())
            return
        if not timed:
            row["kv_bytes"] = res.kv_bytes
            row["layer_seq_lens"] = res.layer_seq_lens or [n_tokens] * n_layers
            row["kept"] = res.kept if res.kept is not None else n_visual
            if row["budget"] is None:
                row["budget"] = row["kept"]
        else:
            row["ttft_all_s"].append(res.prefill_s)
            row["ttft_cpu_all_s"].append(res.prefill_cpu_s)
            row["decode_all_tok_s"].append(res.decode_tok_s * batch)
            row["peak_delta_all_bytes"].append(res.peak_mem_bytes)
        _summarise(phase, rows, tc, n_tokens, n_visual, batch, vision_side, full_flops, elem, new_tokens)
        rec.save()

    if time.perf_counter() > deadline:
        phase["status"] = "not started: time budget spent"
        rec.save()
        return phase
    call(FULL, timed=False)  # allocation, kernel selection and autotuning at the full shape
    for s in active:
        if time.perf_counter() > deadline:
            break
        call(s, timed=False)
    for rnd in range(repeats):
        order = [s for s in active[1:] if s.label in rows]
        shift = rnd % len(order) if order else 0
        for s in [FULL] + order[shift:] + order[:shift]:
            if time.perf_counter() > deadline:
                phase["status"] = f"stopped by the time budget in round {rnd + 1}"
                rec.save()
                return phase
            if s.label in rows:
                call(s, timed=True)
        phase["rounds_done"] = rnd + 1
    phase["status"] = "done"
    rec.save()
    return phase


def _empty_row(s: Setting) -> dict[str, Any]:
    return {
        "label": s.label,
        "group": s.group,
        "method": s.method or "full",
        "settings": dict(s.kwargs),
        "kept": None,  # visual tokens left after the last cut (sample 0)
        "budget": dict(s.kwargs).get("keep"),  # keep setting: PDrop's is the per-layer average
        "n": 0,
        "ttft_s": None,
        "ttft_cpu_s": None,
        "decode_tok_s": None,
        "ttft_share": None,
        "decode_share": None,
        "flops": None,
        "flops_share": None,
        "speedup_measured": None,
        "speedup_predicted": None,
        "efficiency": None,
        "kv_bytes": None,
        "kv_bytes_predicted": None,
        "kv_share": None,
        "peak_mem_bytes": None,
        "peak_delta_bytes": None,
        "layer_seq_lens": None,
        "layer_seq_lens_accounting": None,
        "ttft_all_s": [],
        "ttft_cpu_all_s": [],
        "decode_all_tok_s": [],
        "peak_delta_all_bytes": [],
    }


def _summarise(phase, rows, tc, n_tokens, n_visual, batch, vision_side, full_flops, elem, new_tokens) -> None:
    """Medians and ratios to the full model, recomputed after every call."""
    grow = new_tokens - 1
    full = rows.get("full")
    full_ttft = _median(full["ttft_all_s"]) if full else None
    full_decode = _median(full["decode_all_tok_s"]) if full else None
    n_layers = tc.num_hidden_layers
    for row in rows.values():
        lens = row["layer_seq_lens"]
        if lens is None:
            continue
        row["n"] = len(row["ttft_all_s"])
        row["ttft_s"] = _median(row["ttft_all_s"])
        row["ttft_cpu_s"] = _median(row["ttft_cpu_all_s"])
        row["decode_tok_s"] = _median(row["decode_all_tok_s"])
        delta = _median(row["peak_delta_all_bytes"])
        row["peak_delta_bytes"] = delta
        row["peak_mem_bytes"] = phase["weights_bytes"] + delta if delta is not None else None
        row["flops"] = vision_side + F.prefill_flops(tc, lens, batch)
        row["flops_share"] = row["flops"] / full_flops
        row["speedup_predicted"] = full_flops / row["flops"]
        row["kv_bytes_predicted"] = F.kv_cache_bytes(tc, [n + grow for n in lens], batch, elem)
        if row["method"] != "full":
            method = make(row["method"], **row["settings"])
            per_layer = visual_tokens_per_layer(method, n_layers, n_visual)
            row["layer_seq_lens_accounting"] = [n_tokens - n_visual + v for v in per_layer]
        if full and full["kv_bytes"]:
            row["kv_share"] = row["kv_bytes"] / full["kv_bytes"]
        if full_ttft and row["ttft_s"]:
            row["ttft_share"] = row["ttft_s"] / full_ttft
            row["speedup_measured"] = full_ttft / row["ttft_s"]
            row["efficiency"] = row["speedup_measured"] / row["speedup_predicted"]
        if full_decode and row["decode_tok_s"]:
            row["decode_share"] = row["decode_tok_s"] / full_decode


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = T_START
    deadline = t0 + args.budget_s - RESERVE_S
    smoke = args.smoke
    device = torch.device("cpu" if smoke else "cuda")
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --smoke for the CPU check, or on a GPU machine")
    dtype = torch.float32 if smoke else torch.bfloat16
    if smoke:
        torch.set_num_threads(1)  # tiny matrices: more threads only contend on a shared CPU
    specs = [s for s in (SMOKE_MODELS if smoke else FULL_MODELS) if not args.models or s.key in args.models]
    extra_attn = args.extra_attn
    if extra_attn is None and not smoke and _flash_attn_version() is not None:
        extra_attn = "flash_attention_2"
    meta = {
        "what": "random-weight models at full shapes" if not smoke else "SMOKE: tiny shapes on CPU (not a result)",
        "smoke": smoke,
        "dtype": str(dtype).removeprefix("torch."),
        "budget_s": args.budget_s,
        "repeats": args.repeats,
        "new_tokens": args.new_tokens,
        "argv": sys.argv[1:],
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "env": environment(),
        "note_llava_next": "LLaVA-NeXT-7B runs the real anyres path on one 672x672 image: 5 crops of 336 px, "
        "2880 feature tokens + 48 row newlines = 2928 visual tokens; budgets are 5x the LLaVA-1.5 ones.",
    }
    rec = Recorder(Path(args.out), meta)
    rec.save()
    # phases (model, batch, attention) in order; each gets a weighted share of the time left
    phases = []
    for spec in specs:
        phases += [(spec, b, "sdpa", spec.weight * (1.0 if b == 1 else 0.6)) for b in spec.batches if b in args.batches]
        if extra_attn and spec.key == "llava-1.5-7b" and 1 in args.batches:
            phases.append((spec, 1, extra_attn, 0.4))
    weights = [w for *_, w in phases]
    for spec in specs:
        my = [(j, b, attn) for j, (s, b, attn, _) in enumerate(phases) if s is spec]
        if time.perf_counter() > deadline - MIN_BUILD_S:
            meta["stopped"] = f"time budget spent before {spec.key}"
            break
        model = None
        try:
            tb = time.perf_counter()
            model = build(spec, device, dtype, "sdpa")
            synchronize_all(device)
            build_s = time.perf_counter() - tb
            print(f"[{time.perf_counter() - t0:6.1f}s] built {spec.key} in {build_s:.1f}s", flush=True)
            for j, b, attn in my:
                now = time.perf_counter()
                share = weights[j] / sum(weights[j:])
                phase_deadline = min(deadline, now + (deadline - now) * share)
                subset = None
                if attn != "sdpa":  # e.g. flash-attention 2: full, FastV and one budget of two methods
                    model.set_attn_implementation(attn)
                    subset = [f"fastv K=2 R={r:g}" for r in (0.25, 0.5, 0.75)]
                    subset += [f"pdrop keep={spec.keeps[-1]}", f"random keep={spec.keeps[-1]}"]
                ph = measure_phase(
                    rec, model, spec, b, attn, device, phase_deadline, args.repeats, args.new_tokens, subset
                )
                ph["build_s"] = build_s
                rec.save()
                (Path(args.out) / "gpu.md").write_text(markdown(rec.data))
                print_phase(ph, t0)
        except Exception as err:  # noqa: BLE001 - keep what was measured; try the next model
            traceback.print_exc()
            rec.data.setdefault("failures", []).append(f"{spec.key}: {type(err).__name__}: {err}"[:2000])
            rec.save()
        finally:
            del model
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    meta["total_s"] = time.perf_counter() - t0
    rec.save()
    return rec.data


def synchronize_all(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- outputs


def _f(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def phase_table(ph: dict[str, Any]) -> str:
    lines = [
        "| setting | budget | kept | n | TTFT ms | TTFT share | FLOPs share | measured / predicted speed-up | decode tok/s "
        "| decode share | peak GiB | KV MiB | KV share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in ph["rows"]:
        ms = r["ttft_s"] * 1000 if r["ttft_s"] is not None else None
        peak = r["peak_mem_bytes"] / 2**30 if r["peak_mem_bytes"] is not None else None
        kv = r["kv_bytes"] / 2**20 if r["kv_bytes"] is not None else None
        lines.append(
            f"| {r['label']} | {_f(r['budget'], 'd')} | {_f(r['kept'], 'd')} | {r['n']} | {_f(ms, '.1f')} | {_f(r['ttft_share'], '.3f')} "
            f"| {_f(r['flops_share'], '.3f')} | {_f(r['efficiency'], '.0%')} | {_f(r['decode_tok_s'], '.1f')} "
            f"| {_f(r['decode_share'], '.2f')} | {_f(peak, '.2f')} | {_f(kv, '.1f')} | {_f(r['kv_share'], '.3f')} |"
        )
    return "\n".join(lines)


def official_table(data: dict[str, Any]) -> str:
    """LLaVA-1.5-13B, batch 1, FastV K=2: ours beside the official README's A100 figures."""
    ph = next((p for p in data["phases"] if p["model"] == "llava-1.5-13b" and p["batch"] == 1 and p["attn"] == "sdpa"),
              None)  # fmt: skip
    if ph is None:
        return "(LLaVA-1.5-13B batch 1 was not measured)"
    rows = {r["label"]: r for r in ph["rows"]}
    gpu = data["meta"]["env"].get("gpu") or "this machine"
    lines = [
        f"| FastV K=2 | official A100 TTFT s | official share | {gpu} TTFT s | our share | FLOPs share |",
        "|---|---|---|---|---|---|",
    ]
    for ratio, official in OFFICIAL_13B_A100.items():
        r = rows.get("full" if ratio == 0 else f"fastv K=2 R={ratio:g}", {})
        lines.append(
            f"| {'full' if ratio == 0 else f'R={ratio:.0%}'} | {official:.3f} | {official / OFFICIAL_13B_A100[0.0]:.3f} "
            f"| {_f(r.get('ttft_s'), '.3f')} | {_f(r.get('ttft_share') if ratio else 1.0, '.3f')} "
            f"| {_f(r.get('flops_share'), '.3f')} |"
        )
    return "\n".join(lines)


def markdown(data: dict[str, Any]) -> str:
    meta, env = data["meta"], data["meta"]["env"]
    out = [
        "# fastv GPU benchmark" + (" (SMOKE: tiny CPU shapes, not a result)" if meta["smoke"] else ""),
        "",
        f"{meta['what']}, {meta['dtype']}; GPU {env.get('gpu')}, driver {env.get('driver')}, torch {env['torch']} "
        f"(CUDA {env.get('cuda_runtime')}), transformers {env['transformers']}, flash_attn {env.get('flash_attn')}; "
        f"started {meta['started_utc']}, {meta.get('total_s', meta.get('elapsed_s', 0)):.0f} s in all.",
        "",
        "TTFT: `generate` call to first logits (vision tower + projector + pruning + prefill), CUDA-synchronised, "
        "median over rounds. Share: of the full model's median in the same phase. FLOPs share: `fastv.flops` on the "
        "per-layer lengths the engine ran, vision side included. Decode tok/s counts all sequences of the batch. "
        "Peak GiB: allocated GPU memory incl. weights. " + meta["note_llava_next"],
        "",
        "## LLaVA-1.5-13B vs the official FastV README (A100, K=2)",
        "",
        official_table(data),
        "",
    ]
    for ph in data["phases"]:
        out += [
            f"## {ph['model']}, batch {ph['batch']}, {ph['attn']}",
            "",
            f"{ph['layers']} layers x {ph['hidden']}; {ph['n_visual']} visual + {ph['n_text']} text tokens; "
            f"status: {ph['status']}, {ph['rounds_done']} round(s).",
            "",
            phase_table(ph),
            "",
        ]
        for label, why in {**ph["skipped"], **ph["errors"]}.items():
            out.append(f"- {label}: {why.splitlines()[0] if why else ''}")
        out.append("")
    for failure in data.get("failures", []):
        out.append(f"- FAILED {failure.splitlines()[0]}")
    return "\n".join(out) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    """TTFT share of full vs visual tokens kept, per method, batch 1; dashed: the FLOPs prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [p for p in data["phases"] if p["batch"] == 1 and p["attn"] == "sdpa"]
    fig, axes = plt.subplots(1, max(1, len(phases)), figsize=(5.2 * max(1, len(phases)), 4.4), squeeze=False)
    for ax, ph in zip(axes[0], phases, strict=False):
        methods = sorted({r["method"] for r in ph["rows"] if r["method"] != "full"})
        for i, name in enumerate(methods):
            rows = [r for r in ph["rows"] if r["method"] == name and r["budget"] is not None]
            rows.sort(key=lambda r: r["budget"])
            done = [r for r in rows if r["ttft_share"] is not None]
            ax.plot([r["budget"] for r in done], [r["ttft_share"] for r in done], "o-", color=f"C{i}",
                    label=f"{name} measured")  # fmt: skip
            ax.plot([r["budget"] for r in rows], [r["flops_share"] for r in rows], "--", color=f"C{i}", alpha=0.6)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_title(f"{ph['model']} ({ph['n_visual']} visual tokens)", fontsize=10)
        ax.set_xlabel("visual tokens kept (FastV: from layer 2; PDrop: mean per layer)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("TTFT / full TTFT (dashed: FLOPs share)")
    if phases:
        axes[0][0].legend(fontsize=7)
    env = data["meta"]["env"]
    fig.suptitle(f"fastv TTFT, batch 1, {env.get('gpu') or 'CPU (smoke)'}, torch {env['torch']}, "
                 f"transformers {env['transformers']}", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_phase(ph: dict[str, Any], t0: float) -> None:
    print(f"[{time.perf_counter() - t0:6.1f}s] {ph['model']} batch {ph['batch']} {ph['attn']}: {ph['status']}")
    print(phase_table(ph), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--budget-s", type=float, default=270.0, help="stop starting new measurements after this")
    ap.add_argument("--repeats", type=int, default=5, help="measured rounds per phase (median reported)")
    ap.add_argument("--new-tokens", type=int, default=8, help="tokens generated per call (decode = the rest)")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--models", nargs="+", default=None, help="subset of: " + ", ".join(s.key for s in FULL_MODELS))
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU: checks the code path in seconds")
    ap.add_argument("--extra-attn", default=None, help="a second attention implementation timed on LLaVA-1.5-7B "
                    "(default: flash_attention_2 where flash_attn imports)")  # fmt: skip
    ap.add_argument("--render", type=Path, default=None, help="only rewrite gpu.md/gpu.png from this gpu.json")
    args = ap.parse_args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
        data["meta"].setdefault("total_s", data["meta"].get("elapsed_s", 0.0))
        args.out = args.render.parent
    else:
        data = run(args)
    out = Path(args.out)
    (out / "gpu.md").write_text(markdown(data))
    try:
        plot(data, out / "gpu.png")
    except Exception:  # noqa: BLE001 - the JSON and tables matter more than the picture
        traceback.print_exc()
    print(official_table(data))
    print(f"wrote {out / 'gpu.json'}, gpu.md, gpu.png in {data['meta']['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
